"""Reading STR-format LMDB datasets (see :mod:`strhub.data.lmdb_writer` for the format)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
from PIL import Image
from torch.utils.data import Dataset

from strhub.data.boxes import Box, align_boxes, parse_boxes
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_writer import NUM_SAMPLES_KEY, boxes_key, image_key, label_key

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'strhub' / 'lmdb_index'
MAX_LOGGED_KEYS = 5
# Consecutive undecodable images tolerated before a dataset is declared broken (instead of looping forever).
MAX_CONSECUTIVE_BAD = 100

BoxTransform = Callable[[list[Box], tuple[int, int]], list[Box]]
# Reasons for leaving a sample out that are faults of the stored data (not label filtering): an evaluation reports
# these beside its table.
CORRUPT_IMAGE = 'corrupt image'
FAULT_REASONS = ('missing label', 'label not UTF-8', 'missing image', CORRUPT_IMAGE)


class BadSample(NamedTuple):
    """What an evaluation dataset (``substitute_bad=False``) yields for a sample whose image does not decode."""

    key: str


class LmdbFormatError(ValueError):
    """An LMDB that cannot be read safely (truncated, not an LMDB, no valid ``num-samples``); the message names the
    path and what to do."""


def is_lmdb_dir(path: Path) -> bool:
    return (path / 'data.mdb').is_file()


def is_temporary_name(name: str) -> bool:
    """True for the hidden ``.<name>.<random>.tmp`` directories that :class:`LmdbWriter` writes into before moving a
    finished dataset into place: an interrupted writer can leave one behind, and nothing may read it."""
    return name.startswith('.') and name.endswith('.tmp')


def find_lmdb_dirs(root: str | os.PathLike) -> list[Path]:
    """Every LMDB directory at or below ``root`` (a directory holding ``data.mdb``), sorted; unfinished datasets in
    :func:`is_temporary_dir` directories are left out."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f'dataset path {root} does not exist')
    if is_lmdb_dir(root):
        return [root]
    found = (p.parent for p in root.rglob('data.mdb') if p.is_file())
    return sorted(p for p in found if not any(is_temporary_name(part) for part in p.relative_to(root).parts))


# The meta pages at the start of data.mdb (LMDB's MDB_meta after the 16-byte page header, 64-bit layout): magic and
# version, then the page size (in the free-list DB record), the last page used and the transaction id.
_LMDB_MAGIC = 0xBEEFC0DE
_META_MAGIC_OFFSET, _META_PSIZE_OFFSET, _META_LAST_PAGE_OFFSET = 16, 40, 136


def check_lmdb_file(path: str | os.PathLike) -> None:
    """Checks that ``<path>/data.mdb`` is an LMDB and as long as its own header says, before it is memory-mapped:
    reading past the end of a truncated file kills the process with SIGBUS instead of raising an error.

    Raises:
        LmdbFormatError: empty, not an LMDB, or truncated; the message names the file and the fix.
    """
    data = Path(path) / 'data.mdb'
    size = data.stat().st_size
    remedy = 'copy it again from its source, or recreate it with tools/create_lmdb.py'
    if size == 0:
        raise LmdbFormatError(f'{data} is empty (0 bytes): the dataset was not written or not copied; {remedy}')
    newest: tuple[int, int, int] | None = None  # (txnid, page size, last page)
    with open(data, 'rb') as f:
        head = f.read(_META_LAST_PAGE_OFFSET + 16)
        if (
            len(head) < _META_LAST_PAGE_OFFSET + 16
            or struct.unpack_from('<I', head, _META_MAGIC_OFFSET)[0] != _LMDB_MAGIC
        ):
            raise LmdbFormatError(f'{data} is not an LMDB file (no LMDB header); {remedy}')
        page_size = struct.unpack_from('<I', head, _META_PSIZE_OFFSET)[0]
        for page in (0, 1):
            f.seek(page * page_size)
            meta = f.read(_META_LAST_PAGE_OFFSET + 16)
            if len(meta) == _META_LAST_PAGE_OFFSET + 16 and struct.unpack_from('<I', meta, 16)[0] == _LMDB_MAGIC:
                last_page, txnid = struct.unpack_from('<QQ', meta, _META_LAST_PAGE_OFFSET)
                if newest is None or txnid > newest[0]:
                    newest = (txnid, page_size, last_page)
    if newest is None or page_size < 512 or page_size & (page_size - 1):
        raise LmdbFormatError(f'{data} has a damaged LMDB header; {remedy}')
    _, page_size, last_page = newest
    needed = (last_page + 1) * page_size
    if size < needed:
        raise LmdbFormatError(
            f'{data} is truncated: {size} bytes, but its header says the data ends at byte {needed}; {remedy}'
        )


