"""Synthetic labelled word images on demand: sample ``i`` is a pure function of ``(seed, i)``."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from strhub.data.charsets import is_lowercase_charset
from strhub.data.synth.config import RenderConfig
from strhub.data.synth.fonts import FontFace, load_font_faces
from strhub.data.synth.render import render_word
from strhub.data.synth.words import english_words, label_for, read_word_list, words_for_charset

log = logging.getLogger(__name__)

# Words drawn before giving up on finding one that a single font can draw (then a random string is used).
_WORD_TRIES = 20


@dataclass(frozen=True)
class SamplePlan:
    """What sample ``i`` shows: the drawn text, its label (same length) and the font face."""

    text: str
    label: str
    font: FontFace


class SyntheticWordGenerator:
    """Renders labelled word images: dictionary words and random strings over a charset, in many font faces.

    Args:
        charset: the characters labels may use. A charset without uppercase letters (e.g. ``36_lowercase``) is
            case-insensitive: words are still drawn in lower, title or upper case, and labelled in lowercase.
        words: a word-list file (``str`` or path; one word per line) or an iterable of words; ``None`` uses the
            most frequent English words of ``wordfreq``. Words the charset cannot write are dropped.
        fonts: font files or directories to draw with; ``None`` uses the installed ``font-*`` packages and
            matplotlib's DejaVu/STIX faces. Each family gets the same share of samples whatever its number of faces.
        cfg: appearance settings.
        seed: with ``i``, fixes everything about sample ``i``.
        random_ratio: fraction of samples showing random strings instead of words.
        max_length: longest label.
        random_length: (shortest, longest) random string.
        case_weights: relative frequency of drawing a word as written, Title-cased and UPPER-cased.

    Construction parses the fonts once per process (about a second; later generators reuse the result). The object
    holds only plain data, so it pickles cheaply to DataLoader or multiprocessing workers.
    """

    def __init__(
        self,
        charset: str,
        words: str | os.PathLike | Iterable[str] | None = None,
        fonts: Iterable[str | os.PathLike] | None = None,
        cfg: RenderConfig | None = None,
        seed: int = 0,
        random_ratio: float = 0.2,
        max_length: int = 25,
        random_length: tuple[int, int] = (1, 10),
        case_weights: tuple[float, float, float] = (0.6, 0.25, 0.15),
    ) -> None:
        if not charset:
            raise ValueError('the charset is empty; pass a charset name such as 36_lowercase, a file or the characters')
        if not 0.0 <= random_ratio <= 1.0:
            raise ValueError(f'random_ratio is {random_ratio}; it is a fraction of samples in [0, 1]')
        if not 1 <= random_length[0] <= random_length[1]:
            raise ValueError(
                f'random_length is {random_length}; give (shortest, longest) with 1 <= shortest <= longest'
            )
        if len(case_weights) != 3 or min(case_weights) < 0 or sum(case_weights) <= 0:
            raise ValueError(
                f'case_weights is {case_weights}; give three non-negative weights (as written, Title, '
                f'UPPER), not all zero'
            )
        self.charset = charset
        self._charset_chars = frozenset(charset)
        self.case_sensitive = not is_lowercase_charset(charset)
        self.cfg = cfg if cfg is not None else RenderConfig()
        self.seed = seed
        self.random_ratio = random_ratio
        self.max_length = max_length
        self.random_length = (random_length[0], min(random_length[1], max_length))
        self.case_weights = np.asarray(case_weights, np.float64) / sum(case_weights)
        self.words = self._load_words(words) if random_ratio < 1.0 else ()
        self.fonts = self._load_fonts(fonts)
        self._font_weights = self._family_balanced_weights(self.fonts)
        # _drawable[f, j]: font f draws character j of _drawable_chars (the charset plus its case variants).
        self._drawable_chars = ''.join(sorted(set().union(*(f.chars for f in self.fonts))))
        self._char_column = {c: j for j, c in enumerate(self._drawable_chars)}
        self._drawable = np.array([[c in f.chars for c in self._drawable_chars] for f in self.fonts])
        # Per font, the charset characters it draws, in charset order: the alphabet of its random strings.
        self._random_alphabets = [np.array([c for c in charset if c in f.chars]) for f in self.fonts]

    def sample(self, index: int) -> tuple[Image.Image, str, list[list[float]]]:
        """Sample ``index``: the RGB image, its label and one ``[x0, y0, x1, y1]`` box per label character."""
        rng = np.random.default_rng([self.seed, index])
        plan = self._plan(rng)
        image, boxes = render_word(plan.text, plan.font, rng, self.cfg)
        return image, plan.label, boxes

    def plan(self, index: int) -> SamplePlan:
        """The text, label and font that :meth:`sample` uses for ``index``, without rendering."""
        return self._plan(np.random.default_rng([self.seed, index]))

    def _plan(self, rng: np.random.Generator) -> SamplePlan:
        if self.words and rng.random() >= self.random_ratio:
            for _ in range(_WORD_TRIES):
                text = self._vary_case(self.words[rng.integers(len(self.words))], rng)
                candidates = self._fonts_covering(text)
                if candidates.size:
                    font = self.fonts[self._pick_font(candidates, rng)]
                    return SamplePlan(text, label_for(text, self.case_sensitive), font)
        font = self._pick_font(np.flatnonzero([a.size > 0 for a in self._random_alphabets]), rng)
        alphabet = self._random_alphabets[font]
        text = ''.join(alphabet[rng.integers(len(alphabet), size=rng.integers(*self.random_length, endpoint=True))])
        if not self.case_sensitive:
            varied = self._vary_case(text, rng)
            text = varied if self.fonts[font].covers(varied) else text
        return SamplePlan(text, label_for(text, self.case_sensitive), self.fonts[font])

    def _vary_case(self, word: str, rng: np.random.Generator) -> str:
        form = rng.choice(3, p=self.case_weights)
        varied = word if form == 0 else word[:1].upper() + word[1:] if form == 1 else word.upper()
        drawable = len(varied) == len(word) and all(c in self._char_column for c in varied)
        return varied if drawable and self._charset_chars.issuperset(label_for(varied, self.case_sensitive)) else word

    def _fonts_covering(self, text: str) -> np.ndarray:
        columns = [self._char_column.get(c) for c in set(text)]
        if None in columns:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self._drawable[:, columns].all(axis=1))

    def _pick_font(self, candidates: np.ndarray, rng: np.random.Generator) -> int:
        weights = self._font_weights[candidates]
        return int(candidates[rng.choice(len(candidates), p=weights / weights.sum())])

    def _load_words(self, words: str | os.PathLike | Iterable[str] | None) -> tuple[str, ...]:
        if words is None:
            source, raw = 'the built-in English word list', english_words()
        elif isinstance(words, (str, os.PathLike)):
            source, raw = f'word list {words}', read_word_list(words)
        else:
            source, raw = 'the given words', list(words)
        usable = words_for_charset(raw, self.charset, self.case_sensitive, self.max_length)
        if not usable:
            raise ValueError(
                f'{source} has no word of 1 to {self.max_length} characters from the charset '
                f'{self.charset!r} ({len(raw)} words read); give other words or set random_ratio=1 '
                f'(--random-ratio 1) to draw random strings only'
            )
        log.info('%d of %d words from %s fit the charset', len(usable), len(raw), source)
        return usable

    def _load_fonts(self, fonts: Iterable[str | os.PathLike] | None) -> list[FontFace]:
        wanted = set(self.charset)
        if not self.case_sensitive:
            wanted |= {c.upper() for c in self.charset if len(c.upper()) == 1}
        usable = []
        for face in load_font_faces(fonts):
            face = face.restricted_to(wanted)
            if self.case_sensitive and not face.shows_case:
                # Lowercase drawn as small capitals would be read as uppercase: draw only uppercase with it.
                face = face.restricted_to(c for c in face.chars if not (c.islower() and c.upper() != c))
            if face.chars:
                usable.append(face)
        if not usable:
            raise ValueError(
                f'no font draws any character of the charset {self.charset!r}; pass fonts (--fonts DIR) that cover it'
            )
        missing = set(self.charset) - set().union(*(f.chars for f in usable))
        if missing:
            log.warning('no font draws %s; these characters will not appear', ''.join(sorted(missing)))
        return usable

    @staticmethod
    def _family_balanced_weights(fonts: list[FontFace]) -> np.ndarray:
        faces_per_family = Counter(f.family for f in fonts)
        return np.array([1.0 / faces_per_family[f.family] for f in fonts])
