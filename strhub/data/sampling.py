"""Mixing several training sources at fixed ratios."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class RatioSampler(Sampler[int]):
    """Samples indices of a ``ConcatDataset`` so that each source contributes a fixed share of every epoch.

    Source ``s`` (of ``sizes[s]`` samples, at offset ``sum(sizes[:s])``) supplies ``weights[s] / sum(weights)``
    of the ``num_samples`` draws of an epoch, each source without replacement while it lasts (then reshuffled),
    so a small real set mixed 50:50 with a huge synthetic one is repeated and the synthetic one sub-sampled.
    Call :meth:`set_epoch` for a new order each epoch (Lightning does, and wraps it for DDP); the order depends only
    on ``(seed, epoch)``. ``skip`` leaves out the first indices of the next epoch's order, once (resuming mid-epoch).

    Sources flagged in ``streams`` (on-the-fly synthetic data, of a huge virtual size) are not shuffled: epoch ``e``
    takes their next ``count`` indices, ``e * count`` to ``(e + 1) * count - 1``, so no sample is ever repeated and
    the draw needs no memory. ``num_samples`` is then required.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        num_samples: int | None = None,
        seed: int = 0,
        streams: Sequence[bool] | None = None,
    ) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f'{len(sizes)} sources but {len(weights)} weights')
        streams = list(streams) if streams is not None else [False] * len(sizes)
        if len(streams) != len(sizes):
            raise ValueError(f'{len(sizes)} sources but {len(streams)} stream flags')
        if any(streams) and num_samples is None:
            raise ValueError(
                'a synthetic stream is endless: set data.samples_per_epoch (e.g. 100000) to say how many '
                'samples make an epoch'
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f'source weights must be non-negative and not all zero, got {list(weights)}')
        if any(n == 0 for n, w in zip(sizes, weights) if w > 0):
            raise ValueError('a training source with a non-zero weight has no samples')
        self.sizes = list(sizes)
        self.streams = streams
        self.weights = [w / sum(weights) for w in weights]
        self.num_samples = num_samples if num_samples is not None else sum(sizes)
        self.seed = seed
        self.epoch = 0
        # Indices of the next epoch's order to leave out, once (a run resumed in the middle of an epoch).
        self.skip = 0
        counts = [int(self.num_samples * w) for w in self.weights]
        # Hand the rounding remainder to the largest-weight sources so the counts add up to num_samples.
        for s in sorted(range(len(counts)), key=lambda s: -self.weights[s])[: self.num_samples - sum(counts)]:
            counts[s] += 1
        self.counts = counts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        offset = 0
        picks = []
        for size, count, stream in zip(self.sizes, self.counts, self.streams):
            if count and stream:
                first = self.epoch * count % max(size - count, 1)
                picks.append(torch.arange(first, first + count) + offset)
            elif count:
                repeats = -(-count // size)
                order = torch.cat([torch.randperm(size, generator=gen) for _ in range(repeats)])[:count]
                picks.append(order + offset)
            offset += size
        merged = torch.cat(picks)
        order = merged[torch.randperm(len(merged), generator=gen)].tolist()
        skip, self.skip = self.skip, 0
        return iter(order[skip:])
