"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
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


def read_layout(path: Path) -> dict[str, tuple[int, ...]]:
    """A ``key<TAB>shape`` file of ../shared/reference/keys as {key: shape}."""
    rows = (line.split('\t') for line in path.read_text().splitlines() if line and not line.startswith('#'))
    return {key: tuple(int(d) for d in shape.strip('[]').split(',') if d.strip()) for key, shape in rows}


def load_golden(shared_dir: Path, name: str) -> dict:
    """A golden reference file with its weights cast back to fp32 (they are stored as exactly representable fp16)."""
    import torch

    golden = torch.load(shared_dir / 'reference' / 'golden' / f'{name}.pt', weights_only=True)
    golden['state_dict'] = {k: v.float() if v.is_floating_point() else v for k, v in golden['state_dict'].items()}
    return golden


class LossRecorder(pl.Callback):
    """Records the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs['loss'] if isinstance(outputs, dict) else outputs))


def short_training_overrides(data_root: Path, steps: int) -> list[str]:
    """Overrides for ``steps`` training steps on one repeated batch of ``data_root`` (``trainer.overfit_batches=1``),
    without validation, workers, augmentation or progress bar."""
    return [
        'dataset=generated',
        f'data.root_dir={data_root}',
        'data.num_workers=0',
        'data.augment.enabled=false',
        f'trainer.max_steps={steps}',
        'trainer.max_epochs=-1',
        '+trainer.overfit_batches=1',
        'trainer.num_sanity_val_steps=0',
        'trainer.limit_val_batches=0',
        '+trainer.enable_progress_bar=false',
    ]


def training_losses(overrides: list[str], data_root: Path, run_dir: Path, steps: int = 30) -> list[float]:
    """Trains ``steps`` steps on one repeated batch of ``data_root`` through the same :func:`strhub.training.train` as
    ``./train.py`` and returns the per-step losses."""
    from strhub.config import compose_config
    from strhub.training import train

    cfg = compose_config(list(overrides) + short_training_overrides(data_root, steps))
    recorder = LossRecorder()
    train(cfg, run_dir, callbacks=[recorder])
    return recorder.losses
