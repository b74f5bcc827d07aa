"""Character core-area masks: the supervision of ACDS-STR's mask head, rasterised from per-character boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def core_area_masks(
    boxes: Sequence[Sequence[Sequence[float]] | None],
    size: Sequence[int],
    shrink: float = 0.5,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Binary masks of the character cores of a batch.

    Each ``[x0, y0, x1, y1]`` box (pixels of the model input) is shrunk about its centre to ``shrink`` times its
    width and height. A pixel belongs to the core when its centre lies in the shrunk box (half-open:
    ``x0' <= c + 0.5 < x1'``); the pixel holding the box centre always does, so that no character (a thin ``i`` or
    ``l``) is left without a core. Boxes are clipped to the image.

    Args:
        boxes: per sample, its characters' boxes, or None (or empty) for a sample without boxes.
        size: (height, width) of the masks.
        shrink: core size as a fraction of the box size, in (0, 1].
        device: where to build the masks.

    Returns:
        ``(masks, has_boxes)``: (N, 1, H, W) float masks of 0 and 1, and an (N,) bool tensor, False for samples
        without boxes (their mask is all zero and must not be supervised).
    """
    if not 0.0 < shrink <= 1.0:
        raise ValueError(f'shrink must be in (0, 1], got {shrink}')
    height, width = (int(s) for s in size)
    masks = torch.zeros(len(boxes), 1, height, width, device=device)
    has_boxes = torch.tensor([bool(b) for b in boxes], dtype=torch.bool, device=device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    for i, sample in enumerate(boxes):
        if not sample:
            continue
        b = torch.as_tensor(sample, dtype=torch.float64, device=device).reshape(-1, 4)
        centre_x, centre_y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        half_w, half_h = (b[:, 2] - b[:, 0]) * shrink / 2, (b[:, 3] - b[:, 1]) * shrink / 2
        first_col, end_col = _pixel_span(centre_x - half_w, centre_x + half_w, centre_x, width)
        first_row, end_row = _pixel_span(centre_y - half_h, centre_y + half_h, centre_y, height)
        in_cols = (cols >= first_col[:, None]) & (cols < end_col[:, None])  # (K, W)
        in_rows = (rows >= first_row[:, None]) & (rows < end_row[:, None])  # (K, H)
        masks[i, 0] = (in_rows[:, :, None] & in_cols[:, None, :]).any(0).float()
    return masks, has_boxes


def _pixel_span(low: Tensor, high: Tensor, centre: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """First and one-past-last pixel index whose centre lies in [low, high), widened to the pixel holding
    ``centre`` and clipped to [0, limit)."""
    first = torch.ceil(low - 0.5)
    end = torch.ceil(high - 0.5)
    centre_pixel = torch.floor(centre).clamp(0, limit - 1)
    first = torch.minimum(first, centre_pixel).clamp(0, limit)
    end = torch.maximum(end, centre_pixel + 1).clamp(0, limit)
    return first.long(), end.long()
