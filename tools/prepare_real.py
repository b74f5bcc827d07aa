"""Turn folders of real word crops (``<set>/images/*`` + ``<set>/labels.tsv``) into the LMDBs the real-text recipes use.

python tools/prepare_real.py --src ../shared/data/real --out data/real

For every set (e.g. iiit5k_train, ic15_train, svt_train; the ``_train`` suffix is dropped) it writes

- ``<out>/all/<set>``: every crop, the held-out evaluation of the synthetic-only recipes;
- ``<out>/finetune/<set>`` and ``<out>/heldout/<set>``: a fixed split for fine-tuning, where the crop on line ``i``
  of ``labels.tsv`` (counting from 0) is held out when ``i % 5 == 0``: 20% held out, independent of any seed or
  file-system order.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from strhub.data.create import create_lmdb, read_tsv_annotations

HELDOUT_EVERY = 5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', required=True, help='folder holding one sub-folder per set')
    parser.add_argument('--out', required=True, help='output root (all/, finetune/, heldout/ are created in it)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing LMDBs')
    return parser.parse_args(argv)


def prepare(src: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, dict[str, int]]:
    """Writes the three LMDBs of every set under ``src``; returns set -> {split: samples written}."""
    src, out = Path(src), Path(out)
    sets = sorted(p for p in src.iterdir() if (p / 'labels.tsv').is_file() and (p / 'images').is_dir())
    if not sets:
        raise FileNotFoundError(f'no <set>/labels.tsv + <set>/images folders under {src}')
    written = {}
    for folder in sets:
        name = folder.name.removesuffix('_train')
        annotations = list(read_tsv_annotations(folder / 'labels.tsv', folder / 'images'))
        splits = {
            'all': annotations,
            'finetune': [a for i, a in enumerate(annotations) if i % HELDOUT_EVERY],
            'heldout': [a for i, a in enumerate(annotations) if i % HELDOUT_EVERY == 0],
        }
        written[name] = {
            split: create_lmdb(items, out / split / name, overwrite=overwrite).written
            for split, items in splits.items()
        }
        print(f'{name}: ' + ', '.join(f'{split} {count}' for split, count in written[name].items()))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    prepare(args.src, args.out, args.overwrite)


if __name__ == '__main__':
    main()
