"""Single-process samples/s of LmdbDataset + preprocessing at 32x128, against a reference-style loader.

The reference-style loader is the usual STR recipe (as in the public strhub code): PIL decode, ``convert('RGB')``,
torchvision ``Resize(BICUBIC)`` -> ``ToTensor`` -> ``Normalize(0.5, 0.5)``, one LMDB transaction per sample.

    python benchmarks/loader_speed.py data/bench/ic15_train        # after tools/create_lmdb.py on ic15_train
"""

from __future__ import annotations

import argparse
import io
import time

import torch
from PIL import Image
from torchvision import transforms as T

from strhub.data.augment import build_augmentation
from strhub.data.charsets import STANDARD_CHARSETS
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_dataset import LmdbDataset, shared_readonly_env
from strhub.data.module import ImageTransform
from strhub.data.preprocess import Preprocess


class ReferenceStyleDataset:
    """The common STR loader recipe, for comparison only."""

    def __init__(self, root: str, img_size=(32, 128)) -> None:
        self.env = shared_readonly_env(root)  # py-lmdb allows one open per path and process
        with self.env.begin() as txn:
            self.n = int(txn.get(b'num-samples'))
        self.transform = T.Compose(
            [T.Resize(img_size, T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(0.5, 0.5)]
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        with self.env.begin() as txn:
            label = txn.get(f'label-{i + 1:09d}'.encode()).decode()
            img = Image.open(io.BytesIO(txn.get(f'image-{i + 1:09d}'.encode()))).convert('RGB')
        return self.transform(img), label


def rate(dataset, passes: int) -> float:
    for i in range(min(200, len(dataset))):  # warm the page cache and lazy initialisation
        dataset[i]
    start = time.perf_counter()
    for _ in range(passes):
        for i in range(len(dataset)):
            dataset[i]
    return passes * len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('lmdb')
    parser.add_argument('--passes', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds; the best of each is reported')
    args = parser.parse_args()
    torch.set_num_threads(1)
    preprocess = Preprocess((32, 128))
    label_filter = LabelFilter(STANDARD_CHARSETS['94_full'])
    ours = LmdbDataset(args.lmdb, label_filter, transform=ImageTransform(preprocess), cache_dir=None)
    augmented = LmdbDataset(
        args.lmdb,
        label_filter,
        cache_dir=None,
        transform=ImageTransform(preprocess, build_augmentation({'enabled': True})),
    )
    reference = ReferenceStyleDataset(args.lmdb)
    results: dict[str, list[float]] = {'reference-style': [], 'strhub': [], 'strhub + augmentation': []}
    for _ in range(args.rounds):
        results['reference-style'].append(rate(reference, args.passes))
        results['strhub'].append(rate(ours, args.passes))
        results['strhub + augmentation'].append(rate(augmented, 1))
    best = {k: max(v) for k, v in results.items()}
    for name, value in best.items():
        print(
            f'{name:>24}: {value:8.0f} samples/s (1 process, 1 thread; rounds: '
            f'{", ".join(f"{v:.0f}" for v in results[name])})'
        )
    print(f'{"strhub / reference":>24}: {best["strhub"] / best["reference-style"]:.2f}x')


if __name__ == '__main__':
    main()
