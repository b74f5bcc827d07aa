#!/usr/bin/env python3
"""Read the text in word images.

./read.py pretrained=parseq --images demo/*.png
./read.py outputs/parseq/<run>/checkpoints/last.ckpt --images a.jpg b.png refine_iters:int=2
./read.py pretrained=parseq --images demo/*.png --device cpu --options int8
./read.py got-ocr2.ckpt --images page.png --crops 6 --format      (GOT-OCR2 prompts: --box, --color, --format, --crops)
./read.py mgp-str.ckpt --images demo/*.png --attention attention/   # MGP-STR: A3 attention maps as PNGs
"""

import argparse
import logging
import sys

from PIL import Image

from strhub.cli_args import checkpoint_spec, parse_runtime_args, resolve_device, split_runtime_args
from strhub.inference import with_options
from strhub.models.loading import load
from strhub.reading import read_images, save_attention_maps


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='checkpoint path/URL, or pretrained=<name>')
    parser.add_argument('--images', nargs='+', required=True, help='image files')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--device', default='auto')
    parser.add_argument(
        '--options', default='none', help='inference options: none, int8, compile, bf16, fp16, or +-joined'
    )
    got = parser.add_argument_group('GOT-OCR2 prompts (one image at a time)')
    got.add_argument('--box', type=float, nargs=4, metavar=('X1', 'Y1', 'X2', 'Y2'), help='read only this pixel box')
    got.add_argument('--color', choices=['red', 'green', 'blue'], help='read only the text boxed in this colour')
    got.add_argument('--format', action='store_true', help='formatted output (markdown / LaTeX)')
    got.add_argument('--crops', type=int, default=1, help='tile into at most N crops plus a thumbnail')
    parser.add_argument(
        '--attention', metavar='OUT_DIR', help='save the attention maps of each head over each image as PNGs (MGP-STR)'
    )
    argv, runtime = split_runtime_args(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    options = parse_runtime_args(runtime)
    system = load(checkpoint_spec(args.checkpoint), device=resolve_device(args.device), **options)
    system = with_options(system, args.options, copy_system=False)
    if args.box or args.color or args.format or args.crops > 1:
        from strhub.models.gotocr2.reading import read_image

        for path in args.images:
            with Image.open(path) as img:
                text, confidence = read_image(system, img, args.box, args.color, args.format, args.crops)
            print(f'{path}: {text} ({confidence:.4f})')
        return 0
    for path, text, confidence in read_images(system, args.images, args.batch_size):
        print(f'{path}: {text} ({confidence:.4f})')
    if args.attention:
        saved = save_attention_maps(system, args.images, args.attention, args.batch_size)
        print(f'{len(saved)} attention map(s) saved under {args.attention}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
