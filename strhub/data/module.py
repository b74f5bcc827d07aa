"""The LightningDataModule shared by every model: LMDB sources, label filtering, preprocessing, augmentation."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from strhub.data.augment import build_augmentation
from strhub.data.boxes import without_geometric_ops
from strhub.data.charsets import resolve_charset
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_dataset import DEFAULT_CACHE_DIR, BadSample, LmdbDataset, open_lmdb_datasets
from strhub.data.preprocess import Preprocess, convert_mode
from strhub.data.sampling import RatioSampler
from strhub.data.sharding import evaluation_sampler
from strhub.data.synth.stream import SyntheticStream, build_stream

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 1_000_003


SOURCE_KINDS = ('lmdb', 'synthetic')


@dataclass
class Source:
    """A training source mixed at ``weight``: LMDB data (the first of ``paths``, relative to the data root, that
    exists) or, with ``kind: synthetic``, images rendered on the fly in the DataLoader workers from ``options``
    (see :func:`~strhub.data.synth.stream.build_stream`)."""

    name: str
    paths: Sequence[str] = ()
    weight: float = 1.0
    kind: str = 'lmdb'
    options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f'training source {self.name!r}: unknown kind {self.kind!r}; valid: {list(SOURCE_KINDS)}')
        if self.kind == 'lmdb' and not self.paths:
            raise ValueError(f'training source {self.name!r}: an LMDB source needs paths: [<dir>, ...]')


def resolve_dir(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first existing ``root / candidate``; the error lists every place that was tried."""
    for candidate in candidates:
        path = Path(candidate) if os.path.isabs(candidate) else root / candidate
        if path.exists():
            return path
    tried = ', '.join(str(root / c) for c in candidates)
    raise FileNotFoundError(
        f'{what}: none of [{tried}] exists. See data/README.md for the supported layouts, or '
        'set data.root_dir / the dataset paths'
    )


class ImageTransform:
    """Augmentation (training only) followed by the model's preprocessing; picklable for workers."""

    def __init__(self, preprocess: Preprocess, augment: Callable[[Image.Image], Image.Image] | None = None) -> None:
        self.preprocess = preprocess
        self.augment = augment

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.augment is not None:
            img = self.augment(convert_mode(img, 'RGB'))
        return self.preprocess(img)


def collate_images_labels(batch: Sequence[tuple]) -> tuple:
    """Stacks images; keeps labels (and boxes, when present) as lists."""
    columns = list(zip(*batch))
    return (torch.stack(columns[0]), list(columns[1]), *[list(c) for c in columns[2:]])


class EvaluationBatch(NamedTuple):
    """A test batch: the decodable samples, and ``skipped``: ``(position in the batch, key)`` of each sample whose
    image did not decode (left out, to be counted, never replaced by another sample)."""

    images: torch.Tensor | None
    labels: list[str]
    skipped: list[tuple[int, str]]


def collate_evaluation(batch: Sequence[tuple | BadSample]) -> EvaluationBatch:
    """:func:`collate_images_labels` for test sets read with ``substitute_bad=False``."""
    good = [sample for sample in batch if not isinstance(sample, BadSample)]
    skipped = [(i, sample.key) for i, sample in enumerate(batch) if isinstance(sample, BadSample)]
    if not good:
        return EvaluationBatch(None, [], skipped)
    return EvaluationBatch(torch.stack([s[0] for s in good]), [s[1] for s in good], skipped)


