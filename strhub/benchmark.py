"""Latency, throughput and compute (params / FLOPs / activations) of any registered model: ``./bench.py``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark as tbench

from strhub.tables import render_table

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: nn.Module, images: torch.Tensor, min_run_time: float = 1.0, max_length: int | None = None
) -> dict[str, float]:
    """Median and inter-quartile range (ms) of ``model(images, max_length)`` via ``torch.utils.benchmark``."""
    model(images, max_length)  # warm-up (allocations, lazy init, cuDNN autotuning)
    _sync(images.device)
    timer = tbench.Timer(
        stmt='model(images, max_length)',
        globals={'model': model, 'images': images, 'max_length': max_length},
        num_threads=torch.get_num_threads(),
    )
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        'batch_size': images.shape[0],
        'median_ms': m.median * 1e3,
        'iqr_ms': m.iqr * 1e3,
        'images_per_s': images.shape[0] / m.median,
        'runs': len(m.times),
    }


def latency_sweep(
    model: nn.Module,
    img_size: Sequence[int],
    batch_sizes: Sequence[int],
    device: torch.device,
    min_run_time: float = 1.0,
    channels: int = 3,
) -> list[dict[str, float]]:
    """Latency / throughput at each batch size on random images."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bs in batch_sizes:
        images = (torch.rand(bs, channels, *img_size, generator=gen) * 2 - 1).to(device)
        rows.append(measure_latency(model, images, min_run_time))
    return rows


def latency_vs_length(
    model: nn.Module,
    img_size: Sequence[int],
    max_label_length: int,
    device: torch.device,
    min_run_time: float = 0.5,
    channels: int = 3,
) -> list[dict[str, float]]:
    """Batch-1 latency as a function of the decoded label length (``max_length`` = 1 .. max_label_length)."""
    images = (torch.rand(1, channels, *img_size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    rows = []
    for length in range(1, max_label_length + 1):
        row = measure_latency(model, images, min_run_time, max_length=length)
        rows.append({'label_length': length, **row})
    return rows


def compute_table(
    model: nn.Module, img_size: Sequence[int], device: torch.device, channels: int = 3
) -> list[dict[str, Any]]:
    """Params, FLOPs and activations per top-level module (fvcore; one image).

    FLOPs count one fused multiply-add as one FLOP (fvcore's convention); the autoregressive decoders are traced
    for one decoding run of the full length.
    """
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis

    images = torch.zeros(1, channels, *img_size, device=device)
    with torch.inference_mode(False), torch.no_grad():
        flops = FlopCountAnalysis(model, (images,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        acts = ActivationCountAnalysis(model, (images,)).unsupported_ops_warnings(False)
        flops_by_module, acts_by_module = flops.by_module(), acts.by_module()
        flops_by_module.setdefault('', flops.total())
        acts_by_module.setdefault('', acts.total())
    rows = []
    for name, child in [('', model), *model.named_children()]:
        rows.append(
            {
                'module': name or 'total',
                'params_M': sum(p.numel() for p in child.parameters()) / 1e6,
                'gflops': flops_by_module.get(name, 0) / 1e9,
                'mactivations': acts_by_module.get(name, 0) / 1e6,
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """``columns``: (title, key, format spec)."""
    return render_table(
        [title for title, _, _ in columns], [[format(row[key], spec) for _, key, spec in columns] for row in rows]
    )
