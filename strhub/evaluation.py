"""Evaluating a trained system on test sets: the logic behind ``./test.py``.

Systems with several prediction heads (MGP-STR: character, BPE, WordPiece, fused) expose
``predict_heads(images) -> {head: (strings, probabilities)}`` and name the entry that ``predict`` returns in
``final_head``; :func:`run_evaluation` then also reports every head's figures.
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from strhub.data.lmdb_dataset import CORRUPT_IMAGE, FAULT_REASONS, LmdbDataset, find_lmdb_dirs
from strhub.data.lmdb_writer import label_key
from strhub.metrics import COMBINED, RecognitionMetrics, RecognitionResult, TextNormalizer
from strhub.models.base import BaseSystem
from strhub.tables import render_table

log = logging.getLogger(__name__)

# Keys listed per test set for the samples left out of its figures.
MAX_LISTED_SKIPS = 3


@dataclass
class Prediction:
    """One scored sample. ``root`` and ``index`` locate it in its LMDB (``image-%09d`` % index), when it has one."""

    dataset: str
    key: str
    label: str
    prediction: str
    confidence: float
    correct: bool = False
    root: str = ''
    index: int = 0


def locate_sample(dataset: Dataset, position: int) -> tuple[LmdbDataset | None, int]:
    """The LmdbDataset holding sample ``position`` of a (concatenation of) dataset(s) and the sample's 1-based LMDB
    index; ``(None, position)`` for other datasets."""
    while isinstance(dataset, ConcatDataset):
        part = bisect.bisect_right(dataset.cumulative_sizes, position)
        position -= dataset.cumulative_sizes[part - 1] if part else 0
        dataset = dataset.datasets[part]
    if isinstance(dataset, LmdbDataset):
        return dataset, dataset.indices[position]
    return None, position


def _prediction(name: str, dataset: Dataset, position: int, label: str, pred: str, conf: float, correct: bool):
    lmdb_dataset, index = locate_sample(dataset, position)
    key = f'{lmdb_dataset.root.name}:{label_key(index).decode()}' if lmdb_dataset is not None else str(position)
    root = str(lmdb_dataset.root) if lmdb_dataset is not None else ''
    return Prediction(name, key, label, pred, conf, correct, root, index)


def discover_test_sets(dirs: list[str | Path]) -> dict[str, Path]:
    """Every LMDB under the given directories, named by its directory name (``<parent>/<name>`` on clashes)."""
    sets: dict[str, Path] = {}
    for root in dirs:
        for path in find_lmdb_dirs(root):
            name = path.name if path.name not in sets else f'{path.parent.name}/{path.name}'
            sets[name] = path
    return sets


@dataclass
class SkippedSamples:
    """The samples of one test set that could not be scored (not in its figures): count per reason, a few keys."""

    counts: dict[str, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    def add(self, reason: str, count: int, keys: list[str]) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.keys.extend(keys[: max(0, MAX_LISTED_SKIPS - len(self.keys))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Evaluation:
    """What :func:`run_evaluation` measured.

    Attributes:
        results: dataset name (and ``Combined``) -> figures of the system's predictions.
        errors: the wrong predictions (when collected).
        heads: for systems with several prediction heads, head name -> dataset name -> figures; else empty.
        skipped: dataset name -> the samples left out of its figures because their stored data is broken (only
            datasets that had any).
        samples: every scored sample, right or wrong (when collected, e.g. for a report).
    """

    results: dict[str, RecognitionResult]
    errors: list[Prediction]
    heads: dict[str, dict[str, RecognitionResult]] = field(default_factory=dict)
    skipped: dict[str, SkippedSamples] = field(default_factory=dict)
    samples: list[Prediction] = field(default_factory=list)


def lmdb_parts(dataset: Dataset) -> list[LmdbDataset]:
    """The LmdbDatasets a (possibly nested) concatenation is made of."""
    if isinstance(dataset, ConcatDataset):
        return [part for child in dataset.datasets for part in lmdb_parts(child)]
    return [dataset] if isinstance(dataset, LmdbDataset) else []


def _startup_faults(dataset: Dataset) -> SkippedSamples:
    """Samples the LMDB reader dropped at start-up because the stored data is broken (not label filtering)."""
    found = SkippedSamples()
    for part in lmdb_parts(dataset):
        for reason, info in part.skipped.items():
            if reason in FAULT_REASONS:
                found.add(reason, info['count'], [f'{part.root.name}:{k}' for k in info['keys']])
    return found


def format_skipped(skipped: Mapping[str, SkippedSamples]) -> str:
    """One line per test set with samples left out of its figures because their data is broken; '' when none."""
    lines = [
        f'{name}: {entry.total} not scored ('
        + ', '.join(f'{count} {reason}' for reason, count in entry.counts.items())
        + f'; e.g. {", ".join(entry.keys)})'
        for name, entry in skipped.items()
        if entry.total
    ]
    if not lines:
        return ''
    return 'Samples left out of the figures above (their stored data is broken):\n' + '\n'.join(lines)


@torch.inference_mode()
def run_evaluation(
    system: BaseSystem,
    loaders: Mapping[str, DataLoader],
    normalizer: TextNormalizer,
    collect_errors: bool = False,
    progress: bool = True,
    collect_samples: bool = False,
) -> Evaluation:
    """Runs ``system`` on each loader: per-dataset metrics (plus ``Combined``), the wrong predictions, every
    prediction with ``collect_samples``, and the figures of every prediction head of multi-head systems (one forward
    pass serves them all)."""
    datasets = list(loaders)
    metrics = RecognitionMetrics(datasets, normalizer).to(system.device)
    head_metrics: dict[str, RecognitionMetrics] = {}
    errors: list[Prediction] = []
    samples: list[Prediction] = []
    skipped: dict[str, SkippedSamples] = {}
    for name, loader in loaders.items():
        seen = 0
        skipped[name] = _startup_faults(loader.dataset)
        for batch in tqdm(loader, desc=name, disable=not progress, leave=False):
            images, labels, *_ = batch
            bad = getattr(batch, 'skipped', [])
            if bad:
                skipped[name].add(CORRUPT_IMAGE, len(bad), [key for _, key in bad])
            bad_positions = {i for i, _ in bad}
            # Positions in the dataset of the scored samples (an error's key must name the right sample).
            positions = [seen + i for i in range(len(labels) + len(bad)) if i not in bad_positions]
            seen += len(labels) + len(bad)
            if images is None:
                continue
            images = images.to(system.device, non_blocking=True)
            if system.final_head is None:
                preds, probs = system.predict(images)
            else:
                per_head = system.predict_heads(images)
                preds, probs = per_head[system.final_head]
                for head, (head_preds, head_probs) in per_head.items():
                    if head not in head_metrics:
                        head_metrics[head] = RecognitionMetrics(datasets, normalizer).to(system.device)
                    head_metrics[head].update(name, head_preds, labels, [float(p.prod()) for p in head_probs])
            confidences = [float(p.prod()) for p in probs]
            metrics.update(name, preds, labels, confidences)
            if collect_errors or collect_samples:
                for position, pred, label, conf in zip(positions, preds, labels, confidences):
                    correct = normalizer(pred) == normalizer(label)
                    record = _prediction(name, loader.dataset, position, label, pred, conf, correct)
                    if collect_samples:
                        samples.append(record)
                    if collect_errors and not correct:
                        errors.append(record)
    heads = {head: m.compute() for head, m in head_metrics.items()}
    return Evaluation(metrics.compute(), errors, heads, {k: v for k, v in skipped.items() if v.total}, samples)


def check_scored(results: Mapping[str, RecognitionResult], loaders: Mapping[str, DataLoader]) -> None:
    """Raises when no sample was scored (figures of 0 samples are NaN, never a result), saying why: every sample of
    every set was left out by the label filter (another charset, labels too long) or its data is broken."""
    if results[COMBINED]['num_samples'] > 0:
        return
    reasons: dict[str, int] = {}
    for loader in loaders.values():
        for part in lmdb_parts(loader.dataset):
            for reason, info in part.skipped.items():
                reasons[reason] = reasons.get(reason, 0) + info['count']
    why = ', '.join(f'{count} {reason}' for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise ValueError(
        f'no sample of {", ".join(loaders)} could be scored ({why or "the sets are empty"}). Labels are compared on '
        "the model's charset and --cased / --punctuation: check that the test labels use the model's characters and "
        'fit its max_label_length'
    )


def evaluate(
    system: BaseSystem,
    loaders: Mapping[str, DataLoader],
    normalizer: TextNormalizer,
    collect_errors: bool = False,
    progress: bool = True,
) -> tuple[dict[str, RecognitionResult], list[Prediction]]:
    """Runs ``system`` on each loader; returns per-dataset metrics (plus ``Combined``) and the wrong predictions
    (:func:`run_evaluation` also gives the figures of each head of multi-head systems)."""
    evaluation = run_evaluation(system, loaders, normalizer, collect_errors, progress)
    return evaluation.results, evaluation.errors


def format_head_table(heads: Mapping[str, Mapping[str, RecognitionResult]], fmt: str = 'markdown') -> str:
    """Word accuracy (%) of every prediction head (columns) per dataset (rows, ``Combined`` last)."""
    names = list(heads)
    datasets = [d for d in next(iter(heads.values())) if d != COMBINED] + [COMBINED]
    header = ['Dataset'] + [f'{name} accuracy' for name in names]
    body = [[d] + [f'{heads[name][d]["accuracy"]:.2f}' for name in names] for d in datasets]
    return render_table(header, body, fmt)


def write_errors(errors: list[Prediction], path: str | Path) -> None:
    """TSV of every wrong prediction: dataset, key, label, prediction, confidence."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(['dataset', 'key', 'label', 'prediction', 'confidence'])
        for e in errors:
            writer.writerow([e.dataset, e.key, e.label, e.prediction, f'{e.confidence:.4f}'])


def write_results(results: Mapping[str, RecognitionResult], path: str | Path, **meta) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({'results': results, **meta}, indent=2), encoding='utf-8')
