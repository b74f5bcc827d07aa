"""Evaluating a trained system on test sets: the logic behind ``./test.py``."""

from __future__ import annotations

import bisect
import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from strhub.data.lmdb_dataset import LmdbDataset, find_lmdb_dirs
from strhub.data.lmdb_writer import label_key
from strhub.metrics import RecognitionMetrics, RecognitionResult, TextNormalizer
from strhub.models.base import BaseSystem

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    dataset: str
    key: str
    label: str
    prediction: str
    confidence: float


def sample_key(dataset: Dataset, position: int) -> str:
    """The LMDB key (``<lmdb dir>:label-%09d``) of sample ``position`` of a (concatenation of) LmdbDataset(s)."""
    while isinstance(dataset, ConcatDataset):
        part = bisect.bisect_right(dataset.cumulative_sizes, position)
        position -= dataset.cumulative_sizes[part - 1] if part else 0
        dataset = dataset.datasets[part]
    if isinstance(dataset, LmdbDataset):
        return f'{dataset.root.name}:{label_key(dataset.indices[position]).decode()}'
    return str(position)


def discover_test_sets(dirs: list[str | Path]) -> dict[str, Path]:
    """Every LMDB under the given directories, named by its directory name (``<parent>/<name>`` on clashes)."""
    sets: dict[str, Path] = {}
    for root in dirs:
        for path in find_lmdb_dirs(root):
            name = path.name if path.name not in sets else f'{path.parent.name}/{path.name}'
            sets[name] = path
    return sets


@torch.inference_mode()
def evaluate(
    system: BaseSystem,
    loaders: Mapping[str, DataLoader],
    normalizer: TextNormalizer,
    collect_errors: bool = False,
    progress: bool = True,
) -> tuple[dict[str, RecognitionResult], list[Prediction]]:
    """Runs ``system`` on each loader; returns per-dataset metrics (plus ``Combined``) and the wrong predictions."""
    metrics = RecognitionMetrics(list(loaders), normalizer).to(system.device)
    errors: list[Prediction] = []
    for name, loader in loaders.items():
        seen = 0
        for images, labels, *_ in tqdm(loader, desc=name, disable=not progress, leave=False):
            preds, probs = system.predict(images.to(system.device, non_blocking=True))
            confidences = [float(p.prod()) for p in probs]
            metrics.update(name, preds, labels, confidences)
            if collect_errors:
                for i, (pred, label, conf) in enumerate(zip(preds, labels, confidences)):
                    if normalizer(pred) != normalizer(label):
                        errors.append(Prediction(name, sample_key(loader.dataset, seen + i), label, pred, conf))
            seen += len(labels)
    return metrics.compute(), errors


def write_errors(errors: list[Prediction], path: str | Path) -> None:
    """TSV of every wrong prediction: dataset, key, label, prediction, confidence."""
    with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(['dataset', 'key', 'label', 'prediction', 'confidence'])
        for e in errors:
            writer.writerow([e.dataset, e.key, e.label, e.prediction, f'{e.confidence:.4f}'])


def write_results(results: Mapping[str, RecognitionResult], path: str | Path, **meta) -> None:
    Path(path).write_text(json.dumps({'results': results, **meta}, indent=2), encoding='utf-8')
