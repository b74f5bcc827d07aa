#!/usr/bin/env python3
"""Accuracy against wall-clock training time for one run: scores every checkpoint it kept along the way.

    ./train.py +experiment=crnn-synth-cpu checkpoint.keep_every_minutes=10
    python tools/curve.py outputs/crnn-synth-cpu/<run> --test_dirs data/real/all --plot curve.png --csv curve.csv

Each kept checkpoint (checkpoints/minute-<MMMM.mm>.ckpt, then last.ckpt) is scored on the run's synthetic validation
split (when it had one) and on every LMDB under --test_dirs (word accuracy, case-insensitive alphanumeric). Prints a
table: checkpoint, minutes of training, step, accuracy per set.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strhub.cli_args import run_cli  # noqa: E402
from strhub.curve import curve_table, measure, plot_curve, write_csv  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run_dir', help='a training run directory (outputs/<model>/<run>)')
    parser.add_argument('--test_dirs', nargs='*', default=[], help='score every LMDB under these directories too')
    parser.add_argument('--plot', help='write the curve as a PNG to this file')
    parser.add_argument('--csv', help='write the figures as CSV to this file')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch_size', type=int, default=128)
    parser.add_argument('--num_workers', type=int, default=1)
    parser.add_argument(
        '--raw', action='store_true', help='runs with model.ema: also score the raw weights beside the average'
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    rows = measure(args.run_dir, args.test_dirs, args.device, args.batch_size, args.num_workers, args.raw)
    print(curve_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot:
        plot_curve(rows, args.plot, title=Path(args.run_dir).name)
        print(f'curve: {args.plot}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
