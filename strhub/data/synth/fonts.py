"""Font faces for the synthetic renderer: where they come from, which characters they can draw, cached glyphs.

Every process keeps its own caches of parsed fonts, FreeType objects and glyph bitmaps, so objects that refer to
a font carry only its path and stay cheap to pickle.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from fontTools.ttLib import TTFont, TTLibError
from PIL import ImageFont

log = logging.getLogger(__name__)

FONT_SUFFIXES = ('.ttf', '.otf')

# matplotlib's text faces. Its other bundled files are math symbol sets (STIXSize*, STIXNonUni*, cm*) whose code
# points do not draw the Unicode characters they claim, and LastResort, which draws a placeholder box for everything.
MATPLOTLIB_TEXT_FACES = (
    'DejaVuSans.ttf',
    'DejaVuSans-*.ttf',
    'DejaVuSansMono*.ttf',
    'DejaVuSerif.ttf',
    'DejaVuSerif-*.ttf',
    'STIXGeneral*.ttf',
)

_GLYPH_PROBE_SIZE = 48
# A font shows letter case when its ascenders rise above, and its descenders fall below, the x-height by more than
# this fraction of it (about 0.3-0.6 in ordinary fonts; about 0 in small-caps and all-caps fonts).
_MIN_EXTENDER_RATIO = 0.15


@dataclass(frozen=True)
class FontFace:
    """One font file and the characters it draws with a real glyph.

    ``shows_case`` is false when its lowercase letters are drawn as (small) capitals, so that an image drawn with
    it cannot tell ``word`` from ``WORD``.
    """

    path: str
    family: str
    style: str
    chars: frozenset[str]
    shows_case: bool = True

    @property
    def name(self) -> str:
        return f'{self.family} {self.style}'

    def covers(self, text: str) -> bool:
        """True when every character of ``text`` has a glyph in this face."""
        return self.chars.issuperset(text)

    def restricted_to(self, wanted: Iterable[str]) -> FontFace:
        """This face with ``chars`` cut down to the wanted characters that it draws with visible ink.

        The cmap can map a character to an empty glyph; those are dropped here (whitespace is kept, it has no ink).
        """
        kept = frozenset(
            c for c in set(wanted) & self.chars if c.isspace() or glyph(self.path, _GLYPH_PROBE_SIZE, c).ink
        )
        return replace(self, chars=kept)


class Glyph(NamedTuple):
    """A glyph bitmap cropped to its ink, placed relative to the pen position on the baseline.

    ``mask`` is (h, w) uint8 coverage; ``left``/``top`` are the offsets of its top-left corner from the pen
    position (``top`` is negative above the baseline); ``advance`` is how far the pen moves.
    """

    mask: np.ndarray
    left: int
    top: int
    advance: float

    @property
    def ink(self) -> bool:
        return self.mask.size > 0


def package_font_files() -> list[Path]:
    """The font files of installed ``font-*`` PyPI packages plus matplotlib's bundled DejaVu and STIX text faces."""
    files = []
    for dist in importlib.metadata.distributions():
        name = (dist.metadata['Name'] or '').lower()
        if name.startswith('font-') and dist.files:
            files += [Path(dist.locate_file(f)) for f in dist.files if f.suffix.lower() in FONT_SUFFIXES]
    spec = importlib.util.find_spec('matplotlib')
    if spec is not None and spec.origin is not None:
        mpl_fonts = Path(spec.origin).parent / 'mpl-data' / 'fonts' / 'ttf'
        for pattern in MATPLOTLIB_TEXT_FACES:
            files += mpl_fonts.glob(pattern)
    return sorted(set(files))


def find_font_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Font files named directly or found (recursively) in the given directories."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += [p for p in path.rglob('*') if p.suffix.lower() in FONT_SUFFIXES]
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(
                f'font path {path} does not exist; pass .ttf/.otf files or directories holding them'
            )
    return sorted(set(files))


