"""Image preprocessing presets: what a model expects of its input images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class ResizeMode(str, Enum):
    STRETCH = 'stretch'  # resize to the target size, ignoring the aspect ratio (the usual STR choice)
    KEEP_RATIO = 'keep_ratio'  # scale to fit inside the target, pad the rest (right/bottom)


NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    'minus_one_one': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]
    'zero_one': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in 8-bit ``mode`` (``RGB`` or ``L``). Unlike ``Image.convert`` alone, high-bit-depth images are scaled,
    not clipped (a 16-bit PNG would otherwise turn all white), and transparency is laid over white (a transparent
    background would otherwise turn black)."""
    if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        values = np.asarray(img, dtype=np.float64)
        if img.mode == 'F' and values.size and values.max() <= 1.0:
            values = values * 255.0
        elif img.mode.startswith('I;16') or (values.size and values.max() > 255):
            values = values / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), 'L')
    elif img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
        rgba = img.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == mode else img.convert(mode)


@dataclass
class Preprocess:
    """Turns a PIL image into the model's input tensor (C, H, W).

    Attributes:
        img_size: (height, width) of the model input.
        resize: ``stretch`` or ``keep_ratio`` (pad with ``pad_value`` to the right and bottom).
        normalization: a name from :data:`NORMALIZATIONS`, or ``{mean: [...], std: [...]}`` in [0, 1] units.
        channels: 3 (RGB) or 1 (grayscale).
        rotation: degrees to rotate every image by (robustness tests), expanding the canvas.
    """

    img_size: Sequence[int] = (32, 128)
    resize: ResizeMode = ResizeMode.STRETCH
    normalization: str | dict = 'minus_one_one'
    channels: int = 3
    pad_value: int = 0
    rotation: float = 0.0
    interpolation: str = 'bicubic'
    _scale: Tensor = field(init=False, repr=False)
    _shift: Tensor = field(init=False, repr=False)
    _lut: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.img_size = tuple(int(s) for s in self.img_size)
        if len(self.img_size) != 2:
            raise ValueError(f'img_size must be [height, width], got {list(self.img_size)}')
        self.resize = ResizeMode(self.resize)
        if self.channels not in (1, 3):
            raise ValueError(f'channels must be 1 or 3, got {self.channels}')
        if isinstance(self.normalization, str):
            if self.normalization not in NORMALIZATIONS:
                raise ValueError(
                    f'unknown normalization {self.normalization!r}; valid: {sorted(NORMALIZATIONS)} or '
                    '{mean: [...], std: [...]}'
                )
            mean, std = NORMALIZATIONS[self.normalization]
        else:
            mean, std = tuple(self.normalization['mean']), tuple(self.normalization['std'])
        mean, std = mean[: self.channels], std[: self.channels]
        std_t, mean_t = torch.tensor(std).view(-1, 1, 1), torch.tensor(mean).view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        # uint8 -> normalised float32 by table look-up: one pass, no intermediate tensors (the cheapest per-sample
        # path on a CPU data worker). Row c holds channel c's 256 values.
        values = np.arange(256, dtype=np.float64)[None, :] / 255.0
        self._lut = ((values - np.array(mean)[:, None]) / np.array(std)[:, None]).astype(np.float32)
        self._uniform = bool(np.all(self._lut == self._lut[:1]))
        self._resample = getattr(Image.Resampling, self.interpolation.upper())

    def resize_image(self, img: Image.Image) -> Image.Image:
        """Converts the colour mode and resizes a PIL image to ``img_size`` (H, W)."""
        img = convert_mode(img, 'RGB' if self.channels == 3 else 'L')
        if self.rotation:
            img = img.rotate(self.rotation, resample=Image.Resampling.BICUBIC, expand=True)
        h, w = self.img_size
        if self.resize is ResizeMode.STRETCH:
            return img.resize((w, h), self._resample) if img.size != (w, h) else img
        new_w, new_h = self.content_size(img.width, img.height)
        canvas = Image.new(img.mode, (w, h), (self.pad_value,) * self.channels)
        canvas.paste(img.resize((new_w, new_h), self._resample), (0, 0))
        return canvas

    def content_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) that an image of this size is resized to; with ``keep_ratio`` the rest is padding."""
        h, w = self.img_size
        if self.resize is ResizeMode.STRETCH:
            return w, h
        scale = min(h / height, w / width)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def map_boxes(self, boxes: Sequence[Sequence[float]], image_size: tuple[int, int]) -> list[list[float]]:
        """``[x0, y0, x1, y1]`` boxes in pixels of an image of ``image_size`` (width, height) -> the same boxes in
        pixels of the model input (after :meth:`resize_image`), clipped to it."""
        if self.rotation:
            raise ValueError(
                f'boxes cannot follow a rotation of {self.rotation} degrees (they are axis-aligned); '
                'request boxes only without rotation'
            )
        width, height = image_size
        new_w, new_h = self.content_size(width, height)
        sx, sy = new_w / width, new_h / height
        h, w = self.img_size
        return [
            [min(max(x0 * sx, 0.0), w), min(max(y0 * sy, 0.0), h), min(max(x1 * sx, 0.0), w), min(max(y1 * sy, 0.0), h)]
            for x0, y0, x1, y1 in boxes
        ]

    def to_tensor(self, img: Image.Image) -> Tensor:
        """(H, W[, C]) uint8 PIL image -> (C, H, W) normalised float tensor."""
        arr = np.asarray(img)
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if self._uniform:
            # take() gathers straight from the strided view into a new contiguous array (measured 19 vs 31 us for
            # 3x32x128 with a contiguous copy and fancy indexing first; same values).
            return torch.from_numpy(self._lut[0].take(chw))
        chw = np.ascontiguousarray(chw)
        return torch.from_numpy(self._lut[np.arange(chw.shape[0])[:, None, None], chw])

    def __call__(self, img: Image.Image) -> Tensor:
        return self.to_tensor(self.resize_image(img))

    def denormalize(self, images: Tensor) -> Tensor:
        """Inverse of the normalisation: (..., C, H, W) -> uint8-range floats in [0, 255]."""
        return ((images - self._shift.to(images.device)) / self._scale.to(images.device)).clamp(0, 255)
