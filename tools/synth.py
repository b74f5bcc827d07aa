"""Render a synthetic word-image dataset (LMDB with labels and per-character boxes).

python tools/synth.py --out data/synth/train --num 20000 --charset 36_lowercase --workers 2 --seed 0
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from strhub.data.charsets import resolve_charset
from strhub.data.synth import RenderConfig, generate_lmdb


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='directory of the LMDB to create')
    parser.add_argument('--num', type=int, required=True, help='number of samples')
    parser.add_argument(
        '--charset',
        default='94_full',
        help='36_lowercase, 62_mixed-case, 94_full, a charset file or the characters themselves',
    )
    parser.add_argument('--words', help='word-list file, one word per line (default: frequent English words)')
    parser.add_argument('--random-ratio', type=float, default=0.2, help='fraction of random strings among samples')
    parser.add_argument(
        '--fonts', nargs='+', help='font files or directories to use instead of the installed font packages'
    )
    parser.add_argument('--height', type=int, default=32, help='image height in pixels')
    parser.add_argument('--workers', type=int, default=1, help='rendering processes')
    parser.add_argument('--seed', type=int, default=0, help='sample i depends only on (seed, i)')
    parser.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    generate_lmdb(
        args.out,
        args.num,
        resolve_charset(args.charset),
        words=args.words,
        fonts=args.fonts,
        cfg=RenderConfig(height=args.height),
        random_ratio=args.random_ratio,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
    )


if __name__ == '__main__':
    main()
