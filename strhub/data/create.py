"""Building STR LMDB datasets from common annotation formats.

Three readers turn an annotation source into :class:`Annotation` records:

- :func:`read_tsv_annotations`: ``filename<TAB>label`` lines (the layout of ``images/`` + ``labels.tsv``);
- :func:`read_mjsynth_annotations` / :func:`glob_mjsynth_annotations`: MJSynth paths whose file name holds
  the label (``./2911/6/77_heretical_35885.jpg`` -> ``heretical``);
- :func:`read_icdar_annotations`: ICDAR ground-truth lines ``word_1.png, "Tiredness"``.

:func:`create_lmdb` validates every record and writes the valid ones with
:class:`~strhub.data.lmdb_writer.LmdbWriter`, keeping each image's original encoded bytes.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from strhub.data.lmdb_writer import LmdbWriter

log = logging.getLogger(__name__)

# Why a record is left out of the dataset; the summary counts them under these names.
SKIP_MALFORMED = 'malformed annotation'
SKIP_EMPTY_LABEL = 'empty label'
SKIP_MISSING_IMAGE = 'missing image'
SKIP_UNDECODABLE_IMAGE = 'undecodable image'
SKIP_ZERO_SIZE_IMAGE = 'zero-size image'


@dataclass(frozen=True)
class Annotation:
    """One image/label pair read from an annotation source.

    ``source`` says where it came from (``labels.tsv:12``) so a skipped record can be found again. A reader
    that cannot parse a line still yields a record, with ``problem`` set, so that it is counted, not lost.
    """

    source: str
    image_path: Path | None
    label: str | None
    problem: str | None = None


@dataclass
class CreateSummary:
    """The outcome of :func:`create_lmdb`: what was written and what was skipped, and why."""

    path: Path | None
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def record_skip(self, reason: str, offender: str, max_examples: int) -> None:
        self.skipped[reason] += 1
        listed = self.examples.setdefault(reason, [])
        if len(listed) < max_examples:
            listed.append(offender)

    def format(self) -> str:
        """A readable multi-line report."""
        lines = [f'wrote {self.written} samples to {self.path}' if self.path else 'wrote nothing']
        if self.skipped:
            lines.append(f'skipped {self.num_skipped} entries:')
            for reason, count in self.skipped.most_common():
                lines.append(f'  {reason}: {count}')
                lines.extend(f'    {offender}' for offender in self.examples.get(reason, []))
        return '\n'.join(lines)


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, line)`` without line endings; a UTF-8 BOM is dropped, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'annotation file {path} does not exist; check the --labels argument')
    with open(path, encoding='utf-8-sig', newline='') as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip('\r\n')
            if line.strip():
                yield number, line


def read_tsv_annotations(labels_file: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[Annotation]:
    """Reads ``filename<TAB>label`` lines; file names are relative to ``images_dir``.

    Only the first tab separates: the label is everything after it, kept as written (inner and trailing
    spaces included).
    """
    labels_file, images_dir = Path(labels_file), Path(images_dir)
    for number, line in _read_lines(labels_file):
        source = f'{labels_file.name}:{number}'
        filename, tab, label = line.partition('\t')
        if not tab:
            yield Annotation(source, None, None, f'no tab in {line!r}')
        else:
            yield Annotation(source, images_dir / filename, label)


def label_from_mjsynth_name(path: str | os.PathLike) -> str:
    """The word in an MJSynth file name: ``2911/6/77_heretical_35885.jpg`` -> ``heretical``.

    MJSynth names are ``<index>_<word>_<lexicon index>.<ext>``; the word is everything between the first
    and the last underscore.
    """
    stem = Path(path).stem
    index, sep, rest = stem.partition('_')
    word, sep2, lexicon_index = rest.rpartition('_')
    if not (sep and sep2 and index.isdigit() and lexicon_index.isdigit()):
        raise ValueError(f'{path} is not an MJSynth name <index>_<word>_<lexicon index>.<ext>')
    return word


def _mjsynth_annotation(source: str, images_dir: Path, relative_path: str) -> Annotation:
    try:
        label = label_from_mjsynth_name(relative_path)
    except ValueError as e:
        return Annotation(source, None, None, str(e))
    return Annotation(source, images_dir / relative_path, label)


def read_mjsynth_annotations(annotation_file: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[Annotation]:
    """Reads an MJSynth ``annotation.txt`` (``./2911/6/77_heretical_35885.jpg 35885`` lines).

    Only the path (the first field) is used; the label comes from the file name.
    """
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    for number, line in _read_lines(annotation_file):
        yield _mjsynth_annotation(f'{annotation_file.name}:{number}', images_dir, line.split()[0])


def glob_mjsynth_annotations(images_dir: str | os.PathLike, pattern: str = '**/*.jpg') -> Iterator[Annotation]:
    """Finds MJSynth-named images under ``images_dir`` matching ``pattern``, in sorted order."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f'image folder {images_dir} does not exist; check the --images argument')
    for path in sorted(images_dir.glob(pattern)):
        if path.is_file():
            relative = path.relative_to(images_dir).as_posix()
            yield _mjsynth_annotation(relative, images_dir, relative)


