"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared() -> Path | None:
    env = os.environ.get('STRHUB_SHARED')
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / 'shared')
    return next((c for c in candidates if (c / 'data').is_dir()), None)


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """The project's shared reference data (../shared); tests that need it skip when it is absent."""
    found = _find_shared()
    if found is None:
        pytest.skip(
            '../shared (real crops and reference outputs) is not present next to this checkout; '
            'set STRHUB_SHARED=/path/to/shared to run this test'
        )
    return found


def make_word_lmdb(
    path: Path, num: int, seed: int = 0, alphabet: str = 'abcdef', size: tuple[int, int] = (100, 32)
) -> Path:
    """A small LMDB of black-on-white words drawn with PIL's built-in font (fast, no font packages needed)."""
    import io
    import random

    from PIL import Image, ImageDraw, ImageFont

    from strhub.data.lmdb_writer import LmdbWriter

    rng = random.Random(seed)
    font = ImageFont.load_default(size=20)
    with LmdbWriter(path, overwrite=True) as writer:
        for _ in range(num):
            text = ''.join(rng.choice(alphabet) for _ in range(rng.randint(2, 5)))
            img = Image.new('RGB', size, 'white')
            ImageDraw.Draw(img).text((rng.randint(2, 10), rng.randint(2, 6)), text, fill='black', font=font)
            buf = io.BytesIO()
            img.save(buf, format='PNG')
            writer.add(buf.getvalue(), text)
    return path


# Overrides that make PARSeq small enough to train a few steps on a CPU in seconds.
TINY_PARSEQ = [
    '+experiment=parseq-tiny',
    'charset=36_lowercase',
    'model.max_label_length=8',
    'model.batch_size=16',
    'model.arch.embed_dim=32',
    'model.arch.enc_depth=1',
    'model.arch.enc_num_heads=2',
    'model.arch.dec_num_heads=2',
    'model.arch.enc_mlp_ratio=2',
    'model.arch.dec_mlp_ratio=2',
    'model.perm_num=2',
    'data.num_workers=0',
    'data.augment.enabled=false',
    'trainer.num_sanity_val_steps=0',
    'trainer.log_every_n_steps=1',
]


@pytest.fixture(scope='session')
def word_data(tmp_path_factory) -> Path:
    """A data root with train/generated, val/generated and test/IIIT5k LMDBs (parseq layout)."""
    root = tmp_path_factory.mktemp('data')
    make_word_lmdb(root / 'train' / 'generated' / 'part0', 64, seed=0)
    make_word_lmdb(root / 'val' / 'generated', 16, seed=1)
    make_word_lmdb(root / 'test' / 'IIIT5k', 16, seed=2)
    return root
