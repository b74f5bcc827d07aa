"""Combines test.py results files and bench.py JSON files of several models into one leaderboard.

    ./test.py parseq.ckpt --benchmark_all_eval --results runs/parseq.json
    ./bench.py model=parseq +json=runs/parseq-bench.json
    python tools/leaderboard.py runs/*.json --csv board.csv --plot board.png

Files are joined by model name (the "model" entry both scripts write). Prints the table as markdown: model, params,
GFLOPs, latency at batch 1 and throughput at batch 64 with the device, accuracy per set and Combined, 1 - NED; the
plot shows Combined accuracy against latency and against parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strhub.leaderboard import csv_text, markdown, missing_figures, plot, read_entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('files', nargs='+', help='test.py --results and bench.py +json= files')
    parser.add_argument('--md', help='also write the markdown table to this file')
    parser.add_argument('--csv', help='write the table as CSV to this file')
    parser.add_argument('--plot', help='write the accuracy-against-cost PNG to this file')
    args = parser.parse_args(argv)
    try:
        entries = read_entries(args.files)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    table = markdown(entries)
    print(table)
    for line in missing_figures(entries):
        print(f'note: {line}', file=sys.stderr)
    if args.md:
        Path(args.md).write_text(table + '\n', encoding='utf-8')
    if args.csv:
        Path(args.csv).write_text(csv_text(entries), encoding='utf-8')
    if args.plot:
        print(f'plot: {plot(entries, args.plot)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
