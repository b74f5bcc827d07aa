"""Word lists for the synthetic renderer: the built-in English vocabulary and user word-list files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

DEFAULT_VOCABULARY_SIZE = 50_000


@lru_cache(maxsize=4)
def english_words(count: int = DEFAULT_VOCABULARY_SIZE) -> tuple[str, ...]:
    """The ``count`` most frequent English words (lowercase) according to ``wordfreq``."""
    import wordfreq  # imported here: loading its frequency tables takes a few hundred ms

    return tuple(wordfreq.top_n_list('en', count))


def read_word_list(path: str | os.PathLike) -> list[str]:
    """Reads a word-list file: UTF-8, one word per line; surrounding whitespace and blank lines are dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'word list {path} does not exist; pass a UTF-8 text file with one word per line')
    return [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def label_for(text: str, case_sensitive: bool) -> str:
    """The label of a rendered text: itself, or its lowercase form for a case-insensitive charset."""
    return text if case_sensitive else text.lower()


def words_for_charset(words: Iterable[str], charset: str, case_sensitive: bool, max_length: int) -> tuple[str, ...]:
    """The words whose label uses only ``charset`` and has 1 to ``max_length`` characters (order kept, no repeats)."""
    allowed = frozenset(charset)
    kept = {}
    for word in words:
        label = label_for(word, case_sensitive)
        if 0 < len(label) <= max_length and len(label) == len(word) and allowed.issuperset(label):
            kept[word] = None
    return tuple(kept)
