"""Builds an STR LMDB dataset from a folder of word crops and their annotations.

Examples::

    python tools/create_lmdb.py tsv --images data/raw/svt/images --labels data/raw/svt/labels.tsv --out data/val/svt
    python tools/create_lmdb.py mjsynth --images mnt/ramdisk/max/90kDICT32px \\
        --labels mnt/ramdisk/max/90kDICT32px/annotation_train.txt --out data/train/synth/MJ/train
    python tools/create_lmdb.py mjsynth --images some/mjsynth/subset --glob '*/*/*.jpg' --out data/train/mj_subset
    python tools/create_lmdb.py icdar --images ic15/word_crops --labels ic15/gt.txt --out data/val/IC15
"""

from __future__ import annotations

import argparse
import logging
import sys

from strhub.data.create import (
    create_lmdb,
    glob_mjsynth_annotations,
    read_icdar_annotations,
    read_mjsynth_annotations,
    read_tsv_annotations,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest='format', required=True, metavar='FORMAT')

    def add_format(name: str, help_text: str, labels_help: str, labels_required: bool = True):
        sub = formats.add_parser(name, help=help_text)
        sub.add_argument('--images', required=True, help='folder that image paths in the annotations are relative to')
        sub.add_argument('--labels', required=labels_required, help=labels_help)
        sub.add_argument('--out', required=True, help='LMDB directory to create, e.g. data/val/mine')
        sub.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
        sub.add_argument('--examples', type=int, default=5, help='offenders listed per skip reason (default 5)')
        return sub

    add_format('tsv', 'filename<TAB>label lines', 'the labels.tsv file')
    mjsynth = add_format(
        'mjsynth',
        'MJSynth: label in the file name (77_heretical_35885.jpg)',
        'annotation list with "<path> <index>" lines (e.g. annotation_train.txt); or use --glob',
        labels_required=False,
    )
    mjsynth.add_argument('--glob', help="instead of --labels: pattern of image paths under --images, e.g. '*/*/*.jpg'")
    add_format('icdar', 'ICDAR ground truth: word_1.png, "label" lines', 'the gt.txt file')
    args = parser.parse_args(argv)
    if args.format == 'mjsynth' and (args.labels is None) == (args.glob is None):
        parser.error('mjsynth needs exactly one of --labels (an annotation list) or --glob (a file pattern)')
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    args = parse_args(argv)
    if args.format == 'tsv':
        annotations = read_tsv_annotations(args.labels, args.images)
    elif args.format == 'icdar':
        annotations = read_icdar_annotations(args.labels, args.images)
    elif args.glob is not None:
        annotations = glob_mjsynth_annotations(args.images, args.glob)
    else:
        annotations = read_mjsynth_annotations(args.labels, args.images)
    try:
        summary = create_lmdb(
            annotations,
            args.out,
            overwrite=args.overwrite,
            max_examples=args.examples,
            progress=True,
            images_dir=args.images,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == '__main__':
    sys.exit(main())
