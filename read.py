#!/usr/bin/env python3
"""Read the text in word images.

./read.py pretrained=parseq --images demo/*.png
./read.py outputs/parseq/<run>/checkpoints/last.ckpt --images a.jpg b.png refine_iters:int=2
"""

import argparse
import logging
import sys

from strhub.cli_args import checkpoint_spec, parse_runtime_args, resolve_device, split_runtime_args
from strhub.models.loading import load
from strhub.reading import read_images


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='checkpoint path/URL, or pretrained=<name>')
    parser.add_argument('--images', nargs='+', required=True, help='image files')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--device', default='auto')
    argv, runtime = split_runtime_args(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    options = parse_runtime_args(runtime)
    system = load(checkpoint_spec(args.checkpoint), device=resolve_device(args.device), **options)
    for path, text, confidence in read_images(system, args.images, args.batch_size):
        print(f'{path}: {text} ({confidence:.4f})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