def open_lmdb_readonly(path: str | os.PathLike) -> lmdb.Environment:
    """Opens an LMDB read-only without a lock file, so read-only media and shared storage work. The file is checked
    first (:func:`check_lmdb_file`), and lmdb's own errors come back as :class:`LmdbFormatError` naming the path."""
    check_lmdb_file(path)
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    except lmdb.Error as e:
        raise LmdbFormatError(
            f'{path} cannot be opened as an LMDB ({type(e).__name__}: {e}); copy it again from its source, or '
            'recreate it with tools/create_lmdb.py'
        ) from None


def read_num_samples(txn: lmdb.Transaction, path: str | os.PathLike) -> int:
    """The dataset's ``num-samples``, which must be a positive integer."""
    raw = txn.get(NUM_SAMPLES_KEY)
    try:
        count = int(bytes(raw).decode('ascii'))
    except (TypeError, UnicodeDecodeError, ValueError):
        count = None
    if count is None or count < 1:
        what = 'no num-samples key' if raw is None else f'num-samples {bytes(raw)[:20]!r}, not a positive integer'
        raise LmdbFormatError(
            f'{path} has {what}: it is not an STR LMDB dataset, is empty, or was written incompletely; recreate it '
            'with tools/create_lmdb.py'
        )
    return count


# py-lmdb refuses to open one path twice in a process, so every dataset object reading a path (train and val on the
# same LMDB, a resumed run in the same process) shares one environment per process.
_SHARED_ENVS: dict[str, tuple[tuple[int, int, int], lmdb.Environment]] = {}


def shared_readonly_env(path: str | os.PathLike) -> lmdb.Environment:
    """This process's read-only environment for ``path``, opened on first use.

    An environment inherited through ``fork()`` must not be used in the child: its handle is closed (which only
    unmaps the child's copy) and a new one opened.
    """
    key = str(Path(path).resolve())
    stat = os.stat(os.path.join(key, 'data.mdb'))
    # A dataset rewritten in place (new inode) must not be read through the old mapping.
    identity = (os.getpid(), stat.st_ino, stat.st_dev)
    entry = _SHARED_ENVS.get(key)
    if entry is not None and entry[0] == identity:
        return entry[1]
    if entry is not None:
        entry[1].close()
    env = open_lmdb_readonly(key)
    _SHARED_ENVS[key] = (identity, env)
    return env


