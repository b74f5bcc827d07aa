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
import socket
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
# The files of an LMDB directory: what --overwrite may replace. Anything else in a directory means it is not ours.
LMDB_FILES = frozenset({'data.mdb', 'lock.mdb'})
# Inside a writer's temporary directory: "<host> <pid>" of the process writing it, to tell a live writer from a
# crashed one.
OWNER_FILE = 'writer.owner'


def _owner_alive(tmp_dir: Path) -> bool:
    try:
        host, pid = (tmp_dir / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False  # no owner: left by a crashed writer (or by an older version that wrote none)
    if host != socket.gethostname():
        return True  # another machine's writer on shared storage: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Deletes the temporary directories of writers of ``path`` that died before finishing (``kill -9``, power
    loss), logging each; a live writer's directory and anything holding files that are not ours are left alone."""
    removed = []
    for tmp in sorted(path.parent.glob(f'.{path.name}.*.tmp')):
        if not tmp.is_dir() or _owner_alive(tmp):
            continue
        if {p.name for p in tmp.iterdir()} - LMDB_FILES - {OWNER_FILE}:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning('removed %s: an unfinished dataset left by an interrupted writer', tmp)
        removed.append(tmp)
    return removed


def check_replaceable(path: Path) -> None:
    """Raises unless ``path`` is absent, an empty directory, or an LMDB directory (only ``data.mdb`` / ``lock.mdb``):
    ``--overwrite`` replaces datasets, never a folder of someone's files."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f'{path} exists and is a file, not an LMDB directory; refusing to replace it')
    foreign = sorted(p.name for p in path.iterdir() if p.name not in LMDB_FILES)
    if foreign:
        listed = ', '.join(foreign[:5]) + (', ...' if len(foreign) > 5 else '')
        raise FileExistsError(
            f'{path} is not an LMDB dataset (it holds {listed}); --overwrite only replaces an LMDB (data.mdb, '
            'lock.mdb): choose another output directory'
        )


class LmdbWriter:
    """Appends samples to a new LMDB that only appears at ``path`` when :meth:`close` succeeds.

    Samples go to a hidden temporary directory beside ``path`` (``.<name>.<random>.tmp``, which dataset discovery
    ignores) and ``num-samples`` is written only by :meth:`close`, which then renames the directory into place: an
    interrupted run never leaves a dataset that looks finished. The next writer of ``path`` removes what a crashed
    one left. ``overwrite`` replaces only an existing LMDB directory, never other files. Use as a context manager::

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
        check_replaceable(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        self._tmp = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.', suffix='.tmp', dir=self.path.parent))
        (self._tmp / OWNER_FILE).write_text(f'{socket.gethostname()} {os.getpid()}')
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
            self._txn.commit()
            self._txn = self._env.begin(write=True)
        return self.count

    def close(self) -> Path:
        """Commits and moves the dataset into place. Returns the final path."""
        self._txn.put(NUM_SAMPLES_KEY, str(self.count).encode())
        self._txn.commit()
        self._env.sync()
        self._env.close()
        (self._tmp / OWNER_FILE).unlink()
        if self.path.exists():
            check_replaceable(self.path)  # again: files may have appeared while writing
            old = self.path.with_name(f'.{self.path.name}.replaced.tmp')
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self._tmp, self.path)
            for name in LMDB_FILES:
                (old / name).unlink(missing_ok=True)
            old.rmdir()
        else:
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