def load_font_faces(paths: Iterable[str | os.PathLike] | None = None) -> list[FontFace]:
    """Reads the faces in ``paths`` (files or directories; default: :func:`package_font_files`).

    When a face comes as both .ttf and .otf (same family and style), only the .ttf is kept. Unreadable files are
    skipped with a warning.
    """
    files = package_font_files() if paths is None else find_font_files(paths)
    # TrueType first: FreeType hints its outlines better than CFF ones at small sizes.
    files.sort(key=lambda p: (p.suffix.lower() != '.ttf', str(p)))
    faces, seen = [], set()
    for file in files:
        face = read_font_face(str(file))
        if face is not None and (face.family, face.style) not in seen:
            seen.add((face.family, face.style))
            faces.append(face)
    if not faces:
        where = 'the installed font-* packages and matplotlib' if paths is None else ', '.join(map(str, paths))
        raise FileNotFoundError(
            f'no usable .ttf/.otf font found in {where}; install the font-* packages of '
            f'requirements/core.in or pass a directory of fonts'
        )
    return sorted(faces, key=lambda f: (f.family, f.style))


@cache
def read_font_face(path: str) -> FontFace | None:
    """Parses one font file's names and character map; None (with a warning) when it cannot be read."""
    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            # Placeholder glyph names: resolving the real ones (post/CFF tables) costs far more than the cmap itself.
            font.setGlyphOrder(['.notdef'] + [f'glyph{i}' for i in range(1, font['maxp'].numGlyphs)])
            cmap = font.getBestCmap() or {}
            family = font['name'].getBestFamilyName() or Path(path).stem
            style = font['name'].getBestSubFamilyName() or 'Regular'
    except (TTLibError, OSError, KeyError, AssertionError) as error:
        log.warning('skipping font %s: %s', path, error)
        return None
    chars = frozenset(chr(cp) for cp, glyph_name in cmap.items() if glyph_name != '.notdef')
    return FontFace(path, family, style, chars, shows_case=_shows_case(path, chars))


@lru_cache(maxsize=512)
def get_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A FreeType font object for one (file, pixel size), kept for reuse in each process.

    Opening a face takes about 0.1 ms but holds about 100 KB, and glyphs are cached separately, so not all are kept.
    """
    # Glyphs are placed one at a time, so complex text layout (raqm) would only add its per-call cost.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=65536)
def glyph(path: str, size: int, char: str) -> Glyph:
    """The bitmap and metrics of one character at one pixel size, cached (about 1.2 KB each) in each process."""
    font = get_font(path, size)
    bitmap, (offset_x, offset_y) = font.getmask2(char, mode='L', anchor='ls')
    advance = font.getlength(char)
    ink_box = bitmap.getbbox()
    if ink_box is None:
        return Glyph(np.zeros((0, 0), np.uint8), 0, 0, advance)
    x0, y0, x1, y1 = ink_box
    mask = np.asarray(bitmap, dtype=np.uint8).reshape(bitmap.size[1], bitmap.size[0])[y0:y1, x0:x1]
    return Glyph(np.ascontiguousarray(mask), offset_x + x0, offset_y + y0, advance)


def _shows_case(path: str, chars: frozenset[str]) -> bool:
    """False when lowercase letters lack ascenders and descenders, as in small-caps and all-caps fonts."""
    if not chars.issuperset('xbdhklgpqy'):
        return True
    x_height = -glyph(path, _GLYPH_PROBE_SIZE, 'x').top
    if x_height <= 0:
        return True
    ascent = np.median([-glyph(path, _GLYPH_PROBE_SIZE, c).top for c in 'bdhkl']) - x_height
    descent = np.median(
        [glyph(path, _GLYPH_PROBE_SIZE, c).top + len(glyph(path, _GLYPH_PROBE_SIZE, c).mask) for c in 'gpqy']
    )
    return min(ascent, descent) / x_height > _MIN_EXTENDER_RATIO