def resolve_num_workers(value: int | str) -> int:
    """``data.num_workers``: a number, or ``auto``: the CPU cores this process may use, less one for the training
    process, shared between the visible GPUs, at most 8 (on a 2-core machine: 1)."""
    if isinstance(value, int) and value >= 0:
        return value
    if value != 'auto':
        raise ValueError(f"data.num_workers must be a number >= 0 or 'auto', got {value!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return max(1, min(8, cores // max(1, torch.cuda.device_count()) - 1))


class SceneTextDataModule(pl.LightningDataModule):
    """Training, validation and test data from STR LMDBs.

    Args:
        root_dir: the data root; the source paths below are relative to it.
        train: training sources (``Source`` fields as mappings); several sources are mixed by weight.
        val: candidate validation directories (first existing one is used; every LMDB below it is used).
        benchmarks: test set name -> candidate directory names (both data layouts' names) searched under
            each of ``test_roots``.
        test_roots: candidate directories (relative to ``root_dir``) that hold the benchmark sets.
        charset_train / charset_test: charset specs (see :func:`resolve_charset`); training labels are filtered
            with the train charset, validation / test labels with the test charset.
        preprocess: a :class:`Preprocess` (a system's ``preprocessing``) or its fields (img_size, resize ...).
        num_workers: DataLoader processes, or ``auto`` (see :func:`resolve_num_workers`).
        augment: augmentation config for training (see :mod:`strhub.data.augment`), or a bool: true for the default
            augmentation; None, false or disabled = off.
        samples_per_epoch: draws per training epoch when mixing sources (default: their total size).
        return_boxes: training batches get a third column: per sample, one ``[x0, y0, x1, y1]`` box per label
            character in pixels of the model input (after the resize), or None where the data has no (usable)
            boxes. The augmentation ops that move pixels are then left out (see :func:`without_geometric_ops`).
        val_synthetic: validate on a fixed synthetic split instead of ``val``: ``{size: N, seed: S, ...}`` plus
            any synthetic source option (default seed: ``seed + 1000003``, so it never overlaps training streams
            of the default seed).
    """

    def __init__(
        self,
        root_dir: str,
        train: Sequence[Mapping[str, Any]] = (),
        val: Sequence[str] = (),
        benchmarks: Mapping[str, Sequence[str]] | None = None,
        test_roots: Sequence[str] = ('test',),
        charset_train: str = '94_full',
        charset_test: str = '36_lowercase',
        max_label_length: int = 25,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
        augment: Mapping[str, Any] | bool | None = None,
        batch_size: int = 256,
        num_workers: int | str = 2,
        remove_whitespace: bool = True,
        normalize_unicode: bool = True,
        unknown_chars: str = 'remove',
        min_image_size: int = 0,
        samples_per_epoch: int | None = None,
        return_boxes: bool = False,
        val_synthetic: Mapping[str, Any] | None = None,
        seed: int = 0,
        cache_dir: str | None = str(DEFAULT_CACHE_DIR),
    ) -> None:
        super().__init__()
        self.root_dir = Path(root_dir)
        self.train_sources = [Source(**dict(s)) for s in train]
        self.val_dirs = list(val)
        self.benchmarks = {k: list(v) for k, v in (benchmarks or {}).items()}
        self.test_roots = list(test_roots)
        self.charset_train = resolve_charset(charset_train)
        self.charset_test = resolve_charset(charset_test)
        self.max_label_length = max_label_length
        self.preprocess = preprocess if isinstance(preprocess, Preprocess) else Preprocess(**dict(preprocess or {}))
        # data.augment=true / false (the reference implementation's form) switches the default augmentation.
        if isinstance(augment, bool):
            augment = {'enabled': augment}
        self.augment_cfg = dict(augment) if augment else None
        self.batch_size = batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.filter_kwargs = dict(
            max_length=max_label_length,
            remove_whitespace=remove_whitespace,
            normalize_unicode=normalize_unicode,
            unknown_chars=unknown_chars,
        )
        self.min_image_size = min_image_size
        self.samples_per_epoch = samples_per_epoch
        self.return_boxes = return_boxes
        self.val_synthetic = dict(val_synthetic) if val_synthetic else None
        self.seed = seed
        self.cache_dir = cache_dir
        self._train: Dataset | None = None
        self._train_sizes: list[int] = []
        self._val: Dataset | None = None

    @staticmethod
    def get_transform(
        img_size: Sequence[int], augment: bool = False, rotation: float = 0.0, **preprocess: Any
    ) -> ImageTransform:
        """PIL image -> (C, H, W) model input, as the reference implementation's
        ``SceneTextDataModule.get_transform(img_size, augment, rotation)``: ``img_size`` is (height, width); other
        :class:`Preprocess` fields (resize, normalization ...) default to the strhub zoo's preset."""
        augmentation = build_augmentation({'enabled': True}) if augment else None
        return ImageTransform(Preprocess(img_size=img_size, rotation=rotation, **preprocess), augmentation)

    # -- datasets -----------------------------------------------------------------------------------------------

    def _open(
        self,
        roots: Sequence[Path],
        charset: str,
        transform: Callable,
        return_boxes: bool = False,
        substitute_bad: bool = True,
    ) -> list[LmdbDataset]:
        return open_lmdb_datasets(
            roots,
            label_filter=LabelFilter(charset, **self.filter_kwargs),
            transform=transform,
            min_image_size=self.min_image_size,
            return_boxes=return_boxes,
            cache_dir=self.cache_dir,
            box_transform=self.preprocess.map_boxes if return_boxes else None,
            substitute_bad=substitute_bad,
        )

    @property
    def train_dataset(self) -> Dataset:
        if self._train is None:
            if not self.train_sources:
                raise ValueError('no training sources configured: set dataset=<name> or data.train')
            augment_cfg = without_geometric_ops(self.augment_cfg) if self.return_boxes else self.augment_cfg
            transform = ImageTransform(self.preprocess, build_augmentation(augment_cfg))
            parts = []
            for source in self.train_sources:
                if source.kind == 'synthetic':
                    parts.append(self._stream(source.options, transform, self.return_boxes))
                    log.info(
                        'training source %s: synthetic images rendered on the fly (seed %d, weight %.3g)',
                        source.name,
                        parts[-1].generator.seed,
                        source.weight,
                    )
                    continue
                path = resolve_dir(self.root_dir, source.paths, f'training source {source.name!r}')
                datasets = self._open([path], self.charset_train, transform, self.return_boxes)
                parts.append(ConcatDataset(datasets))
                log.info(
                    'training source %s: %d samples from %d LMDB(s) under %s (weight %.3g)',
                    source.name,
                    len(parts[-1]),
                    len(datasets),
                    path,
                    source.weight,
                )
            self._train_sizes = [len(p) for p in parts]
            self._train = ConcatDataset(parts)
        return self._train

    def _stream(
        self, options: Mapping[str, Any] | None, transform: Callable, return_boxes: bool = False
    ) -> SyntheticStream:
        options = {'seed': self.seed, **dict(options or {})}
        box_transform = self.preprocess.map_boxes if return_boxes else None
        return build_stream(options, self.charset_train, self.max_label_length, transform, return_boxes, box_transform)

    @property
    def val_dataset(self) -> Dataset:
        if self._val is None:
            if self.val_synthetic:
                # A fixed synthetic validation split: the first `size` samples of a stream with its own seed.
                options = dict(self.val_synthetic)
                size = int(options.pop('size', 2000))
                options.setdefault('seed', self.seed + VAL_SEED_OFFSET)
                stream = self._stream(options, ImageTransform(self.preprocess))
                self._val = Subset(stream, range(size))
                log.info('validation: %d synthetic samples (seed %d)', size, stream.generator.seed)
            else:
                path = resolve_dir(self.root_dir, self.val_dirs, 'validation data')
                self._val = ConcatDataset(self._open([path], self.charset_test, ImageTransform(self.preprocess)))
        return self._val

    def find_benchmarks(self, names: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
        """Locates the named benchmark sets under the test roots. Returns ``(found name -> path, missing names)``."""
        found, missing = {}, []
        roots = [self.root_dir / r for r in self.test_roots if (self.root_dir / r).is_dir()]
        for name in names:
            if name not in self.benchmarks:
                raise KeyError(f'unknown benchmark {name!r}; configured: {sorted(self.benchmarks)}')
            paths = [root / alias for root in roots for alias in self.benchmarks[name] if (root / alias).is_dir()]
            if paths:
                found[name] = paths[0]
            else:
                missing.append(name)
        return found, missing

    def test_preprocess(self, rotation: float = 0.0) -> Preprocess:
        """The preprocessing of the test sets: the model's, rotated by ``rotation`` degrees (robustness tests)."""
        return dataclasses.replace(self.preprocess, rotation=rotation) if rotation else self.preprocess

    def test_dataloaders(self, sets: Mapping[str, Path], rotation: float = 0.0) -> dict[str, DataLoader]:
        """One DataLoader per test set (name -> directory holding one or more LMDBs), yielding
        :class:`EvaluationBatch` es: an undecodable image is skipped and reported, never replaced by another sample."""
        transform = ImageTransform(self.test_preprocess(rotation))
        return {
            name: self._loader(
                ConcatDataset(self._open([path], self.charset_test, transform, substitute_bad=False)),
                collate_fn=collate_evaluation,
            )
            for name, path in sets.items()
        }

    # -- loaders ------------------------------------------------------------------------------------------------

    def _loader(
        self, dataset: Dataset, shuffle: bool = False, sampler=None, collate_fn: Callable = collate_images_labels
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_fn,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches in an order fixed by ``(seed, epoch)`` (:class:`RatioSampler`, also for one source), so
        that a run resumed from a mid-epoch checkpoint sees the batches the interrupted run would have seen next."""
        dataset = self.train_dataset
        streams = [s.kind == 'synthetic' for s in self.train_sources]
        sampler = RatioSampler(
            self._train_sizes,
            [s.weight for s in self.train_sources],
            num_samples=self.samples_per_epoch,
            seed=self.seed,
            streams=streams,
        )
        self._continue_interrupted_epoch(sampler)
        return self._loader(dataset, sampler=sampler)

    def _continue_interrupted_epoch(self, sampler: RatioSampler) -> None:
        """When Lightning resumes a checkpoint written in the middle of an epoch (the loops are restored before the
        dataloaders are requested), the epoch's first ``completed`` batches were trained on already: start the
        epoch's order after them instead of replaying it from its first batch. One process only: under DDP each rank
        reads a shard of the order, and the epoch restarts from its beginning (Lightning warns)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size > 1:
            return
        # Processed, not completed: a checkpoint written in on_train_batch_end counts its last batch as processed
        # only (Lightning completes it when the loop restarts, after this call).
        completed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        batches = -(-len(sampler) // self.batch_size)
        sampler.set_epoch(trainer.current_epoch)
        if 0 < completed < batches:
            sampler.skip = completed * self.batch_size
            log.info('resuming epoch %d after its first %d batches', trainer.current_epoch, completed)

    def val_dataloader(self) -> DataLoader:
        # Under DDP each rank reads its own shard, unpadded, so the synchronised metrics count every sample once.
        return self._loader(self.val_dataset, sampler=evaluation_sampler(self.val_dataset))
