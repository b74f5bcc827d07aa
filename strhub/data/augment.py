"""Training-time augmentation of word crops (PIL in, PIL out), without imgaug.

The default policy is RandAugment-style: each call picks ``num_ops`` distinct ops from a pool of photometric and
geometric ops that keep text legible, then applies each *extra* op (blur, noise, JPEG, warps) independently with
its own probability. Magnitudes use the RandAugment scale 0..10; every op maps it to its own strength.

Randomness comes from Python's ``random`` module unless a ``random.Random`` is passed as ``rng``. PyTorch's
DataLoader reseeds ``random`` in each worker, so workers draw different augmentations, and ``random.seed(n)``
makes a run repeatable. Ops that need NumPy draw a NumPy generator seeded from the same source.

Every op is registered by name in :data:`AUGMENT_OPS`, so a model can assemble its own policy from
:class:`AugmentOp` and :class:`RandomOps`, e.g. MGP-STR's "3 random groups, image left intact half the time"::

    groups = [RandomOps([AugmentOp(n, 5) for n in names], num_ops=1) for names in op_groups]
    policy = AugmentPipeline([RandomOps(groups, num_ops=3, probability=0.5)])

which is what the config's ``groups`` setting builds (STRAug-style groups, see :class:`AugmentConfig`).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

MAX_MAGNITUDE = 10.0

# Full-strength (magnitude 10) limits of the ops; chosen so that a word stays inside a 32x128 crop and legible.
MAX_ROTATE_DEG = 15.0  # rotation without expanding the canvas clips the ends of wide crops beyond this
MAX_SHEAR_X = 0.5  # horizontal shift per pixel of height, i.e. italic slant
MAX_SHEAR_Y = 0.2
MAX_TRANSLATE_X = 0.1  # fraction of the width
MAX_TRANSLATE_Y = 0.2  # fraction of the height
MAX_ENHANCE_DELTA = 0.9  # colour/contrast/brightness/sharpness factor range 1 +- this
MAX_POSTERIZE_BITS_DROPPED = 4
MAX_BLUR_SIGMA = 0.08  # Gaussian blur radius as a fraction of the height
MAX_MOTION_LENGTH = 0.4  # motion-blur streak length as a fraction of the height
MAX_NOISE_STD = 0.12  # Gaussian noise std as a fraction of the 0..255 range
POISSON_PHOTONS_RANGE = (3000.0, 10.0)  # photons at full white, from magnitude 0 to 10: fewer photons, more noise
JPEG_QUALITY_RANGE = (95, 5)  # from magnitude 0 to 10
MAX_PERSPECTIVE = 0.2  # corner displacement as a fraction of the width/height
MAX_CURVE_AMPLITUDE = 0.25  # vertical displacement as a fraction of the height
CURVE_STRIPS = 32  # the curve is drawn piecewise-linearly over this many vertical strips
MAX_GRID_LINES = 8  # lines per direction of the grid pattern
MAX_FOG = 0.6  # strongest blend of the fog towards white
FOG_CELLS = (3, 6)  # (rows, columns) of the random field that is smoothed into fog patches


class RandomSource(Protocol):
    """``random.Random`` or the ``random`` module itself (its global generator)."""

    def random(self) -> float: ...
    def uniform(self, a: float, b: float) -> float: ...
    def gauss(self, mu: float, sigma: float) -> float: ...
    def sample(self, population: Sequence, k: int) -> list: ...
    def getrandbits(self, k: int) -> int: ...


# An op takes an RGB image, a strength in [0, 1] (magnitude / MAX_MAGNITUDE) and a random source, and returns an
# RGB image of the same size.
OpFunction = Callable[[Image.Image, float, RandomSource], Image.Image]
AUGMENT_OPS: dict[str, OpFunction] = {}


def register_op(name: str) -> Callable[[OpFunction], OpFunction]:
    """Decorator adding an op to :data:`AUGMENT_OPS` under ``name``."""

    def add(fn: OpFunction) -> OpFunction:
        if name in AUGMENT_OPS:
            raise ValueError(f'augmentation op {name!r} is already registered')
        AUGMENT_OPS[name] = fn
        return fn

    return add


def get_op(name: str) -> OpFunction:
    """The registered op called ``name``; an unknown name raises a ``KeyError`` listing the valid ones."""
    try:
        return AUGMENT_OPS[name]
    except KeyError:
        raise KeyError(f'unknown augmentation op {name!r}; valid ops: {", ".join(sorted(AUGMENT_OPS))}') from None


def _signed(value: float, rng: RandomSource) -> float:
    return value if rng.random() < 0.5 else -value


def _numpy_rng(rng: RandomSource) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(64))


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    """Mean colour of the outermost pixels: a fill for uncovered areas that blends with the crop's background."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in border.mean(axis=0).round())


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    """Resamples ``image`` where output pixel (x, y) reads input (a x + b y + c, d x + e y + f)."""
    return image.transform(
        image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC, fillcolor=_border_colour(image)
    )


