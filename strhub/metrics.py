"""Word recognition metrics: accuracy, 1 - NED, confidence and label length, per dataset and combined.

The states are sums with ``dist_reduce_fx='sum'``, so under DDP every rank accumulates its own shard and
``compute()`` returns the figures over all ranks' samples, exactly as if one process had seen them all.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
from rapidfuzz.distance import Levenshtein
from torch import Tensor, nn
from torchmetrics import Metric

from strhub.data.charsets import STANDARD_CHARSETS
from strhub.tables import render_table

COMBINED = 'Combined'

# Products of softmax probabilities can exceed 1 by a few float32 ulps; anything further out is a wrong input
# (percentages or log-probabilities), which would silently corrupt the mean confidence.
_CONFIDENCE_TOLERANCE = 1e-4


class RecognitionResult(TypedDict):
    """The figures for one dataset (or the combination of several).

    Percentages are in [0, 100]; lengths count characters after comparison normalisation.
    """

    num_samples: int
    accuracy: float
    one_minus_ned: float
    confidence: float
    label_length: float
    gt_label_length: float


@dataclass(frozen=True)
class TextNormalizer:
    """Maps a prediction or a ground-truth label to the form in which the two are compared.

    Steps: Unicode NFKC; lowercasing when the charset has no uppercase letters; characters outside the charset
    are replaced by their base letter when the charset has it (``é -> e``, as the training label filter does,
    so a model trained on folded labels is not penalised) and removed otherwise.

    Attributes:
        charset: the characters kept for comparison.
    """

    charset: str
    lowercase: bool = field(init=False)
    _allowed: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.charset:
            raise ValueError(
                'TextNormalizer needs a non-empty comparison charset; use TextNormalizer.from_options() for the '
                'standard case-insensitive alphanumeric comparison'
            )
        object.__setattr__(self, 'lowercase', not any(c.isupper() for c in self.charset))
        object.__setattr__(self, '_allowed', frozenset(self.charset))

    @classmethod
    def from_options(
        cls,
        cased: bool = False,
        punctuation: bool = False,
        charset_test: str | None = None,
        model_charset: str | None = None,
    ) -> TextNormalizer:
        """Builds the normaliser for a comparison mode.

        Args:
            cased: compare letter case (default: case-insensitive).
            punctuation: keep the 32 ASCII punctuation characters (default: removed).
            charset_test: explicit comparison charset; when given, it overrides ``cased`` and ``punctuation``.
            model_charset: the characters the model reads (its training charset). Those of them that the mode keeps
                join the standard Latin comparison charset, so that a model of another script (Greek, Cyrillic,
                CJK) is scored on its own characters: case-folded unless ``cased``, punctuation and symbols (Unicode
                categories P and S) removed unless ``punctuation``.
        """
        if charset_test is not None:
            return cls(charset_test)
        charset = STANDARD_CHARSETS['62_mixed-case' if cased else '36_lowercase']
        if punctuation:
            charset += string.punctuation
        for char in model_charset or '':
            if char.isspace() or (not punctuation and unicodedata.category(char)[0] in 'PS'):
                continue
            charset += char if cased else char.lower()
        return cls(''.join(dict.fromkeys(charset)))

    def _fold(self, char: str) -> str:
        base = ''.join(c for c in unicodedata.normalize('NFKD', char) if not unicodedata.combining(c))
        return base if base and self._allowed.issuperset(base) else ''

    def __call__(self, text: str) -> str:
        """Returns ``text`` normalised for comparison."""
        text = unicodedata.normalize('NFKC', text)
        if self.lowercase:
            text = text.lower()
        if self._allowed.issuperset(text):
            return text
        return ''.join(c if c in self._allowed else self._fold(c) for c in text)


def one_minus_ned(pred: str, gt: str) -> float:
    """1 - normalised edit distance (ICDAR 2019): ``1 - lev(pred, gt) / max(len(pred), len(gt))``; 1.0 if both empty."""
    return Levenshtein.normalized_similarity(pred, gt)


class WordRecognitionMetric(Metric):
    """Word accuracy, 1 - NED, mean confidence and mean label lengths over one dataset.

    Args:
        normalizer: how predictions and labels are normalised before comparison
            (default: case-insensitive alphanumeric).
        **kwargs: passed to :class:`torchmetrics.Metric` (``process_group``, ``dist_sync_fn``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    num_samples: Tensor
    correct: Tensor
    one_minus_ned_sum: Tensor
    confidence_sum: Tensor
    pred_length_sum: Tensor
    gt_length_sum: Tensor

    def __init__(self, normalizer: TextNormalizer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalizer = normalizer or TextNormalizer.from_options()
        # Counts stay integral so that summing over ranks and datasets is exact; float64 keeps the sums of
        # fractions accurate over millions of samples.
        for name in ('num_samples', 'correct', 'pred_length_sum', 'gt_length_sum'):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx='sum')
        for name in ('one_minus_ned_sum', 'confidence_sum'):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx='sum')

    def update(self, preds: Sequence[str], gts: Sequence[str], confidences: Sequence[float] | Tensor) -> None:
        """Adds a batch.

        Args:
            preds: predicted strings, N of them.
            gts: ground-truth labels, N of them.
            confidences: (N,) per-sample confidence in [0, 1] (the product of the per-token probabilities).
        """
        confidences = _check_batch(preds, gts, confidences)
        correct = pred_length = gt_length = 0
        ned_sum = 0.0
        for pred, gt in zip(preds, gts, strict=True):
            pred, gt = self.normalizer(pred), self.normalizer(gt)
            correct += pred == gt
            ned_sum += one_minus_ned(pred, gt)
            pred_length += len(pred)
            gt_length += len(gt)
        self.num_samples += len(preds)
        self.correct += correct
        self.one_minus_ned_sum += ned_sum
        self.confidence_sum += confidences.to(self.confidence_sum.device).sum()
        self.pred_length_sum += pred_length
        self.gt_length_sum += gt_length

    def compute(self) -> RecognitionResult:
        """The figures over all samples seen (on all ranks); means are NaN when there were none."""
        n = int(self.num_samples)
        return {
            'num_samples': n,
            'accuracy': _mean(100 * int(self.correct), n),
            'one_minus_ned': _mean(100 * float(self.one_minus_ned_sum), n),
            'confidence': _mean(100 * float(self.confidence_sum), n),
            'label_length': _mean(int(self.pred_length_sum), n),
            'gt_label_length': _mean(int(self.gt_length_sum), n),
        }


