"""The knobs of the synthetic word renderer: sizes, probabilities and magnitudes of every effect."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

BACKGROUND_KINDS = ('solid', 'gradient', 'clouds', 'grain', 'texture', 'stripes', 'image')


def _default_background_weights() -> dict[str, float]:
    return {'solid': 1.0, 'gradient': 1.2, 'clouds': 1.2, 'grain': 0.6}


@dataclass
class RenderConfig:
    """How :func:`~strhub.data.synth.render.render_word` draws a word. Ranges are ``(low, high)``, drawn uniformly.

    Lengths given as fractions are relative to the word's ink height unless said otherwise. ``*_prob`` fields are
    the probability that a sample gets that effect.
    """

    height: int = 32
    """Height of every output image in pixels; the width follows the word's aspect ratio."""
    padding: tuple[float, float] = (0.03, 0.2)
    """Blank margin on each side of the ink, drawn separately for each side."""
    stretch: tuple[float, float] = (0.8, 1.25)
    """Horizontal scale of the word: below 1 condensed, above 1 expanded."""
    spacing_prob: float = 0.3
    char_spacing: tuple[float, float] = (-0.03, 0.25)
    """Extra space between characters, as a fraction of the font size."""

    rotation_prob: float = 0.5
    max_rotation: float = 5.0
    """Largest rotation in degrees, either way."""
    perspective_prob: float = 0.3
    max_perspective: float = 0.15
    """Largest shift of each corner of the text box for the perspective warp, as a fraction of its height."""
    curve_prob: float = 0.15
    max_curve: float = 0.35
    """Largest rise or fall of the baseline's ends relative to its middle (an arc)."""

    min_contrast: float = 3.5
    """Smallest WCAG contrast ratio between the text colour and every background colour (1 = none, 21 = max)."""
    background_weights: dict[str, float] = field(default_factory=_default_background_weights)
    """Relative frequency of each background kind: solid, gradient, clouds (smooth blotches), grain (fine noise),
    texture (multi-scale fractal noise in three colours, like stone, foliage or worn paint), stripes (panel edges,
    bricks, shutters) and image (random crops of the photos in ``background_images``)."""
    background_images: tuple[str, ...] = ()
    """Files or directories of photos (jpg/png/webp) to crop ``image`` backgrounds from, e.g. a folder of natural
    images without text; the ``image`` kind needs at least one."""
    background_variation: float = 80.0
    """Largest RGB distance between the two colours that a gradient or texture blends."""
    clutter_prob: float = 0.15
    """Probability of a few faint lines crossing the background (edges of signs, cables)."""
    outline_prob: float = 0.08
    shadow_prob: float = 0.12
    low_contrast_prob: float = 0.0
    low_contrast: float = 1.8
    """With ``low_contrast_prob``, the text only needs this contrast ratio instead of ``min_contrast`` (faded
    paint, glass, dusk)."""
    occluder_prob: float = 0.0
    """Probability of an occluder drawn over the text: a cable, a pole edge or a blob at a corner."""
    lighting_prob: float = 0.0
    lighting_strength: tuple[float, float] = (0.15, 0.5)
    """Uneven illumination: a smooth multiplicative gain of up to +-strength, sometimes with a glare spot."""
    colour_cast_prob: float = 0.0
    """Probability of a camera white-balance cast and desaturation over the whole image."""

    blur_prob: float = 0.3
    blur_radius: tuple[float, float] = (0.3, 1.0)
    """Gaussian blur radius in output pixels."""
    motion_blur_prob: float = 0.0
    motion_blur_length: tuple[int, int] = (2, 5)
    """Length in pixels (at most 5) of the straight camera-shake streak, at a random angle."""
    defocus_prob: float = 0.0
    """Probability of a disk (out-of-focus) blur of radius 1 or 2 pixels."""
    downsample_prob: float = 0.2
    downsample: tuple[float, float] = (0.4, 0.8)
    """Scale of the low-resolution copy that the image is rebuilt from (camera resolution loss)."""
    noise_prob: float = 0.4
    noise_std: tuple[float, float] = (2.0, 10.0)
    """Standard deviation of Gaussian pixel noise on the 0-255 scale."""
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        if self.height < 8:
            raise ValueError(f'RenderConfig.height is {self.height}; use at least 8 pixels')
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith('_prob') and not 0.0 <= value <= 1.0:
                raise ValueError(f'RenderConfig.{f.name} is {value}; a probability must lie in [0, 1]')
            if isinstance(value, (tuple, list)) and f.name != 'background_images':
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f'RenderConfig.{f.name} is {value}; a range is (low, high) with low <= high')
                setattr(self, f.name, tuple(value))
        unknown = set(self.background_weights) - set(BACKGROUND_KINDS)
        if unknown or sum(self.background_weights.values()) <= 0 or min(self.background_weights.values()) < 0:
            raise ValueError(
                f'RenderConfig.background_weights is {self.background_weights}; give non-negative '
                f'weights, not all zero, for kinds among {BACKGROUND_KINDS}'
            )
        self.background_images = tuple(str(p) for p in self.background_images)
        if self.background_weights.get('image', 0.0) > 0 and not self.background_images:
            raise ValueError(
                'RenderConfig.background_weights gives the image kind a weight but background_images is empty; '
                'list photo files or folders in background_images, or set its weight to 0'
            )
        if not 1 <= self.motion_blur_length[0] <= self.motion_blur_length[1] <= 5:
            raise ValueError(f'RenderConfig.motion_blur_length is {self.motion_blur_length}; use 1 <= low <= high <= 5')
        if self.min_contrast > 21.0:
            raise ValueError(f'RenderConfig.min_contrast is {self.min_contrast}; no colour pair exceeds 21')

    @classmethod
    def plain(cls, height: int = 32) -> RenderConfig:
        """Upright, undistorted text on a solid background with a fixed margin: for checks and debugging."""
        return cls(
            height=height,
            padding=(0.1, 0.1),
            stretch=(1.0, 1.0),
            spacing_prob=0.0,
            rotation_prob=0.0,
            perspective_prob=0.0,
            curve_prob=0.0,
            background_weights={'solid': 1.0},
            clutter_prob=0.0,
            outline_prob=0.0,
            shadow_prob=0.0,
            blur_prob=0.0,
            downsample_prob=0.0,
            noise_prob=0.0,
            jpeg_prob=0.0,
        )

    @classmethod
    def scene(cls, **overrides) -> RenderConfig:
        """Closer to photographed scene text than the defaults (tuned by eye against real crops, not against any
        benchmark): busier backgrounds, occluders, uneven light, stronger geometry, motion and defocus blur,
        lower resolution and heavier compression."""
        settings = dict(
            rotation_prob=0.6,
            max_rotation=8.0,
            perspective_prob=0.45,
            max_perspective=0.22,
            curve_prob=0.2,
            max_curve=0.4,
            background_weights={
                'solid': 0.6,
                'gradient': 0.8,
                'clouds': 1.0,
                'grain': 0.5,
                'texture': 1.2,
                'stripes': 0.6,
            },
            background_variation=110.0,
            min_contrast=2.5,
            low_contrast_prob=0.2,
            clutter_prob=0.3,
            outline_prob=0.1,
            shadow_prob=0.15,
            occluder_prob=0.2,
            lighting_prob=0.4,
            colour_cast_prob=0.3,
            blur_prob=0.35,
            blur_radius=(0.3, 1.3),
            motion_blur_prob=0.15,
            defocus_prob=0.1,
            downsample_prob=0.45,
            downsample=(0.3, 0.8),
            noise_prob=0.5,
            jpeg_prob=0.5,
            jpeg_quality=(15, 90),
        )
        if overrides.get('background_images'):
            settings['background_weights'] = {**settings['background_weights'], 'image': 2.0}
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def preset(cls, name: str = 'default', **overrides) -> RenderConfig:
        """A named configuration (``default``, ``plain``, ``scene``) with some fields replaced."""
        if name == 'default':
            return cls(**overrides)
        if name == 'plain':
            return dataclasses.replace(cls.plain(overrides.pop('height', 32)), **overrides)
        if name == 'scene':
            return cls.scene(**overrides)
        raise ValueError(f"unknown render preset {name!r}; valid: 'default', 'plain', 'scene'")
