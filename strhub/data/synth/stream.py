"""On-the-fly synthetic training data: samples are rendered in the DataLoader workers, nothing is written to disk.

:class:`SyntheticStream` is a map-style view of the generator's endless sample sequence: item ``i`` is
``SyntheticWordGenerator.sample(i)``, rendered by whichever worker the DataLoader hands ``i`` to. Its length is
virtual (:data:`STREAM_SIZE`); :class:`~strhub.data.sampling.RatioSampler` draws fresh, never-repeating indices from
it every epoch (``epoch * count + j``), so

- every epoch sees new images (the stream is endless in practice: 2**40 samples);
- a sample depends only on ``(seed, i)``, not on the number of workers or on which worker renders it, so a run is
  reproducible with any ``num_workers`` and under DDP (the sampler splits the indices between ranks);
- resuming from a checkpoint restores the epoch, hence the same indices, without storing any state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Dataset

from strhub.data.synth.config import RenderConfig
from strhub.data.synth.generator import SyntheticWordGenerator

STREAM_SIZE = 2**40
"""Virtual number of samples of a stream: far more than any training run draws."""

GENERATOR_OPTIONS = ('words', 'fonts', 'seed', 'random_ratio', 'random_length', 'case_weights')


class SyntheticStream(Dataset):
    """Training samples rendered on demand. Marked ``stream = True`` for the sampler.

    Args:
        generator: renders sample ``i`` (its seed fixes the whole stream).
        transform: applied to the PIL image (augmentation + model preprocessing), as for LMDB sources.
        return_boxes: also return the per-character boxes, mapped by ``box_transform`` (image boxes, image size).
    """

    stream = True

    def __init__(
        self,
        generator: SyntheticWordGenerator,
        transform: Callable | None = None,
        return_boxes: bool = False,
        box_transform: Callable | None = None,
    ) -> None:
        self.generator = generator
        self.transform = transform
        self.return_boxes = return_boxes
        self.box_transform = box_transform

    def __len__(self) -> int:
        return STREAM_SIZE

    def __getitem__(self, index: int):
        if not 0 <= index < STREAM_SIZE:
            raise IndexError(f'synthetic stream index {index} outside [0, {STREAM_SIZE})')
        image, label, boxes = self.generator.sample(index)
        size = image.size
        if self.transform is not None:
            image = self.transform(image)
        if self.return_boxes:
            return image, label, self.box_transform(boxes, size) if self.box_transform else boxes
        return image, label


def build_stream(
    options: Mapping[str, Any] | None,
    charset: str,
    max_length: int,
    transform: Callable | None = None,
    return_boxes: bool = False,
    box_transform: Callable | None = None,
) -> SyntheticStream:
    """A :class:`SyntheticStream` from a data-source config: generator options (:data:`GENERATOR_OPTIONS`) plus
    ``render`` (:class:`RenderConfig` fields, plus ``preset``: default, plain or scene). Unknown keys are rejected
    with the valid ones listed."""
    options = dict(options or {})
    render = dict(options.pop('render', None) or {})
    unknown = set(options) - set(GENERATOR_OPTIONS)
    if unknown:
        raise ValueError(
            f'unknown synthetic source option(s) {sorted(unknown)}; valid: {sorted(GENERATOR_OPTIONS)} and render'
        )
    valid_render = set(RenderConfig.__dataclass_fields__) | {'preset'}
    if set(render) - valid_render:
        raise ValueError(
            f'unknown render option(s) {sorted(set(render) - valid_render)}; valid: {sorted(valid_render)}'
        )
    for key in ('random_length', 'case_weights'):
        if key in options:
            options[key] = tuple(options[key])
    preset = render.pop('preset', 'default')
    generator = SyntheticWordGenerator(
        charset, cfg=RenderConfig.preset(preset, **render), max_length=max_length, **options
    )
    return SyntheticStream(generator, transform, return_boxes, box_transform)