class LmdbDataset(Dataset):
    """One STR LMDB: yields ``(image, label)`` or, with ``return_boxes``, ``(image, label, boxes)``.

    ``boxes`` has one ``[x0, y0, x1, y1]`` per character of the (filtered) label, or is None for a sample that has
    none. Stored boxes belong to the stored label, so they are re-aligned after label filtering (boxes of removed
    characters are dropped); where that is impossible (see :func:`align_boxes`) or the stored boxes are malformed
    the sample comes without boxes, counted in :attr:`boxes_dropped`.

    Labels are read, normalised and filtered once when the dataset is created (see :class:`LabelFilter`);
    the resulting index is cached on disk, keyed by the LMDB's size/mtime and the filter settings, so later
    start-ups, DataLoader workers and DDP ranks don't pay for it again. The LMDB environment is opened lazily
    in each process (it must not cross a ``fork``), and always read-only.

    Bad samples never stop a run: a missing key or a non-UTF-8 label is dropped at start-up, and an image
    that fails to decode is replaced by the next good sample (training) or, with ``substitute_bad=False``
    (evaluation: no sample may count twice), returned as a :class:`BadSample` for the caller to skip and count.
    Both are counted in :attr:`skipped`, and the first few keys of each kind are logged.

    Args:
        root: the LMDB directory.
        label_filter: label normalisation and filtering; ``None`` keeps labels as stored.
        transform: applied to the decoded PIL image (e.g. augmentation + :class:`Preprocess`).
        min_image_size: drop samples whose image is smaller than this (height or width, pixels); 0 = off.
        return_boxes: also return the per-character boxes (``None`` where the LMDB has none).
        box_transform: maps the boxes from pixels of the stored image, given its (width, height), to the
            coordinates wanted (e.g. :meth:`Preprocess.map_boxes`: pixels of the model input); None keeps them.
        cache_dir: where the filtered index is cached; ``None`` disables caching.
        substitute_bad: replace an undecodable image by the next good sample (True), or yield a :class:`BadSample`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        label_filter: LabelFilter | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        min_image_size: int = 0,
        return_boxes: bool = False,
        cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
        box_transform: BoxTransform | None = None,
        substitute_bad: bool = True,
    ) -> None:
        self.root = Path(root)
        self.substitute_bad = substitute_bad
        if not is_lmdb_dir(self.root):
            raise FileNotFoundError(
                f'{self.root} is not an LMDB dataset (no data.mdb inside); create one with tools/create_lmdb.py'
            )
        self.label_filter = label_filter
        self.transform = transform
        self.min_image_size = min_image_size
        self.return_boxes = return_boxes
        self.box_transform = box_transform
        self.boxes_dropped: Counter[str] = Counter()
        self._env: lmdb.Environment | None = None
        self._env_pid: int | None = None
        self._runtime_bad: Counter[str] = Counter()
        self._bad_indices: set[int] = set()
        self.indices, self.labels, self.skipped, self.num_stored = self._load_index(cache_dir)
        self._log_skipped()

    # -- start-up: labels ---------------------------------------------------------------------------------------

    def _cache_path(self, cache_dir: Path) -> Path:
        stat = (self.root / 'data.mdb').stat()
        settings = {
            'root': str(self.root.resolve()),
            'size': stat.st_size,
            'mtime_ns': stat.st_mtime_ns,
            'filter': asdict(self.label_filter) if self.label_filter else None,
            'min_image_size': self.min_image_size,
            'version': 1,
        }
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cache_dir / f'{self.root.name}-{digest}.json'

    def _load_index(self, cache_dir: str | os.PathLike | None) -> tuple[list[int], list[str], dict, int]:
        cache_file = self._cache_path(Path(cache_dir)) if cache_dir is not None else None
        if cache_file is not None and cache_file.is_file():
            try:
                cached = json.loads(cache_file.read_text(encoding='utf-8'))
                return cached['indices'], cached['labels'], cached['skipped'], cached['num_stored']
            except (ValueError, KeyError):
                log.warning('ignoring unreadable label index cache %s', cache_file)
        indices, labels, skipped, num_stored = self._scan_labels()
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(f'.{os.getpid()}.tmp')
                tmp.write_text(
                    json.dumps({'indices': indices, 'labels': labels, 'skipped': skipped, 'num_stored': num_stored}),
                    encoding='utf-8',
                )
                os.replace(tmp, cache_file)
            except OSError as e:
                log.warning('could not cache the label index of %s in %s: %s', self.root, cache_file.parent, e)
        return indices, labels, skipped, num_stored

    def _scan_labels(self) -> tuple[list[int], list[str], dict, int]:
        indices: list[int] = []
        labels: list[str] = []
        reasons: dict[str, list[str]] = {}

        def reject(reason: str, key: bytes) -> None:
            reasons.setdefault(reason, []).append(key.decode())

        env = shared_readonly_env(self.root)
        with env.begin(buffers=True) as txn:
            num_stored = read_num_samples(txn, self.root)
            for index in range(1, num_stored + 1):
                raw_label = txn.get(label_key(index))
                if raw_label is None:
                    reject('missing label', label_key(index))
                    continue
                try:
                    label = bytes(raw_label).decode('utf-8')
                except UnicodeDecodeError:
                    reject('label not UTF-8', label_key(index))
                    continue
                if self.label_filter is not None:
                    label, reason = self.label_filter(label)
                    if label is None:
                        reject(reason, label_key(index))
                        continue
                image = txn.get(image_key(index))
                if image is None:
                    reject('missing image', image_key(index))
                    continue
                if self.min_image_size > 0:
                    size = _image_size(image)
                    if size is None:
                        reject(CORRUPT_IMAGE, image_key(index))
                        continue
                    if min(size) < self.min_image_size:
                        reject('image too small', image_key(index))
                        continue
                indices.append(index)
                labels.append(label)
        skipped = {reason: {'count': len(keys), 'keys': keys[:MAX_LOGGED_KEYS]} for reason, keys in reasons.items()}
        return indices, labels, skipped, num_stored

    def _log_skipped(self) -> None:
        if self.skipped:
            detail = '; '.join(
                f'{reason}: {info["count"]} (e.g. {", ".join(info["keys"])})'
                for reason, info in sorted(self.skipped.items())
            )
            log.info('%s: kept %d of %d samples; skipped %s', self.root, len(self.indices), self.num_stored, detail)

    # -- run time: images ---------------------------------------------------------------------------------------

    @property
    def env(self) -> lmdb.Environment:
        # Looked up once per process: the shared lookup stats the file, too slow to repeat for every sample.
        if self._env is None or self._env_pid != os.getpid():
            self._env = shared_readonly_env(self.root)
            self._env_pid = os.getpid()
        return self._env

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_env'] = state['_env_pid'] = None
        return state

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_skipped(self) -> int:
        """Samples dropped at start-up plus undecodable images met so far in this process."""
        return sum(info['count'] for info in self.skipped.values()) + sum(self._runtime_bad.values())

    def _decode(self, index: int) -> tuple[Image.Image, bytes | None, str | None]:
        """The image and, with ``return_boxes``, the stored boxes' JSON and the stored (unfiltered) label."""
        with self.env.begin(buffers=True) as txn:
            buf = txn.get(image_key(index))
            if buf is None:
                raise KeyError(image_key(index).decode())
            img = Image.open(io.BytesIO(buf))  # BytesIO copies the buffer: no bytes() copy first
            img.load()
            if not self.return_boxes:
                return img, None, None
            boxes = txn.get(boxes_key(index))
            if boxes is None:
                return img, None, None
            return img, bytes(boxes), bytes(txn.get(label_key(index))).decode('utf-8')

    def _boxes(
        self, index: int, raw: bytes, raw_label: str, label: str, image_size: tuple[int, int]
    ) -> list[Box] | None:
        boxes = parse_boxes(raw)
        if boxes is None or len(boxes) != len(raw_label):
            self._drop_boxes(index, 'malformed (not one [x0, y0, x1, y1] per stored label character)')
            return None
        boxes = align_boxes(raw_label, label, boxes, self.label_filter)
        if boxes is None:
            self._drop_boxes(index, f'label {raw_label!r} -> {label!r} changes characters other than one to one')
            return None
        return self.box_transform(boxes, image_size) if self.box_transform is not None else boxes

    def _drop_boxes(self, index: int, reason: str) -> None:
        self.boxes_dropped[reason] += 1
        if sum(self.boxes_dropped.values()) <= MAX_LOGGED_KEYS:
            log.warning('%s: %s not used: %s', self.root, boxes_key(index).decode(), reason)

    def __getitem__(self, item: int):
        for offset in range(min(len(self), MAX_CONSECUTIVE_BAD)):
            position = (item + offset) % len(self)
            index = self.indices[position]
            if index in self._bad_indices and self.substitute_bad:
                continue
            try:
                img, raw_boxes, raw_label = self._decode(index)
            except (OSError, SyntaxError, ValueError, KeyError, Image.DecompressionBombError) as e:
                if index not in self._bad_indices:
                    self._record_bad(index, e)
                if not self.substitute_bad:
                    return BadSample(f'{self.root.name}:{image_key(index).decode()}')
                continue
            label = self.labels[position]
            size = img.size
            if self.transform is not None:
                img = self.transform(img)
            if self.return_boxes:
                boxes = None if raw_boxes is None else self._boxes(index, raw_boxes, raw_label, label, size)
                return img, label, boxes
            return img, label
        raise RuntimeError(
            f'{self.root}: {MAX_CONSECUTIVE_BAD} images in a row could not be decoded; the dataset is '
            'likely corrupt: check it with tools/check_lmdb.py'
        )

    def _record_bad(self, index: int, error: Exception) -> None:
        self._bad_indices.add(index)
        self._runtime_bad[CORRUPT_IMAGE] += 1
        if self._runtime_bad[CORRUPT_IMAGE] <= MAX_LOGGED_KEYS:
            log.warning(
                '%s: skipping undecodable %s (%s: %s)',
                self.root,
                image_key(index).decode(),
                type(error).__name__,
                error,
            )


def _image_size(buf) -> tuple[int, int] | None:
    """(width, height) from the image header alone, or None when it is not a readable image."""
    try:
        with Image.open(io.BytesIO(bytes(buf))) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def open_lmdb_datasets(roots: Iterable[str | os.PathLike], **kwargs: Any) -> list[LmdbDataset]:
    """Opens every LMDB found under each root (recursively) with the same settings."""
    datasets = []
    for root in roots:
        found = find_lmdb_dirs(root)
        if not found:
            raise FileNotFoundError(f'no LMDB dataset (a directory with data.mdb) under {root}')
        datasets.extend(LmdbDataset(path, **kwargs) for path in found)
    return datasets
