"""Checks STR LMDB datasets: statistics, corrupt entries and an optional contact sheet of samples.

PATH is one LMDB directory (holding data.mdb) or a folder searched for them. The data is opened
read-only. Exits with status 1 when any corrupt entry is found, so it can gate a pipeline.

Examples::

    python tools/check_lmdb.py data/val/IC15 --sheet ic15.png --num 64
    python tools/check_lmdb.py data/train --json train_report.json --header-only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from strhub.data.inspect import draw_contact_sheet, export_samples, inspect_lmdb
from strhub.data.lmdb_dataset import find_lmdb_dirs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('path', type=Path, help='an LMDB directory or a folder of them')
    parser.add_argument(
        '--sheet',
        type=Path,
        help='write a contact sheet PNG here (one per LMDB when several: the LMDB path is added to the file name)',
    )
    parser.add_argument('--num', type=int, default=64, help='samples on the contact sheet (default 64)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the contact-sheet sample choice (default 0)')
    parser.add_argument('--json', type=Path, help='write the full report (all histograms) as JSON here')
    parser.add_argument(
        '--export', type=Path, help='write --num random samples as image files plus labels.tsv into this folder'
    )
    parser.add_argument(
        '--header-only',
        action='store_true',
        help='read only image headers instead of decoding every image (faster, misses truncation)',
    )
    return parser.parse_args(argv)


def _sheet_path(sheet: Path, root: Path, lmdb_dir: Path, several: bool) -> Path:
    if not several:
        return sheet
    tag = lmdb_dir.relative_to(root).as_posix().replace('/', '_')
    return sheet.with_name(f'{sheet.stem}_{tag}{sheet.suffix or ".png"}')


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    args = parse_args(argv)
    try:
        lmdb_dirs = find_lmdb_dirs(args.path)
        if not lmdb_dirs:
            raise FileNotFoundError(f'no LMDB under {args.path}: an LMDB directory is one that holds a data.mdb file')
        reports = [inspect_lmdb(d, full_decode=not args.header_only) for d in lmdb_dirs]
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for report in reports:
        print(report.format())
    if len(reports) > 1:
        total = sum(r.num_samples for r in reports)
        print(f'total: {len(reports)} LMDBs, {total} samples, {sum(r.num_corrupt for r in reports)} corrupt')
    if args.sheet is not None:
        for lmdb_dir, report in zip(lmdb_dirs, reports, strict=True):
            if report.num_samples > 0:
                out = draw_contact_sheet(
                    lmdb_dir,
                    _sheet_path(args.sheet, args.path, lmdb_dir, len(reports) > 1),
                    num=args.num,
                    seed=args.seed,
                )
                print(f'contact sheet: {out}')
    if args.export is not None:
        for lmdb_dir in lmdb_dirs:
            written = export_samples(lmdb_dir, args.export, num=args.num, seed=args.seed)
            print(f'exported {len(written)} samples of {lmdb_dir} to {args.export}')
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in reports], ensure_ascii=False, indent=1), encoding='utf-8')
        print(f'json report: {args.json}')
    return 1 if any(r.num_corrupt for r in reports) else 0


if __name__ == '__main__':
    sys.exit(main())