def parse_icdar_line(line: str) -> tuple[str, str]:
    """Splits an ICDAR ground-truth line into ``(filename, label)``.

    ``word_1.png, "Tiredness"`` -> ``('word_1.png', 'Tiredness')``. The label may contain commas; inside the
    quotes ``\\"`` stands for ``"`` and ``\\\\`` for ``\\``. An unquoted label is taken as written.
    """
    filename, comma, rest = line.partition(',')
    if not comma or not filename.strip():
        raise ValueError(f'expected <filename>, "<label>" but got {line!r}')
    rest = rest.strip(' ')
    if len(rest) >= 2 and rest[0] == '"' and rest[-1] == '"':
        return filename.strip(), _unescape_quoted(rest[1:-1])
    return filename.strip(), rest


def _unescape_quoted(text: str) -> str:
    out = []
    chars = iter(text)
    for char in chars:
        if char == '\\':
            following = next(chars, '')
            # Only \" and \\ are escapes; a backslash before anything else is a literal backslash.
            out.append(following if following in ('"', '\\') else char + following)
        else:
            out.append(char)
    return ''.join(out)


def read_icdar_annotations(gt_file: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[Annotation]:
    """Reads an ICDAR 2013/2015 word-recognition ``gt.txt`` (``word_1.png, "Tiredness"`` lines)."""
    gt_file, images_dir = Path(gt_file), Path(images_dir)
    for number, line in _read_lines(gt_file):
        source = f'{gt_file.name}:{number}'
        try:
            filename, label = parse_icdar_line(line)
        except ValueError as e:
            yield Annotation(source, None, None, str(e))
        else:
            yield Annotation(source, images_dir / filename, label)


def check_image_bytes(data: bytes) -> str | None:
    """Fully decodes encoded image bytes; returns a skip reason, or None when the image is usable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        return SKIP_UNDECODABLE_IMAGE
    return SKIP_ZERO_SIZE_IMAGE if width == 0 or height == 0 else None


def create_lmdb(
    annotations: Iterable[Annotation],
    out: str | os.PathLike,
    overwrite: bool = False,
    max_examples: int = 5,
    progress: bool = False,
    images_dir: str | os.PathLike | None = None,
) -> CreateSummary:
    """Writes the valid annotated images to a new LMDB at ``out``.

    A record is skipped (counted per reason, with the first ``max_examples`` offenders listed) when its
    annotation is malformed, its label is empty, its image is missing, does not decode with PIL or has zero
    size. Valid images are stored as their original file bytes, labels as given (UTF-8). The dataset only
    appears at ``out`` once complete.

    ``images_dir`` (the folder the images are read from) may not be ``out`` or hold it: the dataset is never written
    into, or over, its own sources.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False, or ``out`` is not an LMDB directory.
        ValueError: no record was valid (the message holds the skip report), or ``out`` is inside ``images_dir``;
            nothing is written.
    """
    if images_dir is not None:
        source, target = Path(images_dir).resolve(), Path(out).resolve()
        if target == source or source in target.parents:
            raise ValueError(
                f'--out {out} is inside the image folder {images_dir}: write the LMDB somewhere else (e.g. '
                f'data/val/<name>), so that the source images are never touched'
            )
    summary = CreateSummary(path=None)
    with LmdbWriter(out, overwrite=overwrite) as writer:
        for annotation in tqdm(annotations, desc='images', unit='img', disable=not progress):
            image = _load_valid_image(annotation, summary, max_examples)
            if image is not None:
                writer.add(image, annotation.label)
        if writer.count == 0:
            raise ValueError(f'no valid samples to write to {out}:\n{summary.format()}')
        summary.written = writer.count
    summary.path = Path(out)
    log.info('%s', summary.format())
    return summary


def _load_valid_image(annotation: Annotation, summary: CreateSummary, max_examples: int) -> bytes | None:
    def skip(reason: str, detail: str) -> None:
        summary.record_skip(reason, f'{annotation.source}: {detail}', max_examples)

    if annotation.problem is not None:
        skip(SKIP_MALFORMED, annotation.problem)
        return None
    if not annotation.label:
        skip(SKIP_EMPTY_LABEL, str(annotation.image_path))
        return None
    try:
        data = annotation.image_path.read_bytes()
    except OSError:
        skip(SKIP_MISSING_IMAGE, str(annotation.image_path))
        return None
    reason = check_image_bytes(data)
    if reason is not None:
        skip(reason, str(annotation.image_path))
        return None
    return data
