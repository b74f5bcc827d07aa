"""Rendering one word image with per-character boxes.

The word is laid out glyph by glyph into a coverage mask at about its final size, optionally bent along an arc,
then carried by one projective map (stretch, rotation, perspective and the fit to the output height) straight
into the output image, so it is resampled once. Character boxes travel through the same maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from strhub.data.synth import appearance
from strhub.data.synth.config import BACKGROUND_KINDS, RenderConfig
from strhub.data.synth.fonts import FontFace, glyph
from strhub.data.synth.geometry import (
    bend_columns,
    homography_from_points,
    rotation,
    scaling,
    transform_points,
    translation,
    warp_boxes,
    warp_mask,
)

# Glyph extents measured at this size predict the font size that gives the wanted ink height.
_REFERENCE_SIZE = 64
# Font sizes above this are rounded to a ladder of steps about 8% apart, so that the glyph cache sees few distinct
# sizes; the fit to the output height absorbs the difference.
_EXACT_SIZE_LIMIT = 16
_SIZE_STEP = 1.08


@dataclass
class _Layout:
    mask: np.ndarray  # (h, w) uint8 glyph coverage
    boxes: np.ndarray  # (n, 4) per-character [x0, y0, x1, y1] in mask coordinates
    frame: np.ndarray  # (4, 2) corners of the ink plus margins, clockwise from top-left, in mask coordinates


def render_word(
    text: str, font: FontFace | str | os.PathLike, rng: np.random.Generator, cfg: RenderConfig | None = None
) -> tuple[Image.Image, list[list[float]]]:
    """Draws ``text`` with one font face as a scene-text-like RGB image of height ``cfg.height``.

    Every random choice comes from ``rng``, so the same generator state gives the same image. The font must have
    glyphs for every character (see :meth:`FontFace.covers`); this is not checked here.

    Returns the image (width follows the word) and one box per character of ``text``: ``[x0, y0, x1, y1]`` in
    pixels of the returned image, the bounding box of the character's ink carried through the geometric
    distortions, clipped to the image. A whitespace character gets the box of its advance.
    """
    if not text:
        raise ValueError('render_word needs a non-empty text')
    cfg = cfg if cfg is not None else RenderConfig()
    path = font.path if isinstance(font, FontFace) else os.fspath(font)
    layout = _lay_out(text, path, rng, cfg)
    placement, width = _place(layout.frame, rng, cfg)
    alpha = warp_mask(layout.mask, placement, width, cfg.height)
    boxes = warp_boxes(layout.boxes, placement, width, cfg.height)
    image = _paint(alpha, rng, cfg)
    return image, np.round(boxes, 2).tolist()


def _lay_out(text: str, path: str, rng: np.random.Generator, cfg: RenderConfig) -> _Layout:
    """Places the glyphs on a baseline at the font size that makes the ink about as tall as the output."""
    pad_left, pad_top, pad_right, pad_bottom = rng.uniform(*cfg.padding, size=4)
    reference = [glyph(path, _REFERENCE_SIZE, c) for c in text]
    inked = [g for g in reference if g.ink]
    if not inked:
        raise ValueError(f'{text!r} has no visible glyph in {path}')
    reference_height = max(g.top + g.mask.shape[0] for g in inked) - min(g.top for g in inked)
    size = round(_REFERENCE_SIZE * cfg.height / (1.0 + pad_top + pad_bottom) / reference_height)
    if size > _EXACT_SIZE_LIMIT:
        size = round(_EXACT_SIZE_LIMIT * _SIZE_STEP ** round(np.log(size / _EXACT_SIZE_LIMIT) / np.log(_SIZE_STEP)))
    size = max(4, size)
    glyphs = [glyph(path, size, c) for c in text]
    spacing = size * rng.uniform(*cfg.char_spacing) if rng.random() < cfg.spacing_prob else 0.0

    pens = np.concatenate([[0.0], np.cumsum([g.advance + spacing for g in glyphs])])[:-1].round().astype(int)
    ink_lefts = np.array([p + g.left for p, g in zip(pens, glyphs, strict=True)])
    inked_index = [i for i, g in enumerate(glyphs) if g.ink]
    top = min(glyphs[i].top for i in inked_index)
    bottom = max(glyphs[i].top + glyphs[i].mask.shape[0] for i in inked_index)
    left = min(ink_lefts[i] for i in inked_index)
    right = max(ink_lefts[i] + glyphs[i].mask.shape[1] for i in inked_index)
    ink_height = bottom - top

    bend = rng.uniform(-1.0, 1.0) * cfg.max_curve * ink_height if rng.random() < cfg.curve_prob else 0.0
    # One blank pixel around the ink, plus room for the ends of the arc to move into.
    origin_x, origin_y = left - 1, top - 1 - int(np.ceil(max(0.0, -bend)))
    mask = np.zeros((bottom - origin_y + 1 + int(np.ceil(max(0.0, bend))), right - origin_x + 1), np.uint8)
    boxes = np.zeros((len(text), 4))
    for i, (pen, g) in enumerate(zip(pens, glyphs, strict=True)):
        if g.ink:
            x0, y0 = ink_lefts[i] - origin_x, g.top - origin_y
            region = mask[y0 : y0 + g.mask.shape[0], x0 : x0 + g.mask.shape[1]]
            np.maximum(region, g.mask, out=region)
            boxes[i] = x0, y0, x0 + g.mask.shape[1], y0 + g.mask.shape[0]
        else:
            boxes[i] = pen - origin_x, top - origin_y, pen + g.advance - origin_x, bottom - origin_y
    frame_x0, frame_x1 = left - origin_x - pad_left * ink_height, right - origin_x + pad_right * ink_height
    frame_y0, frame_y1 = top - origin_y - pad_top * ink_height, bottom - origin_y + pad_bottom * ink_height

    if bend:
        # A parabola through the frame's ends: the baseline's middle stays, its ends move by `bend`.
        columns = np.arange(mask.shape[1]) + 0.5
        middle, half_width = (frame_x0 + frame_x1) / 2, (frame_x1 - frame_x0) / 2
        offsets = bend * ((columns - middle) / half_width) ** 2
        mask = bend_columns(mask, offsets)
        for box in boxes:
            spanned = offsets[max(0, int(box[0])) : max(int(box[0]) + 1, int(np.ceil(box[2])))]
            box[1] += spanned.min()
            box[3] += spanned.max()
        frame_y0, frame_y1 = frame_y0 + min(0.0, bend), frame_y1 + max(0.0, bend)

    frame = np.array([[frame_x0, frame_y0], [frame_x1, frame_y0], [frame_x1, frame_y1], [frame_x0, frame_y1]])
    return _Layout(mask, boxes, frame)


def _place(frame: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> tuple[np.ndarray, int]:
    """The map from mask to output coordinates (stretch, rotation, perspective, fit) and the output width."""
    centre = frame.mean(axis=0)
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation) if rng.random() < cfg.rotation_prob else 0.0
    matrix = translation(*centre) @ rotation(angle) @ scaling(rng.uniform(*cfg.stretch), 1.0) @ translation(*-centre)
    if rng.random() < cfg.perspective_prob:
        corners = transform_points(matrix, frame)
        frame_height = np.ptp(corners[:, 1])
        moved = corners + rng.uniform(-1.0, 1.0, size=(4, 2)) * cfg.max_perspective * frame_height
        matrix = homography_from_points(corners, moved) @ matrix
    placed = transform_points(matrix, frame)
    (x0, y0), (x1, y1) = placed.min(axis=0), placed.max(axis=0)
    scale = cfg.height / (y1 - y0)
    width = max(1, round((x1 - x0) * scale))
    return scaling(scale, scale) @ translation(-x0, -y0) @ matrix, width


def _paint(alpha: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> Image.Image:
    """Colours the glyph coverage over a background and applies text effects and camera damage."""
    height, width = alpha.shape
    kinds = [k for k in BACKGROUND_KINDS if cfg.background_weights.get(k, 0.0) > 0]
    weights = np.array([cfg.background_weights[k] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    contrast = cfg.low_contrast if cfg.low_contrast_prob and rng.random() < cfg.low_contrast_prob else cfg.min_contrast
    if kind == 'image':
        image = appearance.photo_background(rng, cfg.background_images, height, width)
        palette = appearance.palette_for_image(rng, image, contrast)
    else:
        palette = appearance.choose_palette(rng, cfg, varied=kind != 'solid', min_contrast=contrast)
        image = appearance.make_background(rng, kind, palette, height, width)
    if rng.random() < cfg.clutter_prob:
        image = appearance.add_clutter(rng, image, palette)
    if rng.random() < cfg.shadow_prob:
        image = appearance.add_shadow(rng, image, alpha)
    if rng.random() < cfg.outline_prob:
        image = appearance.add_outline(image, alpha, palette.outline, thickness=max(1, round(height / 32)))
    image = appearance.blend(image, alpha, palette.text)
    if cfg.occluder_prob and rng.random() < cfg.occluder_prob:
        image = appearance.add_occluder(rng, image, palette)
    if cfg.lighting_prob and rng.random() < cfg.lighting_prob:
        image = appearance.apply_lighting(rng, image, cfg.lighting_strength)
    if cfg.colour_cast_prob and rng.random() < cfg.colour_cast_prob:
        image = appearance.colour_cast(rng, image)
    return appearance.degrade(image, rng, cfg)
