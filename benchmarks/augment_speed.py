"""Measures augmentation throughput (images/s, one process) for each op and for the default policy.

Crops are real word images from ../shared/data/real/svt_train resized to 32x128 when present, else
synthetic text crops of that size. Run: python benchmarks/augment_speed.py [--images 500 --magnitude 5]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from PIL import Image, ImageDraw

from strhub.data.augment import AUGMENT_OPS, AugmentConfig, AugmentOp, build_augmentation

SHARED_CROPS = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real' / 'svt_train' / 'images'


def load_crops(count: int, size: tuple[int, int]) -> list[Image.Image]:
    paths = sorted(SHARED_CROPS.glob('*.jpg'))[:count] if SHARED_CROPS.is_dir() else []
    crops = [Image.open(p).convert('RGB').resize(size) for p in paths]
    while len(crops) < count:
        crop = Image.new('RGB', size, (200, 190, 170))
        ImageDraw.Draw(crop).text((8, 8), f'WORD{len(crops)}', fill=(30, 30, 60))
        crops.append(crop)
    return crops


def images_per_second(augment, crops: list[Image.Image], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for crop in crops:
            augment(crop)
    return repeats * len(crops) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--images', type=int, default=200, help='distinct crops (default 200)')
    parser.add_argument('--repeats', type=int, default=3, help='passes over the crops (default 3)')
    parser.add_argument('--magnitude', type=float, default=5.0, help='op magnitude, 0..10 (default 5)')
    parser.add_argument('--height', type=int, default=32)
    parser.add_argument('--width', type=int, default=128)
    args = parser.parse_args()
    random.seed(0)
    crops = load_crops(args.images, (args.width, args.height))
    print(f'{len(crops)} RGB crops of {args.width}x{args.height}, magnitude {args.magnitude}, single process')
    for name in sorted(AUGMENT_OPS):
        rate = images_per_second(AugmentOp(name, args.magnitude), crops, args.repeats)
        print(f'{name:<16} {rate:10.0f} images/s')
    policy = build_augmentation(AugmentConfig(magnitude=args.magnitude))
    print(f'{"default policy":<16} {images_per_second(policy, crops, args.repeats):10.0f} images/s')


if __name__ == '__main__':
    main()
