"""Render a synthetic word-image dataset (LMDB with labels and per-character boxes), or a contact sheet of it.

python tools/synth.py --out data/synth/train --num 20000 --charset 36_lowercase --workers 2 --seed 0
python tools/synth.py --sheet scene.png --num 64 --preset scene          # look before you train
python tools/synth.py --sheet blur.png --preset scene --set motion_blur_prob=1 defocus_prob=0.5

--preset picks the renderer settings (default, plain, scene: closest to photographed text) and --set changes
single RenderConfig fields (see strhub/data/synth/config.py for all of them and their meaning).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
from collections.abc import Sequence

from strhub.data.charsets import resolve_charset
from strhub.data.inspect import save_contact_sheet
from strhub.data.synth import RenderConfig, SyntheticWordGenerator, generate_lmdb


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--out', help='directory of the LMDB to create')
    target.add_argument('--sheet', help='write a contact-sheet PNG of --num samples here instead of an LMDB')
    parser.add_argument('--num', type=int, default=64, help='number of samples (default 64, for --sheet)')
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
    parser.add_argument('--preset', default='default', help='renderer settings: default, plain or scene')
    parser.add_argument(
        '--set', nargs='+', default=[], metavar='FIELD=VALUE', help='RenderConfig fields, e.g. blur_prob=0.5'
    )
    parser.add_argument('--workers', type=int, default=1, help='rendering processes')
    parser.add_argument('--seed', type=int, default=0, help='sample i depends only on (seed, i)')
    parser.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    return parser.parse_args(argv)


def render_config(preset: str, height: int, settings: Sequence[str]) -> RenderConfig:
    """The preset with ``FIELD=VALUE`` settings applied (values are Python literals, or plain strings)."""
    fields = {f.name for f in dataclasses.fields(RenderConfig)}
    overrides = {'height': height}
    for setting in settings:
        name, sep, value = setting.partition('=')
        if not sep or name not in fields:
            raise SystemExit(f'--set {setting!r}: expected FIELD=VALUE with FIELD among {sorted(fields)}')
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    return RenderConfig.preset(preset, **overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    cfg = render_config(args.preset, args.height, args.set)
    charset = resolve_charset(args.charset)
    if args.sheet:
        generator = SyntheticWordGenerator(
            charset, words=args.words, fonts=args.fonts, cfg=cfg, random_ratio=args.random_ratio, seed=args.seed
        )
        cells = []
        for i in range(args.num):
            image, label, _ = generator.sample(i)
            cells.append((image, f'{i}: {label}'))
        print(f'contact sheet: {save_contact_sheet(cells, args.sheet)}')
        return
    generate_lmdb(
        args.out,
        args.num,
        charset,
        words=args.words,
        fonts=args.fonts,
        cfg=cfg,
        random_ratio=args.random_ratio,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
    )


if __name__ == '__main__':
    main()