# Photometric ops.


@register_op('auto_contrast')
def auto_contrast(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Stretches each channel to the full range (strength is ignored)."""
    return ImageOps.autocontrast(image)


@register_op('equalize')
def equalize(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Histogram equalisation (strength is ignored)."""
    return ImageOps.equalize(image)


@register_op('invert')
def invert(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Negative image: dark-on-light text becomes light-on-dark (strength is ignored)."""
    return ImageOps.invert(image)


@register_op('posterize')
def posterize(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Drops up to 4 low bits per channel."""
    return ImageOps.posterize(image, 8 - math.ceil(strength * MAX_POSTERIZE_BITS_DROPPED))


@register_op('solarize')
def solarize(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Inverts pixels above a threshold that falls from 256 to 0 as strength grows."""
    return ImageOps.solarize(image, round(256 * (1 - strength)))


def _enhance(enhancer: Callable[[Image.Image], Any], image: Image.Image, strength: float, rng: RandomSource):
    return enhancer(image).enhance(1 + _signed(strength * MAX_ENHANCE_DELTA, rng))


@register_op('color')
def color(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Scales saturation up or down."""
    return _enhance(ImageEnhance.Color, image, strength, rng)


@register_op('contrast')
def contrast(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Scales contrast up or down."""
    return _enhance(ImageEnhance.Contrast, image, strength, rng)


@register_op('brightness')
def brightness(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Scales brightness up or down."""
    return _enhance(ImageEnhance.Brightness, image, strength, rng)


@register_op('sharpness')
def sharpness(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Sharpens or softens."""
    return _enhance(ImageEnhance.Sharpness, image, strength, rng)


# Geometric ops. Uncovered areas are filled with the crop's border colour, not black, so they do not look like
# strokes.


@register_op('rotate')
def rotate(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Rotates about the centre by up to +-15 degrees."""
    angle = _signed(strength * MAX_ROTATE_DEG, rng)
    return image.rotate(angle, Image.Resampling.BICUBIC, fillcolor=_border_colour(image))


@register_op('shear_x')
def shear_x(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Slants text left or right (about the middle row, so the word stays centred)."""
    shear = _signed(strength * MAX_SHEAR_X, rng)
    return _affine(image, (1, shear, -shear * image.height / 2, 0, 1, 0))


@register_op('shear_y')
def shear_y(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Tilts the baseline (about the middle column)."""
    shear = _signed(strength * MAX_SHEAR_Y, rng)
    return _affine(image, (1, 0, 0, shear, 1, -shear * image.width / 2))


@register_op('translate_x')
def translate_x(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Shifts horizontally by up to 10% of the width."""
    return _affine(image, (1, 0, _signed(strength * MAX_TRANSLATE_X * image.width, rng), 0, 1, 0))


@register_op('translate_y')
def translate_y(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Shifts vertically by up to 20% of the height."""
    return _affine(image, (1, 0, 0, 0, 1, _signed(strength * MAX_TRANSLATE_Y * image.height, rng)))


@register_op('perspective')
def perspective(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Moves each corner independently by up to 20% of the width/height, as seen from an oblique camera."""
    w, h = image.size
    dx, dy = strength * MAX_PERSPECTIVE * w, strength * MAX_PERSPECTIVE * h
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    sources = [(x + rng.uniform(-dx, dx), y + rng.uniform(-dy, dy)) for x, y in corners]
    # Solve for the 8 coefficients mapping output corners to the displaced input corners:
    # X = (a x + b y + c) / (g x + h y + 1), Y = (d x + e y + f) / (g x + h y + 1).
    rows, targets = [], []
    for (x, y), (sx, sy) in zip(corners, sources, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -sx * x, -sx * y])
        rows.append([0, 0, 0, x, y, 1, -sy * x, -sy * y])
        targets += [sx, sy]
    coefficients = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(targets, dtype=np.float64))
    return image.transform(
        image.size,
        Image.Transform.PERSPECTIVE,
        tuple(coefficients.tolist()),
        Image.Resampling.BICUBIC,
        fillcolor=_border_colour(image),
    )


@register_op('curve')
def curve(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Bends the text line: a sinusoidal wave or an arc (up or down) of vertical displacement along x.

    Each column is also squeezed vertically by the amplitude, so the whole word stays inside the crop.
    """
    w, h = image.size
    amplitude = strength * MAX_CURVE_AMPLITUDE * h
    if rng.random() < 0.5:
        cycles, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * math.pi)

        def profile(u: float) -> float:
            return math.sin(2 * math.pi * cycles * u + phase)
    else:
        sign = _signed(1.0, rng)

        def profile(u: float) -> float:
            return sign * (1 - 2 * (2 * u - 1) ** 2)

    squeeze = h / (h - 2 * amplitude)

    def input_rows(x: float) -> tuple[float, float]:
        offset = amplitude + amplitude * profile(x / w)
        return -offset * squeeze, (h - offset) * squeeze

    edges = np.linspace(0, w, min(CURVE_STRIPS, w) + 1).round().astype(int).tolist()
    mesh = []
    for x0, x1 in zip(edges[:-1], edges[1:], strict=True):
        (top0, bottom0), (top1, bottom1) = input_rows(x0), input_rows(x1)
        mesh.append(((x0, 0, x1, h), (x0, top0, x0, bottom0, x1, bottom1, x1, top1)))
    return image.transform(
        image.size, Image.Transform.MESH, mesh, Image.Resampling.BICUBIC, fillcolor=_border_colour(image)
    )


# Degradations: blur, noise and compression.


@register_op('gaussian_blur')
def gaussian_blur(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Gaussian blur of radius up to 8% of the height (2.6 px on a 32 px crop)."""
    return image.filter(ImageFilter.GaussianBlur(strength * MAX_BLUR_SIGMA * image.height))


@register_op('motion_blur')
def motion_blur(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Averages copies shifted along a random direction: a streak up to 40% of the height long."""
    length = strength * MAX_MOTION_LENGTH * image.height
    angle = rng.uniform(0, math.pi)
    steps = np.linspace(-length / 2, length / 2, max(2, math.ceil(length) + 1))
    shifts = sorted({(round(t * math.cos(angle)), round(t * math.sin(angle))) for t in steps})
    pad = math.ceil(length / 2)
    pixels = np.pad(np.asarray(image, dtype=np.float32), ((pad, pad), (pad, pad), (0, 0)), mode='edge')
    h, w = image.height, image.width
    total = sum(pixels[pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dx, dy in shifts)
    return Image.fromarray((total / len(shifts)).round().astype(np.uint8))


@register_op('gaussian_noise')
def gaussian_noise(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Adds per-pixel Gaussian noise of std up to 12% of the range."""
    pixels = np.asarray(image, dtype=np.float32)
    noise = _numpy_rng(rng).normal(0.0, strength * MAX_NOISE_STD * 255, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


@register_op('poisson_noise')
def poisson_noise(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Photon (shot) noise: brighter pixels get more absolute noise, as from a real sensor in low light."""
    start, end = POISSON_PHOTONS_RANGE
    photons = start * (end / start) ** strength
    pixels = np.asarray(image, dtype=np.float64) / 255
    noisy = _numpy_rng(rng).poisson(pixels * photons) / photons
    return Image.fromarray(np.clip(noisy * 255, 0, 255).round().astype(np.uint8))


@register_op('jpeg')
def jpeg(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Re-encodes as JPEG at a quality that falls from 95 to 5 as strength grows."""
    best, worst = JPEG_QUALITY_RANGE
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=round(best + (worst - best) * strength))
    with Image.open(buffer) as compressed:
        return compressed.convert('RGB')


# Pattern and weather ops (STRAug's groups of the same names).


@register_op('grid')
def grid(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Evenly spaced 1-pixel lines, vertical, horizontal or both, up to 8 per direction; dark on a light crop and
    light on a dark one."""
    w, h = image.size
    count = 1 + round(strength * (MAX_GRID_LINES - 1))
    pick = rng.random()
    colour = (0, 0, 0) if sum(_border_colour(image)) > 3 * 127 else (255, 255, 255)
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for i in range(1, count + 1):
        if pick < 2 / 3:
            x = round(i * (w - 1) / (count + 1))
            draw.line((x, 0, x, h - 1), fill=colour)
        if pick >= 1 / 3:
            y = round(i * (h - 1) / (count + 1))
            draw.line((0, y, w - 1, y), fill=colour)
    return image


@register_op('fog')
def fog(image: Image.Image, strength: float, rng: RandomSource) -> Image.Image:
    """Blends towards white through smooth random patches, by up to 60%."""
    cells = (_numpy_rng(rng).random(FOG_CELLS) * 255).astype(np.uint8)
    field = Image.fromarray(cells).resize(image.size, Image.Resampling.BICUBIC)
    alpha = strength * MAX_FOG * (0.5 + 0.5 * np.asarray(field, dtype=np.float32)[..., None] / 255)
    pixels = np.asarray(image, dtype=np.float32)
    return Image.fromarray((pixels * (1 - alpha) + 255 * alpha).round().clip(0, 255).astype(np.uint8))


Augment = Callable[..., Image.Image]  # called as augment(image) or augment(image, rng)


class AugmentOp:
    """A registered op at a fixed magnitude (0..10), applied with ``probability``.

    ``magnitude_std`` > 0 jitters the magnitude per call (clipped to 0..10), as in timm's RandAugment.
    """

    def __init__(self, name: str, magnitude: float, probability: float = 1.0, magnitude_std: float = 0.0) -> None:
        self.fn = get_op(name)
        _check_range('magnitude', magnitude, 0, MAX_MAGNITUDE)
        _check_range('probability', probability, 0, 1)
        _check_range('magnitude_std', magnitude_std, 0, math.inf)
        self.name, self.magnitude, self.probability, self.magnitude_std = name, magnitude, probability, magnitude_std

    def __call__(self, image: Image.Image, rng: RandomSource | None = None) -> Image.Image:
        rng = random if rng is None else rng
        if self.probability < 1 and rng.random() >= self.probability:
            return image
        magnitude = self.magnitude
        if self.magnitude_std > 0:
            magnitude = min(max(rng.gauss(magnitude, self.magnitude_std), 0.0), MAX_MAGNITUDE)
        return self.fn(image, magnitude / MAX_MAGNITUDE, rng)

    def __repr__(self) -> str:
        return (
            f'AugmentOp({self.name!r}, magnitude={self.magnitude}, probability={self.probability}, '
            f'magnitude_std={self.magnitude_std})'
        )


class RandomOps:
    """Applies ``num_ops`` distinct augmentations drawn from ``ops``, in random order.

    With ``probability`` < 1, the image is left intact the rest of the time. Members can be any augmentation
    taking ``(image, rng)``, including another :class:`RandomOps` (to pick one op per group).
    """

    def __init__(self, ops: Sequence[Augment], num_ops: int, probability: float = 1.0) -> None:
        if not ops:
            raise ValueError('RandomOps needs at least one op to choose from')
        if not 0 <= num_ops <= len(ops):
            raise ValueError(f'num_ops={num_ops} must be between 0 and the number of ops ({len(ops)})')
        _check_range('probability', probability, 0, 1)
        self.ops, self.num_ops, self.probability = list(ops), num_ops, probability

    def __call__(self, image: Image.Image, rng: RandomSource | None = None) -> Image.Image:
        rng = random if rng is None else rng
        if self.probability < 1 and rng.random() >= self.probability:
            return image
        for op in rng.sample(self.ops, self.num_ops):
            image = op(image, rng)
        return image

    def __repr__(self) -> str:
        return f'RandomOps({self.ops!r}, num_ops={self.num_ops}, probability={self.probability})'


class AugmentPipeline:
    """Converts to RGB, then runs each stage in order. Picklable, so DataLoader workers can use it."""

    def __init__(self, stages: Sequence[Augment]) -> None:
        self.stages = list(stages)

    def __call__(self, image: Image.Image, rng: RandomSource | None = None) -> Image.Image:
        """Augments one image; the output is RGB and of the input's size."""
        rng = random if rng is None else rng
        if image.mode != 'RGB':
            image = image.convert('RGB')
        for stage in self.stages:
            image = stage(image, rng)
        return image

    def __repr__(self) -> str:
        return f'AugmentPipeline({self.stages!r})'


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f'{name}={value} is out of range: it must be within [{low}, {high}]')


DEFAULT_POOL_OPS = (
    'auto_contrast', 'equalize', 'invert', 'posterize', 'solarize', 'color', 'contrast', 'brightness', 'sharpness',
    'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y',
)  # fmt: skip
DEFAULT_EXTRA_OPS = {
    'gaussian_blur': 0.1, 'motion_blur': 0.1, 'gaussian_noise': 0.1, 'poisson_noise': 0.05, 'jpeg': 0.1,
    'perspective': 0.1, 'curve': 0.1,
}  # fmt: skip


@dataclass
class ExtraOpConfig:
    """An extra op's chance per image and its magnitude (None: the policy's ``magnitude``)."""

    probability: float
    magnitude: float | None = None


@dataclass
class AugmentConfig:
    """The default augmentation policy; see the module docstring.

    Attributes:
        enabled: False builds no augmentation at all (validation and test).
        num_ops: how many ops of ``ops`` each image gets.
        magnitude: strength on the 0..10 RandAugment scale.
        magnitude_std: per-call Gaussian jitter of the magnitude.
        op_probability: chance that each of the ``num_ops`` chosen ops is really applied.
        ops: the pool that ``num_ops`` are drawn from (names in :data:`AUGMENT_OPS`).
        groups: group name -> op names. When given, ``ops`` is not used: each image gets ``num_ops`` distinct
            groups and one op of each (STRAug / MGP-STR), and ``op_probability`` is the chance that an image is
            augmented at all.
        extra_ops: op name -> :class:`ExtraOpConfig` (or just its probability): each applied independently
            after the pool ops. Giving it replaces the default set; a probability of 0 turns one off.
    """

    enabled: bool = True
    num_ops: int = 3
    magnitude: float = 5.0
    magnitude_std: float = 0.5
    op_probability: float = 0.5
    ops: Sequence[str] = DEFAULT_POOL_OPS
    extra_ops: dict[str, ExtraOpConfig | float] = field(default_factory=lambda: dict(DEFAULT_EXTRA_OPS))
    groups: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self) -> None:
        self.ops = tuple(self.ops)
        self.extra_ops = {name: _extra_op_config(name, value) for name, value in dict(self.extra_ops).items()}
        _check_range('magnitude', self.magnitude, 0, MAX_MAGNITUDE)
        _check_range('magnitude_std', self.magnitude_std, 0, math.inf)
        _check_range('op_probability', self.op_probability, 0, 1)
        if self.groups is not None:
            self.groups = {name: tuple(ops) for name, ops in dict(self.groups).items()}
            empty = sorted(name for name, ops in self.groups.items() if not ops)
            if not self.groups or empty:
                raise ValueError(
                    f'augmentation groups must be at least one group of at least one op each (empty: {empty}); '
                    'leave groups unset to draw ops from the op pool'
                )
        for name in (*self.ops, *self.extra_ops, *(op for ops in (self.groups or {}).values() for op in ops)):
            get_op(name)
        pool, what = (self.groups, 'number of groups') if self.groups else (self.ops, 'size of the op pool')
        if not 0 <= self.num_ops <= len(pool):
            raise ValueError(f'num_ops={self.num_ops} must be between 0 and the {what} ({len(pool)})')

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AugmentConfig:
        """Builds a config from a plain or OmegaConf mapping; unknown keys are an error naming the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown augmentation setting(s) {unknown}; valid settings: {sorted(known)}')
        return cls(**values)


def _extra_op_config(name: str, value: ExtraOpConfig | Mapping[str, Any] | float) -> ExtraOpConfig:
    if isinstance(value, ExtraOpConfig):
        extra = value
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {'probability', 'magnitude'})
        if unknown or 'probability' not in value:
            raise ValueError(
                f'extra op {name!r}: expected {{probability: P, magnitude: M (optional)}}, got {dict(value)}'
            )
        extra = ExtraOpConfig(float(value['probability']), value.get('magnitude'))
    else:
        extra = ExtraOpConfig(float(value))
    _check_range(f'extra op {name!r} probability', extra.probability, 0, 1)
    if extra.magnitude is not None:
        _check_range(f'extra op {name!r} magnitude', extra.magnitude, 0, MAX_MAGNITUDE)
    return extra


def build_augmentation(cfg: AugmentConfig | Mapping[str, Any] | None) -> AugmentPipeline | None:
    """The training augmentation described by ``cfg``, or None when it is None or disabled.

    The result maps a PIL image to an RGB PIL image of the same size; call it as ``aug(image)`` (global
    ``random``) or ``aug(image, rng)`` with a ``random.Random``.
    """
    if cfg is None:
        return None
    if not isinstance(cfg, AugmentConfig):
        cfg = AugmentConfig.from_dict(cfg)
    if not cfg.enabled:
        return None
    stages = []
    if cfg.groups and cfg.num_ops > 0:
        groups = [
            RandomOps([AugmentOp(name, cfg.magnitude, magnitude_std=cfg.magnitude_std) for name in names], 1)
            for names in cfg.groups.values()
        ]
        stages.append(RandomOps(groups, cfg.num_ops, probability=cfg.op_probability))
    elif cfg.num_ops > 0:
        pool = [AugmentOp(name, cfg.magnitude, cfg.op_probability, cfg.magnitude_std) for name in cfg.ops]
        stages.append(RandomOps(pool, cfg.num_ops))
    for name, extra in cfg.extra_ops.items():
        magnitude = cfg.magnitude if extra.magnitude is None else extra.magnitude
        stages.append(AugmentOp(name, magnitude, extra.probability, cfg.magnitude_std))
    return AugmentPipeline(stages)