def _mean(total: float, n: int) -> float:
    return total / n if n else math.nan


def _check_batch(preds: Sequence[str], gts: Sequence[str], confidences: Sequence[float] | Tensor) -> Tensor:
    """Validates one update's inputs; returns the confidences as a float64 (N,) tensor."""
    for name, texts in (('preds', preds), ('gts', gts)):
        if isinstance(texts, str):
            raise TypeError(f'{name} must be a list of strings, one per sample, not a single string ({texts!r})')
    if isinstance(confidences, Tensor):
        confidences = confidences.detach().to(torch.float64)
    else:
        confidences = torch.as_tensor(confidences, dtype=torch.float64)
    if confidences.dim() != 1:
        raise ValueError(
            f'confidences must be 1-D (one value per sample), got shape {tuple(confidences.shape)}; '
            'reduce per-token probabilities to one value per sample first (their product)'
        )
    if not len(preds) == len(gts) == len(confidences):
        raise ValueError(
            f'preds, gts and confidences must have one entry per sample; got {len(preds)}, {len(gts)} '
            f'and {len(confidences)}'
        )
    if len(confidences) and not bool(((confidences >= 0) & (confidences <= 1 + _CONFIDENCE_TOLERANCE)).all()):
        raise ValueError(
            f'confidences must be probabilities in [0, 1], got values in [{confidences.min().item():.4g}, '
            f'{confidences.max().item():.4g}]; pass the product of per-token probabilities, not log-probabilities '
            'or percentages'
        )
    return confidences


