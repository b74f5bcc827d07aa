"""Character sets: the standard named ones and any charset given as a string or a file."""

from __future__ import annotations

import difflib
import logging
import re
import string
from pathlib import Path

log = logging.getLogger(__name__)

# A spec of this shape names a charset (``36_lowercase``); one that is not a known name is a typo, never taken as the
# literal characters. Literal charsets use ``chars:<characters>``.
_NAME_LIKE = re.compile(r'^\d+_[A-Za-z][A-Za-z_-]*$')
LITERAL_PREFIX = 'chars:'

# The standard STR charsets, in the order the published checkpoints use for their output heads.
STANDARD_CHARSETS: dict[str, str] = {
    '36_lowercase': string.digits + string.ascii_lowercase,
    '62_mixed-case': string.digits + string.ascii_lowercase + string.ascii_uppercase,
    '94_full': string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
}


def read_charset_file(path: str | Path) -> str:
    """Reads a charset file: one character per line, or the whole charset on a single line.

    A line holding exactly one space character is kept as the space character; other blank lines are ignored.
    """
    text = Path(path).read_text(encoding='utf-8')
    lines = [line.rstrip('\r\n') for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) == 1:
        chars = lines[0]
    elif all(len(line) == 1 for line in lines):
        chars = ''.join(lines)
    else:
        bad = next(line for line in lines if len(line) != 1)
        raise ValueError(
            f'{path}: a charset file holds one character per line or the whole charset on one line; '
            f'found the line {bad!r}'
        )
    return deduplicate(chars)


def deduplicate(chars: str) -> str:
    """Removes repeated characters, keeping the first occurrence (the order fixes the model's class ids)."""
    unique = ''.join(dict.fromkeys(chars))
    if len(unique) != len(chars):
        repeated = sorted({c for c in chars if chars.count(c) > 1})
        log.warning('charset: %d repeated character(s) %s kept once, at their first position', len(repeated), repeated)
    return unique


def resolve_charset(spec: str) -> str:
    """Turns a charset spec into the charset string.

    ``spec`` is a standard name (``36_lowercase``, ``62_mixed-case``, ``94_full``), a path to a charset file
    (``file:chars.txt`` or any existing path), or the characters themselves (``chars:αβγ``, or plainly ``αβγ`` when
    the string does not look like a charset name: ``62_mixedcase`` is refused as a typo, not read as 11 characters).
    """
    if spec in STANDARD_CHARSETS:
        return STANDARD_CHARSETS[spec]
    if spec.startswith(LITERAL_PREFIX):
        chars = spec[len(LITERAL_PREFIX) :]
        if not chars:
            raise ValueError(f'empty charset {spec!r}: give the characters after {LITERAL_PREFIX!r}')
        return deduplicate(chars)
    if _NAME_LIKE.match(spec) and not Path(spec).is_file():
        close = difflib.get_close_matches(spec, list(STANDARD_CHARSETS), n=1, cutoff=0.5)
        hint = f'did you mean {close[0]!r}? ' if close else ''
        raise ValueError(
            f'unknown charset name {spec!r}; {hint}standard charsets: {sorted(STANDARD_CHARSETS)}. For these '
            f'characters literally, write {LITERAL_PREFIX}{spec}'
        )
    path = spec[len('file:') :] if spec.startswith('file:') else spec
    if spec.startswith('file:') or (len(spec) < 4096 and '\n' not in spec and Path(path).is_file()):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f'charset file {path} does not exist; standard charsets are {sorted(STANDARD_CHARSETS)}'
            )
        return read_charset_file(path)
    if not spec:
        raise ValueError(f'empty charset; use one of {sorted(STANDARD_CHARSETS)}, a file or a string of characters')
    return deduplicate(spec)


def is_lowercase_charset(charset: str) -> bool:
    """True when the charset has lowercase letters but no uppercase ones (labels are then case-folded)."""
    return charset == charset.lower() and charset != charset.upper()
