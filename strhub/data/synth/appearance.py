"""Colours, backgrounds, text effects and camera degradations for the renderer.

Images are float32 (h, w, 3) arrays on the 0-255 scale until :func:`degrade` returns the final uint8 image.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from strhub.data.synth.config import RenderConfig

_BLACK = np.zeros(3, np.float32)
_WHITE = np.full(3, 255.0, np.float32)
_COLOUR_TRIES = 12


def relative_luminance(rgb: Sequence[float]) -> float:
    """WCAG relative luminance in [0, 1] of an sRGB colour on the 0-255 scale."""
    linear = [c / 3294.6 if c <= 10.31475 else ((c / 255.0 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG contrast ratio between two colours: 1 (identical) to 21 (black on white)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


@dataclass
class Palette:
    """The colours of one sample: the background blends ``background`` (2, 3); text and outline are (3,)."""

    background: np.ndarray
    text: np.ndarray
    outline: np.ndarray


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour, more often muted than vivid (saturation is skewed low, as in street scenes)."""
    hue, saturation, value = rng.random(), rng.random() ** 2, rng.random()
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255.0


def choose_palette(rng: np.random.Generator, cfg: RenderConfig, varied: bool) -> Palette:
    """Random colours whose text contrasts by at least ``cfg.min_contrast`` with both background colours.

    ``varied`` backgrounds blend two colours up to ``cfg.background_variation`` apart; otherwise both are equal.
    """
    for _ in range(100):
        base = random_colour(rng)
        other = base
        if varied:
            direction = rng.normal(size=3)
            step = direction / (np.linalg.norm(direction) + 1e-6) * rng.uniform(0.3, 1.0) * cfg.background_variation
            other = np.clip(base + step, 0.0, 255.0).astype(np.float32)
        text = _contrasting_colour(rng, base, other, cfg.min_contrast)
        if text is not None:
            # Below a luminance of about 0.18 white contrasts more with the text than black does.
            outline = _WHITE if relative_luminance(text) < 0.18 else _BLACK
            return Palette(np.stack([base, other]), text, outline.copy())
    return Palette(np.stack([_WHITE, _WHITE]), _BLACK.copy(), _WHITE.copy())


def _contrasting_colour(
    rng: np.random.Generator, base: np.ndarray, other: np.ndarray, min_contrast: float
) -> np.ndarray | None:
    """A random colour contrasting with both background colours (the darker and lighter one decide)."""
    luminances = relative_luminance(base), relative_luminance(other)
    darkest, lightest = min(luminances) + 0.05, max(luminances) + 0.05
    # Text must be darker than the darkest or lighter than the lightest background by the ratio.
    for _ in range(_COLOUR_TRIES):
        colour = random_colour(rng)
        luminance = relative_luminance(colour) + 0.05
        if darkest / luminance >= min_contrast or luminance / lightest >= min_contrast:
            return colour
    # Black or white reaches about 4.6 against any single colour, so this fallback rarely fails.
    black_contrast, white_contrast = darkest / 0.05, 1.05 / lightest
    best, contrast = (_BLACK, black_contrast) if black_contrast >= white_contrast else (_WHITE, white_contrast)
    return best.copy() if contrast >= min_contrast else None


def make_background(rng: np.random.Generator, kind: str, palette: Palette, height: int, width: int) -> np.ndarray:
    """A (height, width, 3) background of the given kind blending the palette's two background colours."""
    base, other = palette.background
    if kind == 'solid':
        return np.broadcast_to(base, (height, width, 3)).copy()
    if kind == 'gradient':
        angle = rng.uniform(0.0, 2.0 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        weight = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    elif kind == 'clouds':
        weight = _smooth_noise(rng, height, width, cell=rng.uniform(0.5, 1.5) * height)
    elif kind == 'grain':
        weight = _smooth_noise(rng, height, width, cell=rng.uniform(1.5, 4.0))
    else:
        raise ValueError(f'unknown background kind {kind!r}')
    return base + (other - base) * weight[..., None]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Random values in [0, 1] on a grid of ``cell``-pixel spacing, smoothly interpolated to (height, width)."""
    grid_h, grid_w = max(2, round(height / cell) + 1), max(2, round(width / cell) + 1)
    coarse = Image.fromarray(rng.random((grid_h, grid_w), dtype=np.float32))
    return np.clip(np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)), 0.0, 1.0)


def add_clutter(rng: np.random.Generator, image: np.ndarray, palette: Palette) -> np.ndarray:
    """Faint straight lines across the background, like the edges of signs or cables."""
    height, width = image.shape[:2]
    lines = Image.new('L', (width, height))
    draw = ImageDraw.Draw(lines)
    for _ in range(rng.integers(1, 4)):
        (x0, x1), (y0, y1) = rng.uniform(0, width, 2), rng.uniform(0, height, 2)
        if rng.random() < 0.5:
            y0, y1 = rng.choice([0, height]), rng.choice([0, height])
        draw.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(1, max(2, height // 12) + 1)))
    colour = palette.background[1] + (palette.text - palette.background[1]) * rng.uniform(0.2, 0.45)
    return blend(image, np.asarray(lines), colour)


def blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """Paints ``colour`` over ``image`` (h, w, 3) through the (h, w) uint8 coverage ``alpha``."""
    weight = alpha.astype(np.float32)[..., None] * (opacity / 255.0)
    return image + (colour - image) * weight


def add_outline(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray, thickness: int) -> np.ndarray:
    """Paints a border of ``thickness`` pixels around the glyphs (before the glyphs themselves are painted)."""
    grown = Image.fromarray(alpha).filter(ImageFilter.MaxFilter(2 * thickness + 1))
    return blend(image, np.asarray(grown), colour)


def add_shadow(rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Paints a soft dark copy of the glyphs offset by one or two pixels."""
    dx, dy = rng.integers(-2, 3), rng.integers(1, 3)
    shifted = np.zeros_like(alpha)
    height, width = alpha.shape
    shifted[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = alpha[
        max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    soft = np.asarray(Image.fromarray(shifted).filter(ImageFilter.GaussianBlur(1.0)))
    return blend(image, soft, _BLACK, opacity=rng.uniform(0.4, 0.8))


def degrade(image: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> Image.Image:
    """Camera and compression damage: blur, resolution loss, sensor noise, JPEG artefacts. Returns an RGB image."""
    height, width = image.shape[:2]
    pil = Image.fromarray(_to_uint8(image))
    if rng.random() < cfg.blur_prob:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_radius)))
    if rng.random() < cfg.downsample_prob:
        scale = rng.uniform(*cfg.downsample)
        small = pil.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
        pil = small.resize((width, height), Image.Resampling.BILINEAR)
    if rng.random() < cfg.noise_prob:
        noise = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(*cfg.noise_std)
        pil = Image.fromarray(_to_uint8(np.asarray(pil, np.float32) + noise))
    if rng.random() < cfg.jpeg_prob:
        buffer = io.BytesIO()
        pil.save(buffer, format='JPEG', quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
        pil = Image.open(buffer)
        pil.load()
    return pil


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
