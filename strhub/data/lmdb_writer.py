"""Writing STR-format LMDB datasets atomically.

The format is the de-facto standard of the STR literature: ``num-samples`` holds the count, and samples
are 1-based: ``image-%09d`` (encoded image bytes), ``label-%09d`` (UTF-8) and, optionally,
``boxes-%09d`` (JSON list of per-character ``[x0, y0, x1, y1]`` boxes in pixels of the stored image).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import lmdb

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 40  # sparse on Linux: only the written pages use disk


def image_key(index: int) -> bytes:
    return f'image-{index:09d}'.encode()


def label_key(index: int) -> bytes:
    return f'label-{index:09d}'.encode()


def boxes_key(index: int) -> bytes:
    return f'boxes-{index:09d}'.encode()


NUM_SAMPLES_KEY = b'num-samples'


class LmdbWriter:
    """Appends samples to a new LMDB that only appears at ``path`` when :meth:`close` succeeds.

    Samples go to a temporary directory beside ``path``; closing renames it into place, so an interrupted
    run never leaves a half-written dataset where a loader would find it. Use as a context manager::

        with LmdbWriter('data/train/mine') as writer:
            writer.add(png_bytes, 'hello')
    """

    def __init__(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        commit_every: int = 1000,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f'{self.path} already exists; pass overwrite=True (--overwrite) to replace it')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.', suffix='.tmp', dir=self.path.parent))
        self._env = lmdb.open(str(self._tmp), map_size=map_size, subdir=True, lock=False)
        self._txn = self._env.begin(write=True)
        self._commit_every = commit_every
        self._overwrite = overwrite
        self.count = 0

    def add(self, image: bytes, label: str, boxes: Sequence[Sequence[float]] | None = None) -> int:
        """Appends one sample and returns its 1-based index."""
        if boxes is not None and len(boxes) != len(label):
            raise ValueError(
                f'{len(boxes)} boxes for label {label!r} of {len(label)} characters: need one box per character'
            )
        self.count += 1
        self._txn.put(image_key(self.count), image)
        self._txn.put(label_key(self.count), label.encode('utf-8'))
        if boxes is not None:
            self._txn.put(boxes_key(self.count), json.dumps([[round(float(v), 2) for v in b] for b in boxes]).encode())
        if self.count % self._commit_every == 0:
            self._txn.put(NUM_SAMPLES_KEY, str(self.count).encode())
            self._txn.commit()
            self._txn = self._env.begin(write=True)
        return self.count

    def close(self) -> Path:
        """Commits and moves the dataset into place. Returns the final path."""
        self._txn.put(NUM_SAMPLES_KEY, str(self.count).encode())
        self._txn.commit()
        self._env.sync()
        self._env.close()
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)
        log.info('wrote %d samples to %s', self.count, self.path)
        return self.path

    def abort(self) -> None:
        """Drops everything written so far."""
        self._txn.abort()
        self._env.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
