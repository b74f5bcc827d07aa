"""Colours, backgrounds, text effects and camera degradations for the renderer.

Images are float32 (h, w, 3) arrays on the 0-255 scale until :func:`degrade` returns the final uint8 image.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from strhub.data.synth.config import RenderConfig

_BLACK = np.zeros(3, np.float32)
_WHITE = np.full(3, 255.0, np.float32)
_COLOUR_TRIES = 12
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


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


def choose_palette(
    rng: np.random.Generator, cfg: RenderConfig, varied: bool, min_contrast: float | None = None
) -> Palette:
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
        text = _contrasting_colour(rng, base, other, min_contrast or cfg.min_contrast)
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
    elif kind == 'texture':
        return _fractal_texture(rng, palette, height, width)
    elif kind == 'stripes':
        weight = _stripes(rng, height, width)
    else:
        raise ValueError(f'unknown background kind {kind!r}')
    return base + (other - base) * weight[..., None]


def _fractal_texture(rng: np.random.Generator, palette: Palette, height: int, width: int) -> np.ndarray:
    """Multi-octave noise (each octave half the cell size and amplitude of the previous one) mapping to a ramp of
    three colours: the palette's two plus a muted third near them, like stone, bark, foliage or worn paint."""
    cell = rng.uniform(0.6, 2.0) * height
    weight, amplitude, total = np.zeros((height, width), np.float32), 1.0, 0.0
    for _ in range(4):
        weight += amplitude * _smooth_noise(rng, height, width, cell=max(cell, 1.5))
        total += amplitude
        cell, amplitude = cell / 2, amplitude * rng.uniform(0.45, 0.7)
    weight = weight / total
    weight = np.clip((weight - weight.mean()) * rng.uniform(1.5, 3.0) + 0.5, 0.0, 1.0)
    base, other = palette.background
    middle = np.clip((base + other) / 2 + rng.normal(0, 12, 3), 0, 255).astype(np.float32)
    low = weight[..., None] < 0.5
    w2 = (weight[..., None] * 2) % 1.0
    return np.where(low, base + (middle - base) * w2, middle + (other - middle) * w2)


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Bands of one background colour on the other: panel edges, bricks, shutters (soft-edged, any angle)."""
    angle = rng.uniform(0, np.pi) if rng.random() < 0.4 else rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.05)
    period = rng.uniform(0.3, 2.0) * height
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period + rng.random()
    duty = rng.uniform(0.15, 0.6)
    sharpness = rng.uniform(0.05, 0.25)
    return np.clip(((phase % 1.0) - duty) / sharpness + 0.5, 0.0, 1.0)


_image_files: dict[tuple[str, ...], list[str]] = {}


def _background_files(sources: Sequence[str]) -> list[str]:
    key = tuple(sources)
    if key not in _image_files:
        files = []
        for source in sources:
            path = Path(source)
            if path.is_dir():
                files += sorted(str(p) for p in path.rglob('*') if p.suffix.lower() in _IMAGE_SUFFIXES)
            elif path.is_file():
                files.append(str(path))
        if not files:
            raise FileNotFoundError(
                f'no background photos ({", ".join(_IMAGE_SUFFIXES)}) found in {list(sources)}; '
                'fix RenderConfig.background_images'
            )
        _image_files[key] = files
    return _image_files[key]


def photo_background(rng: np.random.Generator, sources: Sequence[str], height: int, width: int) -> np.ndarray:
    """A random crop of a random photo from ``sources``, scaled to (height, width)."""
    files = _background_files(sources)
    with Image.open(files[rng.integers(len(files))]) as photo:
        photo = photo.convert('RGB')
        aspect = width / height
        crop_h = int(min(photo.height, photo.width / aspect) * rng.uniform(0.15, 1.0))
        crop_h = max(crop_h, 1)
        crop_w = max(1, min(photo.width, round(crop_h * aspect)))
        x0, y0 = rng.integers(photo.width - crop_w + 1), rng.integers(photo.height - crop_h + 1)
        crop = photo.crop((x0, y0, x0 + crop_w, y0 + crop_h)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(crop, np.float32)


def palette_for_image(rng: np.random.Generator, image: np.ndarray, cfg_contrast: float) -> Palette:
    """Text colours for a photo background: contrasting with its dark and light ends (10th/90th luminance)."""
    luminance = image @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    dark = image[luminance <= np.percentile(luminance, 10)].mean(axis=0)
    light = image[luminance >= np.percentile(luminance, 90)].mean(axis=0)
    text = _contrasting_colour(rng, dark, light, cfg_contrast)
    if text is None:
        text = _BLACK.copy() if relative_luminance(dark) > 0.3 else _WHITE.copy()
    outline = _WHITE if relative_luminance(text) < 0.18 else _BLACK
    return Palette(np.stack([dark, light]).astype(np.float32), text, outline.copy())


def add_occluder(rng: np.random.Generator, image: np.ndarray, palette: Palette) -> np.ndarray:
    """Something in front of the text: a thin cable across it, or a blob over a corner (never most of the word)."""
    height, width = image.shape[:2]
    mask = Image.new('L', (width, height))
    draw = ImageDraw.Draw(mask)
    if rng.random() < 0.5:
        y0, y1 = rng.uniform(-0.2, 1.2, 2) * height
        draw.line([(0, y0), (width, y1)], fill=255, width=int(rng.integers(1, max(2, height // 10) + 1)))
    else:
        radius = rng.uniform(0.2, 0.45) * height
        cx = rng.choice([0.0, width]) + rng.normal(0, radius / 2)
        cy = rng.choice([0.0, height]) + rng.normal(0, radius / 2)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8))))
    colour = random_colour(rng) if rng.random() < 0.5 else palette.text * rng.uniform(0.5, 1.0)
    return blend(image, soft, colour, opacity=rng.uniform(0.6, 1.0))


def apply_lighting(rng: np.random.Generator, image: np.ndarray, strength: tuple[float, float]) -> np.ndarray:
    """Uneven illumination: a smooth gain field, and sometimes a soft glare spot."""
    height, width = image.shape[:2]
    amount = rng.uniform(*strength)
    gain = 1.0 + amount * (2.0 * _smooth_noise(rng, height, width, cell=rng.uniform(1.0, 3.0) * height) - 1.0)
    image = image * gain[..., None]
    if rng.random() < 0.3:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.3, 1.0) * height
        glare = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2)) * rng.uniform(40, 110)
        image = image + glare[..., None]
    return np.clip(image, 0.0, 255.0)


def colour_cast(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Camera white balance and saturation: per-channel gains and a pull toward grey."""
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * rng.uniform(0.3, 1.0)
    return np.clip(image * rng.uniform(0.85, 1.15, 3).astype(np.float32), 0.0, 255.0)


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
    if rng.random() < cfg.motion_blur_prob:
        pil = pil.filter(
            _motion_kernel(rng, int(rng.integers(cfg.motion_blur_length[0], cfg.motion_blur_length[1] + 1)))
        )
    if rng.random() < cfg.defocus_prob:
        pil = pil.filter(_DEFOCUS[int(rng.integers(len(_DEFOCUS)))])
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


def _disk_kernel(radius: float) -> ImageFilter.Kernel:
    size = 5 if radius > 1.0 else 3
    ys, xs = np.mgrid[0:size, 0:size] - size // 2
    weights = (np.hypot(xs, ys) <= radius + 0.25).astype(float).ravel()
    return ImageFilter.Kernel((size, size), weights.tolist(), scale=float(weights.sum()))


_DEFOCUS = (_disk_kernel(1.0), _disk_kernel(2.0))


def _motion_kernel(rng: np.random.Generator, length: int) -> ImageFilter.Kernel:
    """A straight streak of ``length`` (<= 5) pixels at a random angle, as a 5x5 averaging kernel."""
    angle = rng.uniform(0, np.pi)
    weights = np.zeros((5, 5))
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        weights[round(2 + t * np.sin(angle)), round(2 + t * np.cos(angle))] = 1.0
    return ImageFilter.Kernel((5, 5), weights.ravel().tolist(), scale=float(weights.sum()))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
