"""Checking STR LMDB datasets: statistics, corrupt entries and a contact sheet of samples.

Every function opens the LMDB with :func:`~strhub.data.lmdb_dataset.shared_readonly_env` (read-only, no lock
file), so checking never modifies the data.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
from PIL import Image, ImageDraw, ImageFont

from strhub.data.lmdb_dataset import is_lmdb_dir, read_num_samples, shared_readonly_env
from strhub.data.lmdb_writer import boxes_key, image_key, label_key

log = logging.getLogger(__name__)

# Why an entry is corrupt; the report counts them under these names.
CORRUPT_MISSING_IMAGE = 'missing image key'
CORRUPT_MISSING_LABEL = 'missing label key'
CORRUPT_UNDECODABLE_IMAGE = 'undecodable image'
CORRUPT_ZERO_SIZE_IMAGE = 'zero-size image'
CORRUPT_NON_UTF8_LABEL = 'non-UTF-8 label'
CORRUPT_EMPTY_LABEL = 'empty label'
CORRUPT_BAD_BOXES = 'bad boxes'


def _require_lmdb_dir(path: Path) -> None:
    if not is_lmdb_dir(path):
        raise FileNotFoundError(f'{path} is not an LMDB directory (no data.mdb inside); pass one LMDB directory')


@dataclass(frozen=True)
class SizeStats:
    """Summary of one image dimension (pixels)."""

    min: int
    max: int
    mean: float
    median: float

    @classmethod
    def of(cls, values: list[int]) -> SizeStats | None:
        if not values:
            return None
        return cls(min(values), max(values), statistics.fmean(values), statistics.median(values))


@dataclass
class LmdbReport:
    """What :func:`inspect_lmdb` found in one LMDB."""

    path: Path
    num_samples: int
    label_lengths: Counter[int] = field(default_factory=Counter)
    char_counts: Counter[str] = field(default_factory=Counter)
    corrupt_counts: Counter[str] = field(default_factory=Counter)
    corrupt_entries: list[tuple[int, str]] = field(default_factory=list)
    width: SizeStats | None = None
    height: SizeStats | None = None
    aspect_ratio: SizeStats | None = None

    @property
    def num_corrupt(self) -> int:
        return sum(self.corrupt_counts.values())

    def to_dict(self) -> dict:
        """JSON-ready form (histogram keys become strings)."""

        def stats(s: SizeStats | None) -> dict | None:
            return None if s is None else {'min': s.min, 'max': s.max, 'mean': s.mean, 'median': s.median}

        return {
            'path': str(self.path),
            'num_samples': self.num_samples,
            'num_corrupt': self.num_corrupt,
            'corrupt_counts': dict(self.corrupt_counts),
            'corrupt_entries': [{'index': i, 'reason': r} for i, r in self.corrupt_entries],
            'label_lengths': {str(k): v for k, v in sorted(self.label_lengths.items())},
            'char_counts': dict(self.char_counts.most_common()),
            'width': stats(self.width),
            'height': stats(self.height),
            'aspect_ratio': stats(self.aspect_ratio),
        }

    def format(self, bar_width: int = 40, top_chars: int = 20) -> str:
        """A readable multi-line report."""
        lines = [f'{self.path}: {self.num_samples} samples, {self.num_corrupt} corrupt']
        for reason, count in self.corrupt_counts.most_common():
            indices = [str(i) for i, r in self.corrupt_entries if r == reason]
            lines.append(f'  {reason}: {count} (indices {", ".join(indices[:10])}{", ..." if count > 10 else ""})')
        for name, s in (('width', self.width), ('height', self.height), ('aspect', self.aspect_ratio)):
            if s is not None:
                lines.append(f'  {name:<7} min {s.min:g}  max {s.max:g}  mean {s.mean:.1f}  median {s.median:g}')
        if self.label_lengths:
            lines.append('  label length histogram:')
            peak = max(self.label_lengths.values())
            for length, count in sorted(self.label_lengths.items()):
                bar = '#' * max(1, round(bar_width * count / peak))
                lines.append(f'    {length:>3} {count:>8} {bar}')
        if self.char_counts:
            charset = ''.join(sorted(self.char_counts))
            lines.append(f'  {len(self.char_counts)} distinct characters: {charset!r}')
            common = ', '.join(f'{c!r}:{n}' for c, n in self.char_counts.most_common(top_chars))
            lines.append(f'  most common: {common}')
        return '\n'.join(lines)


def inspect_lmdb(path: str | os.PathLike, full_decode: bool = True, max_listed: int = 100) -> LmdbReport:
    """Scans every sample of the LMDB at ``path`` for statistics and corrupt entries.

    Args:
        path: an LMDB directory (holding ``data.mdb``).
        full_decode: decode every image fully; False only reads image headers (much faster, misses
            truncated pixel data).
        max_listed: how many corrupt entries to list by index (all are counted).
    """
    path = Path(path)
    _require_lmdb_dir(path)
    widths, heights, aspects = [], [], []
    with shared_readonly_env(path).begin() as txn:
        report = LmdbReport(path=path, num_samples=read_num_samples(txn, path))
        for index in range(1, report.num_samples + 1):
            problems = []
            label = _check_label(txn.get(label_key(index)), problems)
            size = _check_image(txn.get(image_key(index)), full_decode, problems)
            raw_boxes = txn.get(boxes_key(index))
            if raw_boxes is not None and not _boxes_match(raw_boxes, label):
                problems.append(CORRUPT_BAD_BOXES)
            if label:
                report.label_lengths[len(label)] += 1
                report.char_counts.update(label)
            if size is not None:
                widths.append(size[0])
                heights.append(size[1])
                aspects.append(size[0] / size[1])
            for reason in problems:
                report.corrupt_counts[reason] += 1
                if len(report.corrupt_entries) < max_listed:
                    report.corrupt_entries.append((index, reason))
    report.width, report.height, report.aspect_ratio = (
        SizeStats.of(widths),
        SizeStats.of(heights),
        SizeStats.of(aspects),
    )
    return report


def _check_label(raw: bytes | None, problems: list[str]) -> str | None:
    if raw is None:
        problems.append(CORRUPT_MISSING_LABEL)
        return None
    try:
        label = raw.decode('utf-8')
    except UnicodeDecodeError:
        problems.append(CORRUPT_NON_UTF8_LABEL)
        return None
    if not label:
        problems.append(CORRUPT_EMPTY_LABEL)
    return label


def _check_image(raw: bytes | None, full_decode: bool, problems: list[str]) -> tuple[int, int] | None:
    if raw is None:
        problems.append(CORRUPT_MISSING_IMAGE)
        return None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if full_decode:
                image.load()
            size = image.size
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        problems.append(CORRUPT_UNDECODABLE_IMAGE)
        return None
    if size[0] == 0 or size[1] == 0:
        problems.append(CORRUPT_ZERO_SIZE_IMAGE)
        return None
    return size


def _boxes_match(raw: bytes, label: str | None) -> bool:
    try:
        boxes = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(boxes, list) and label is not None and len(boxes) == len(label)


def draw_contact_sheet(
    path: str | os.PathLike,
    out: str | os.PathLike,
    num: int = 64,
    seed: int = 0,
    columns: int = 8,
    cell_size: tuple[int, int] = (160, 48),
    font_size: int = 14,
) -> Path:
    """Draws ``num`` randomly chosen samples (``seed`` fixes the choice) with their labels under each.

    Images are scaled to fit ``cell_size`` (width, height) keeping their aspect ratio. Samples that cannot be
    read show as a grey cell captioned with the reason. Returns the PNG path.
    """
    path, out = Path(path), Path(out)
    if num < 1 or columns < 1:
        raise ValueError(f'num ({num}) and columns ({columns}) must be at least 1')
    _require_lmdb_dir(path)
    cell_w, cell_h = cell_size
    with shared_readonly_env(path).begin() as txn:
        total = read_num_samples(txn, path)
        if total == 0:
            raise ValueError(f'{path} holds no samples; nothing to draw')
        indices = sorted(random.Random(seed).sample(range(1, total + 1), min(num, total)))
        cells = []
        for index in indices:
            thumbnail, caption = _sample_thumbnail(txn, index, (cell_w - 4, cell_h - 4))
            cells.append((thumbnail, f'{index}: {caption}'))
    return save_contact_sheet(cells, out, columns, cell_size, font_size)


def save_contact_sheet(
    cells: list[tuple[Image.Image, str]],
    out: str | os.PathLike,
    columns: int = 8,
    cell_size: tuple[int, int] = (160, 48),
    font_size: int = 14,
) -> Path:
    """Lays out (image, caption) pairs on a grid, each image scaled to fit ``cell_size``; writes a PNG."""
    if not cells:
        raise ValueError('no samples to draw')
    out = Path(out)
    font = ImageFont.load_default(size=font_size)
    cell_w, cell_h = cell_size
    caption_h = font_size + 6
    columns = min(columns, len(cells))
    rows = -(-len(cells) // columns)
    sheet = Image.new('RGB', (columns * cell_w, rows * (cell_h + caption_h)), 'white')
    draw = ImageDraw.Draw(sheet)
    for position, (image, caption) in enumerate(cells):
        x = (position % columns) * cell_w
        y = (position // columns) * (cell_h + caption_h)
        scale = min((cell_w - 4) / image.width, (cell_h - 4) / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        thumbnail = image.convert('RGB').resize(size, Image.Resampling.BILINEAR) if image.size != size else image
        sheet.paste(thumbnail, (x + (cell_w - thumbnail.width) // 2, y + (cell_h - thumbnail.height) // 2))
        draw.text((x + 2, y + cell_h + 1), caption, fill='black', font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format='PNG')
    return out


def _sample_thumbnail(txn: lmdb.Transaction, index: int, box: tuple[int, int]) -> tuple[Image.Image, str]:
    problems = []
    label = _check_label(txn.get(label_key(index)), problems)
    raw = txn.get(image_key(index))
    thumbnail = None
    if _check_image(raw, True, problems) is not None:
        with Image.open(io.BytesIO(raw)) as image:
            # Small crops are enlarged too, so that every sample on the sheet is legible.
            scale = min(box[0] / image.width, box[1] / image.height)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            thumbnail = image.convert('RGB').resize(size, Image.Resampling.BILINEAR)
    if thumbnail is None:
        thumbnail = Image.new('RGB', box, (160, 160, 160))
    caption = label if label is not None else ''
    if problems:
        caption = f'<{", ".join(problems)}> {caption}'
    return thumbnail, caption


def export_samples(path: str | os.PathLike, out_dir: str | os.PathLike, num: int = 16, seed: int = 0) -> list[Path]:
    """Writes ``num`` randomly chosen samples as image files plus a ``labels.tsv`` (``filename<TAB>label``).

    The inverse of ``tools/create_lmdb.py tsv``: images keep their stored bytes; the file extension follows the
    image format. Unreadable samples are skipped. Returns the written image paths.
    """
    path, out_dir = Path(path), Path(out_dir)
    _require_lmdb_dir(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, lines = [], []
    with shared_readonly_env(path).begin() as txn:
        total = read_num_samples(txn, path)
        for index in sorted(random.Random(seed).sample(range(1, total + 1), min(num, total))):
            problems: list[str] = []
            label = _check_label(txn.get(label_key(index)), problems)
            raw = txn.get(image_key(index))
            if label is None or _check_image(raw, True, problems) is None:
                continue
            with Image.open(io.BytesIO(raw)) as image:
                extension = (image.format or 'png').lower().replace('jpeg', 'jpg')
            target = out_dir / f'{path.name}_{index:09d}.{extension}'
            target.write_bytes(raw)
            written.append(target)
            lines.append(f'{target.name}\t{label}\n')
    (out_dir / 'labels.tsv').write_text(''.join(lines), encoding='utf-8')
    return written
