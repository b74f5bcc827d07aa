"""Label normalisation and filtering, applied once when a dataset is opened."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import Enum

from strhub.data.charsets import is_lowercase_charset


class UnknownChars(str, Enum):
    """What to do with a label character outside the training charset."""

    DROP = 'drop'  # drop the whole sample
    REMOVE = 'remove'  # remove the character, keep the rest of the label


@dataclass(frozen=True)
class LabelFilter:
    """Normalises a raw label to what the model is trained to output, or rejects it.

    Unlike the common ``NFKD -> ASCII`` recipe (which silently drops every non-Latin character), normalisation
    here is NFKC and only strips diacritics from characters the charset lacks, so a charset containing
    Cyrillic, CJK or accented letters keeps them.

    Attributes:
        charset: the training charset.
        max_length: labels longer than this (after normalisation) are rejected.
        unknown_chars: ``drop`` the sample or ``remove`` the characters outside the charset.
        remove_whitespace: remove all whitespace (most STR benchmarks label words without spaces).
        normalize_unicode: apply NFKC and diacritic folding.
        case_fold: lowercase labels when the charset has no uppercase letters (``None`` = decide from charset).
    """

    charset: str
    max_length: int = 25
    unknown_chars: UnknownChars = UnknownChars.REMOVE
    remove_whitespace: bool = True
    normalize_unicode: bool = True
    case_fold: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, 'unknown_chars', UnknownChars(self.unknown_chars))
        if self.case_fold is None:
            object.__setattr__(self, 'case_fold', is_lowercase_charset(self.charset))
        object.__setattr__(self, '_charset_set', frozenset(self.charset))

    def _fold_char(self, char: str) -> str:
        """Maps a character outside the charset to its base letter when the charset has that (é -> e)."""
        base = ''.join(c for c in unicodedata.normalize('NFKD', char) if not unicodedata.combining(c))
        return base if base and all(c in self._charset_set for c in base) else char

    def __call__(self, label: str) -> tuple[str | None, str | None]:
        """Returns ``(normalised_label, None)``, or ``(None, reason)`` when the label is rejected."""
        if self.remove_whitespace:
            label = ''.join(label.split())
        if self.normalize_unicode:
            label = unicodedata.normalize('NFKC', label)
        if self.case_fold:
            label = label.lower()
        if self.normalize_unicode and not self._charset_set.issuperset(label):
            label = ''.join(c if c in self._charset_set else self._fold_char(c) for c in label)
        if not self._charset_set.issuperset(label):
            if self.unknown_chars is UnknownChars.DROP:
                return None, 'chars outside charset'
            label = ''.join(c for c in label if c in self._charset_set)
        if not label:
            return None, 'empty label'
        if len(label) > self.max_length:
            return None, 'label too long'
        return label, None
