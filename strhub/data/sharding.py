"""Evaluation data split across DDP processes without padding, so that metrics over all ranks are exact."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DistributedSampler


class EvaluationShardSampler(DistributedSampler):
    """Rank ``r`` of ``W`` reads samples ``r, r + W, r + 2W, ...`` in order: over all ranks, every sample once.

    torch's ``DistributedSampler`` (which Lightning injects into every loader under DDP) pads the dataset with
    repeated samples until all ranks have the same number. Training needs that lock-step, but in evaluation it
    counts up to ``W - 1`` samples twice and shifts the figures. Evaluation needs no lock-step: ranks may see one
    sample (hence one batch) more or less than the others, since the metric states (torchmetrics) are summed once
    at the end. Being a ``DistributedSampler``, it tells Lightning that the loader is already sharded.

    Values logged per batch with ``self.log(..., sync_dist=True)`` are synchronised at the end of the epoch only if
    every rank logged them, so with such logging every rank needs at least one sample (``len(dataset) >= W``).
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(self.rank, self.total_size, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def evaluation_sampler(dataset: Sized) -> EvaluationShardSampler | None:
    """The sampler of an evaluation loader: this rank's shard when torch.distributed runs several processes
    (call it once the process group exists, as Lightning's ``*_dataloader`` hooks do), else None (sequential)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return EvaluationShardSampler(dataset)
    return None
