"""GOT-OCR2's published prompt template and multi-crop tiling.

The model was trained on one chat layout (no chat template ships with the checkpoint)::

    <|im_start|>system\\n{SYSTEM}<|im_end|><|im_start|>user\\n<img>{<imgpad> x tokens}</img>\\n{query}<|im_end|>
    <|im_start|>assistant\\n

where the query is ``"[colour] [x1, y1, x2, y2] OCR with format upon the patch reference: "`` with each part
optional: a colour-guided and/or a box-guided region (box corners scaled to 0..1000 of the image), formatted
output (LaTeX/markdown), and a note that the image comes as tiles plus a thumbnail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

IM_START, IM_END = '<|im_start|>', '<|im_end|>'
IMG_START, IMG_END, IMG_PAD = '<img>', '</img>', '<imgpad>'
ENDOFTEXT = '<|endoftext|>'
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_PAD)
SYSTEM = 'You should follow the instructions carefully and explain your answers in detail.'
COLOURS = ('red', 'green', 'blue')
BOX_SCALE = 1000


def normalize_box(box: Sequence[float], image_size: tuple[int, int]) -> list[int]:
    """A pixel box ``[x1, y1, x2, y2]`` on an image of ``(width, height)`` -> corners in 0..1000 (truncated),
    the scale the model was trained with."""
    if len(box) != 4:
        raise ValueError(f'a box is [x1, y1, x2, y2] in pixels, got {list(box)}')
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f'box {list(box)} is empty: it needs x1 < x2 and y1 < y2')
    width, height = image_size
    return [int(x1 / width * BOX_SCALE), int(y1 / height * BOX_SCALE), int(x2 / width * BOX_SCALE),
            int(y2 / height * BOX_SCALE)]  # fmt: skip


def build_query(
    box: Sequence[int] | None = None, color: str | None = None, with_format: bool = False, crops: bool = False
) -> str:
    """The user query text. ``box`` is already in 0..1000 units (see :func:`normalize_box`)."""
    if color is not None and color not in COLOURS:
        raise ValueError(f'colour {color!r} is not one the model was trained with; valid: {list(COLOURS)}')
    parts = f'[{color}] ' if color is not None else ''
    parts += str(list(box)) if box is not None else ''
    return f'{parts} OCR{" with format" if with_format else ""}{" upon the patch reference" if crops else ""}: '


def build_prompt(
    num_image_tokens: int,
    crops: int = 1,
    box: Sequence[int] | None = None,
    color: str | None = None,
    with_format: bool = False,
) -> str:
    """The whole prompt text for an image read as ``crops`` tiles (1: no tiling) of ``num_image_tokens`` each."""
    if crops < 1:
        raise ValueError(f'crops must be >= 1, got {crops}')
    query = build_query(box, color, with_format, crops > 1)
    return (
        f'{IM_START}system\n{SYSTEM}{IM_END}{IM_START}user\n{IMG_START}{IMG_PAD * (num_image_tokens * crops)}'
        f'{IMG_END}\n{query}{IM_END}{IM_START}assistant\n'
    )


@lru_cache(maxsize=32)
def tile_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (columns, rows) grid with ``min_tiles <= columns * rows <= max_tiles``, fewest tiles first."""
    grids = [
        (c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles
    ]
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(
    image_size: tuple[int, int], tile_size: tuple[int, int], min_tiles: int, max_tiles: int
) -> tuple[int, int]:
    """The (columns, rows) grid whose aspect ratio is closest to the image's (``(width, height)``); on a tie,
    the larger grid while the image is bigger than half of the grid's area (avoids needless tiles)."""
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f'need 1 <= min_tiles <= max_tiles, got {min_tiles} and {max_tiles}')
    width, height = image_size
    tile_h, tile_w = tile_size
    ratio, area = width / height, width * height
    best, best_diff = (1, 1), float('inf')
    for columns, rows in tile_grids(min_tiles, max_tiles):
        diff = abs(ratio - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_h * tile_w * columns * rows:
            best = (columns, rows)
    return best


@dataclass(frozen=True)
class Tiling:
    """Where each tile of an image comes from: the image is resized to ``columns x rows`` tiles of ``tile_size``
    ``(height, width)``; ``boxes`` are the tiles' ``(left, top, right, bottom)`` in the resized image, row by row.
    A thumbnail of the whole image follows the tiles when there is more than one."""

    columns: int
    rows: int
    tile_size: tuple[int, int]
    thumbnail: bool

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        h, w = self.tile_size
        return [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r in range(self.rows) for c in range(self.columns)]

    @property
    def num_crops(self) -> int:
        return self.columns * self.rows + int(self.thumbnail)


def plan_tiling(
    image_size: tuple[int, int], tile_size: tuple[int, int], min_tiles: int = 1, max_tiles: int = 6
) -> Tiling:
    """The tiling of an image of ``(width, height)`` into tiles of ``(height, width)``."""
    columns, rows = choose_grid(image_size, tile_size, min_tiles, max_tiles)
    return Tiling(columns, rows, tuple(tile_size), thumbnail=columns * rows > 1)


def crop_tiles(image: Image.Image, tiling: Tiling, resample: int = Image.Resampling.BICUBIC) -> list[Image.Image]:
    """The tiles (then the thumbnail) of a PIL image, each of ``tiling.tile_size``."""
    h, w = tiling.tile_size
    resized = image.resize((w * tiling.columns, h * tiling.rows), resample)
    tiles = [resized.crop(box) for box in tiling.boxes]
    if tiling.thumbnail:
        tiles.append(image.resize((w, h), resample))
    return tiles
