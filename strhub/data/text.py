"""Text-only data for pre-training a language model (e.g. ABINet's) on a word list, without images: a text file, or
the labels of the training LMDBs (read once, images never decoded).

Batches are ``(None, labels)``: the same ``(images, labels)`` shape as the image pipeline's, with no images, so a
system whose loss needs only the labels trains on them unchanged.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from strhub.data.charsets import resolve_charset
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_dataset import open_lmdb_datasets
from strhub.data.module import Source, resolve_dir
from strhub.data.sharding import evaluation_sampler

log = logging.getLogger(__name__)


def read_word_list(path: str | os.PathLike | None, label_filter: LabelFilter, key: str = 'data.text_file') -> list[str]:
    """The words of a text file (one per line), normalised and filtered like image labels.

    Args:
        path: the file; ``key`` names the config entry it came from, for the error messages.
        label_filter: normalisation and rejection rules (charset, maximum length ...).

    Raises:
        ValueError: no path was given, or no line gives a usable word.
        FileNotFoundError: the file does not exist.
    """
    if not path:
        raise ValueError(f'{key} is not set: pass {key}=<file> (a word list, one word per line)')
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'{key}={path} does not exist (expected a word list, one word per line)')
    lines = path.read_text(encoding='utf-8').splitlines()
    words, rejected = [], 0
    for line in lines:
        word, _ = label_filter(line)
        if word is None:
            rejected += 1
        else:
            words.append(word)
    if not words:
        raise ValueError(
            f'{key}={path} holds no usable word ({len(lines)} line(s): empty, longer than '
            f'{label_filter.max_length} characters or outside the charset)'
        )
    log.info('%s: %d words from %s (%d line(s) rejected)', key, len(words), path, rejected)
    return words


def lmdb_words(
    root_dir: str | os.PathLike, sources: Sequence[Mapping[str, Any]], label_filter: LabelFilter, what: str
) -> list[str]:
    """The (filtered) labels of the LMDB sources of a dataset config, as a word list; their images are not read.

    Raises:
        ValueError: a source is synthetic (it has no stored labels) or there is no source.
    """
    words: list[str] = []
    for source in (Source(**dict(s)) for s in sources):
        if source.kind != 'lmdb':
            raise ValueError(
                f'{what}: source {source.name!r} is rendered on the fly and has no stored labels; set data.text_file'
            )
        path = resolve_dir(Path(root_dir), source.paths, f'{what} source {source.name!r}')
        for dataset in open_lmdb_datasets([path], label_filter=label_filter):
            words.extend(dataset.labels)
    if not words:
        raise ValueError(f'{what}: no labels found; set data.text_file=<word list> or dataset=<name>')
    log.info('%s: %d words from the labels of the LMDBs under %s', what, len(words), root_dir)
    return words


class WordListDataset(Dataset):
    """A list of words; item ``i`` is the word itself."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, index: int) -> str:
        return self.words[index]


def collate_labels(batch: Sequence[str]) -> tuple[None, list[str]]:
    """A batch of words -> ``(None, labels)`` (no images)."""
    return None, list(batch)


class TextDataModule(pl.LightningDataModule):
    """Training and validation words from text files, for language-model pre-training.

    Args:
        text_file: training words, one per line; None: the labels of the training LMDBs (``root_dir`` + ``train``),
            as the reference implementation's language-model experiments use, with ``val`` for validation.
        val_text_file: validation words; None holds out ``val_fraction`` of ``text_file`` (at least one word).
        val_fraction: share of ``text_file`` held out for validation when there is no ``val_text_file``.
        charset_train: the model's charset; words are normalised and filtered with it (the language model reads
            them as one-hot vectors over it, for validation too).
        max_label_length: longer words are dropped.
        remove_whitespace / normalize_unicode / unknown_chars: label normalisation (see :class:`LabelFilter`).
        seed: fixes the held-out split.
    """

    def __init__(
        self,
        text_file: str | None,
        val_text_file: str | None = None,
        val_fraction: float = 0.01,
        charset_train: str = '94_full',
        max_label_length: int = 25,
        batch_size: int = 256,
        num_workers: int = 2,
        remove_whitespace: bool = True,
        normalize_unicode: bool = True,
        unknown_chars: str = 'remove',
        seed: int = 0,
        root_dir: str | None = None,
        train: Sequence[Mapping[str, Any]] = (),
        val: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f'data.val_fraction must be in [0, 1), got {val_fraction}')
        label_filter = LabelFilter(
            resolve_charset(charset_train),
            max_length=max_label_length,
            unknown_chars=unknown_chars,
            remove_whitespace=remove_whitespace,
            normalize_unicode=normalize_unicode,
        )
        if not text_file and root_dir is not None and train:
            try:
                self.train_words = lmdb_words(root_dir, train, label_filter, 'training words')
                val_dir = resolve_dir(Path(root_dir), list(val), 'validation words')
                val_source = [{'name': 'val', 'paths': [str(val_dir)]}]
                self.val_words = lmdb_words(root_dir, val_source, label_filter, 'validation words')
            except FileNotFoundError as e:
                raise ValueError(
                    f'data.text_file is not set, and the labels of the training LMDBs cannot stand in for it: {e}. '
                    'Pass data.text_file=<word list> (one word per line), or dataset=<name> / data.root_dir=<dir> '
                    'where the LMDBs are'
                ) from None
            self.batch_size = batch_size
            self.num_workers = num_workers
            return
        words = read_word_list(text_file, label_filter)
        if val_text_file:
            self.train_words = words
            self.val_words = read_word_list(val_text_file, label_filter, key='data.val_text_file')
        else:
            order = list(range(len(words)))
            random.Random(seed).shuffle(order)
            num_val = min(max(1, round(val_fraction * len(words))), len(words) - 1) if val_fraction else 0
            held_out = set(order[:num_val])
            self.train_words = [w for i, w in enumerate(words) if i not in held_out]
            self.val_words = [words[i] for i in sorted(held_out)]
        self.batch_size = batch_size
        self.num_workers = num_workers

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TextDataModule:
        """Built from the ``data`` config section; the image pipeline's entries (root_dir, preprocess ...) are
        not used."""
        params = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in cfg.items() if k in params and k != 'self'})

    def _loader(self, words: Sequence[str], shuffle: bool) -> DataLoader:
        dataset = WordListDataset(words)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            # Validation under DDP: an unpadded shard per rank (exact metrics); training is sharded by Lightning.
            sampler=None if shuffle else evaluation_sampler(dataset),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_labels,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_words, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if not self.val_words:
            raise ValueError('no validation words: set data.val_text_file or data.val_fraction > 0')
        return self._loader(self.val_words, shuffle=False)