def combine_results(results: Mapping[str, Mapping[str, float]]) -> RecognitionResult:
    """Combines per-dataset figures, weighting each by its sample count.

    The result equals computing the metrics over the union of all samples. A ``Combined`` entry in ``results``
    is ignored.
    """
    rows = [row for name, row in results.items() if name != COMBINED and row['num_samples'] > 0]
    total = sum(int(row['num_samples']) for row in rows)

    def weighted(key: str) -> float:
        return _mean(sum(row[key] * row['num_samples'] for row in rows), total)

    return {
        'num_samples': total,
        'accuracy': weighted('accuracy'),
        'one_minus_ned': weighted('one_minus_ned'),
        'confidence': weighted('confidence'),
        'label_length': weighted('label_length'),
        'gt_label_length': weighted('gt_label_length'),
    }


class RecognitionMetrics(nn.Module):
    """One :class:`WordRecognitionMetric` per dataset, plus the combined figures.

    The dataset names are fixed at construction: under DDP every rank must hold the same metric states for the
    synchronisation at ``compute()``, even a rank that saw no sample of some dataset.

    Args:
        datasets: dataset names, in the order results are reported.
        normalizer: comparison normalisation shared by all datasets (default: case-insensitive alphanumeric).
        **kwargs: passed to each :class:`torchmetrics.Metric`.
    """

    def __init__(self, datasets: Sequence[str], normalizer: TextNormalizer | None = None, **kwargs: Any) -> None:
        super().__init__()
        if isinstance(datasets, str):
            raise TypeError(f'datasets must be a list of names, not a single string ({datasets!r})')
        names = list(datasets)
        if not names:
            raise ValueError('RecognitionMetrics needs at least one dataset name')
        if len(set(names)) != len(names) or COMBINED in names:
            raise ValueError(f'dataset names must be unique and not {COMBINED!r}; got {names}')
        self.normalizer = normalizer or TextNormalizer.from_options()
        self.datasets = names
        self._index = {name: i for i, name in enumerate(names)}
        # A ModuleList rather than a ModuleDict: dataset names may contain '.', which module names may not.
        self.metrics = nn.ModuleList(WordRecognitionMetric(self.normalizer, **kwargs) for _ in names)

    def __getitem__(self, dataset: str) -> WordRecognitionMetric:
        """The metric of one dataset."""
        if dataset not in self._index:
            raise KeyError(
                f'unknown dataset {dataset!r}; RecognitionMetrics was built for {self.datasets}. '
                'Declare every dataset when constructing it'
            )
        return self.metrics[self._index[dataset]]

    def update(
        self, dataset: str, preds: Sequence[str], gts: Sequence[str], confidences: Sequence[float] | Tensor
    ) -> None:
        """Adds a batch of ``dataset`` (see :meth:`WordRecognitionMetric.update`)."""
        self[dataset].update(preds, gts, confidences)

    def compute(self) -> dict[str, RecognitionResult]:
        """Figures per dataset in declaration order, then the ``Combined`` entry over all their samples."""
        results = {name: metric.compute() for name, metric in zip(self.datasets, self.metrics, strict=True)}
        results[COMBINED] = combine_results(results)
        return results

    def reset(self) -> None:
        """Clears the states of every dataset (call after each evaluation epoch)."""
        for metric in self.metrics:
            metric.reset()


_TABLE_COLUMNS = (
    ('# samples', 'num_samples'),
    ('Accuracy', 'accuracy'),
    ('1 - NED', 'one_minus_ned'),
    ('Confidence', 'confidence'),
    ('Label Length', 'label_length'),
)


def format_table(results: Mapping[str, Mapping[str, float]], fmt: str = 'markdown') -> str:
    """Formats results as a table: one row per dataset in the given order, then a ``Combined`` row.

    Args:
        results: dataset name -> figures (as from :meth:`RecognitionMetrics.compute`); the ``Combined`` row is
            derived from the others when absent.
        fmt: ``markdown`` or ``csv``.
    """
    rows = {name: row for name, row in results.items() if name != COMBINED}
    rows[COMBINED] = results.get(COMBINED) or combine_results(rows)
    header = ['Dataset'] + [title for title, _ in _TABLE_COLUMNS]
    body = [
        [name] + [str(int(row[key])) if key == 'num_samples' else f'{row[key]:.2f}' for _, key in _TABLE_COLUMNS]
        for name, row in rows.items()
    ]
    return render_table(header, body, fmt)
