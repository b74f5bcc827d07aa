"""Accuracy against training time: every checkpoint a run kept (``checkpoint.keep_every_minutes``) scored on the
run's synthetic validation split and on test sets, with the wall-clock minutes of training it took to get there.
The logic behind ``tools/curve.py``."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from strhub.checkpointing import LAST_NAME
from strhub.data.module import SceneTextDataModule
from strhub.evaluation import COMBINED, discover_test_sets, run_evaluation
from strhub.metrics import TextNormalizer
from strhub.models.base import BaseSystem
from strhub.models.loading import load, read_checkpoint
from strhub.tables import render_table

log = logging.getLogger(__name__)

SYNTHETIC_VAL = 'synthetic val'
_KEPT = re.compile(r'minute-\d+(\.\d+)?\.ckpt$')


def kept_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a run on its time axis: ``minute-<MMMM.mm>.ckpt`` in order, then ``last.ckpt``."""
    folder = Path(run_dir) / 'checkpoints'
    if not folder.is_dir():
        raise FileNotFoundError(f'{run_dir} has no checkpoints/ folder; pass the directory of a training run')
    kept = sorted((p for p in folder.glob('minute-*.ckpt') if _KEPT.search(p.name)), key=lambda p: p.name)
    last = folder / LAST_NAME
    found = kept + ([last] if last.is_file() else [])
    if not found:
        raise FileNotFoundError(
            f'{folder} holds no minute-*.ckpt or last.ckpt; train with checkpoint.keep_every_minutes=10 to keep '
            'checkpoints along the way'
        )
    return found


def elapsed_minutes(checkpoint: Mapping[str, Any], path: Path) -> float:
    if 'train_elapsed_s' not in checkpoint:
        raise ValueError(
            f'{path} does not record its training time (train_elapsed_s): it was written by a version of strhub '
            'older than the curve tool; train again to draw a curve'
        )
    return float(checkpoint['train_elapsed_s']) / 60.0


def synthetic_validation(run_dir: Path, system: BaseSystem, batch_size: int, workers: int):
    """The run's fixed synthetic validation loader (from its saved Hydra config), or None when it had none."""
    config = run_dir / '.hydra' / 'config.yaml'
    if not config.is_file():
        log.warning('%s not found: no synthetic validation points', config)
        return None
    data = OmegaConf.to_container(OmegaConf.load(config).data, resolve=True)
    if not data.get('val_synthetic'):
        return None
    module = _data_module(
        run_dir, system, system.charset_test, batch_size, workers, val_synthetic=data['val_synthetic'],
        seed=data.get('seed', 0),
    )  # fmt: skip
    return module.val_dataloader()


def _data_module(run_dir: Path, system: BaseSystem, charset_test: str, batch_size: int, workers: int, **extra):
    return SceneTextDataModule(
        root_dir=run_dir,
        charset_train=system.charset_train,
        charset_test=charset_test,
        max_label_length=system.max_label_length,
        preprocess=system.preprocessing,
        batch_size=batch_size,
        num_workers=workers,
        **extra,
    )


def measure(
    run_dir: str | Path,
    test_dirs: Sequence[str | Path] = (),
    device: str = 'cpu',
    batch_size: int = 128,
    workers: int = 1,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """One row per kept checkpoint: ``checkpoint``, ``minutes``, ``step``, then word accuracy (%) on the synthetic
    validation split and on each test set (case-insensitive alphanumeric, as test.py scores by default).

    With ``raw``, runs trained with weight averaging (``model.ema``) get a second row per checkpoint, ``weights:
    raw``, scored with the raw weights it keeps to resume from instead of the average it ships."""
    run_dir = Path(run_dir)
    sets = discover_test_sets(list(test_dirs)) if test_dirs else {}
    rows = []
    for path in kept_checkpoints(run_dir):
        checkpoint = read_checkpoint(path)
        minutes = elapsed_minutes(checkpoint, path)
        system = load(path, device=device)
        normalizer = TextNormalizer.from_options(model_charset=system.charset_train)
        loaders = {}
        val = synthetic_validation(run_dir, system, batch_size, workers)
        if val is not None:
            loaders[SYNTHETIC_VAL] = val
        if sets:
            module = _data_module(run_dir, system, normalizer.charset, batch_size, workers)
            loaders.update(module.test_dataloaders(sets))
        variants = [('shipped', None)]
        if raw and 'current_model_state' in checkpoint:
            variants.append(('raw', checkpoint['current_model_state']))
        for weights, state in variants:
            if state is not None:
                system.load_state_dict(state, strict=False)
            results = run_evaluation(system, loaders, normalizer, progress=False).results if loaders else {}
            row = {'checkpoint': path.name, 'minutes': round(minutes, 2), 'step': int(checkpoint.get('global_step', 0))}
            if raw:
                row['weights'] = weights
            for name in loaders:
                row[name] = round(float(results[name]['accuracy']), 2)  # already in %
            if len(sets) > 1:
                row[COMBINED] = round(float(results[COMBINED]['accuracy']), 2)
            rows.append(row)
            log.info('%s', row)
        del system
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def curve_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return render_table(columns, [[row.get(c, '') for c in columns] for row in rows])


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(c for row in rows for c in row)))
        writer.writeheader()
        writer.writerows(rows)


def plot_curve(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = '') -> None:
    """Accuracy (%) of each set against minutes of training, one line per set, as a PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    series = [c for c in rows[0] if c not in ('checkpoint', 'minutes', 'step', 'weights')]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for weights in dict.fromkeys(row.get('weights', 'shipped') for row in rows):
        picked = [row for row in rows if row.get('weights', 'shipped') == weights]
        minutes = [row['minutes'] for row in picked]
        for name in series:
            style = '--' if name == SYNTHETIC_VAL else ('-' if weights == 'shipped' else ':')
            label = name if weights == 'shipped' else f'{name} ({weights} weights)'
            ax.plot(minutes, [row.get(name) for row in picked], style, marker='o', markersize=3, label=label)
    ax.set_xlabel('training time (wall-clock minutes)')
    ax.set_ylabel('word accuracy (%)')
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right')
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
