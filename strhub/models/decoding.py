"""What every step-by-step decoder shares: when to ask whether every sequence has ended, and where to cut.

Asking "has every sequence produced its end token?" reads a value back from the device: on an accelerator that is a
host synchronisation, so the question is asked only every few steps there (every step on the CPU, where it is free).
The output must not depend on how often it was asked, so an early stop cuts the logits at one past the latest first
end token, the length the reference implementations' per-step check would have stopped at.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Steps between end-of-sequence checks on an accelerator; models expose it as ``accelerator_eos_check_interval``.
ACCELERATOR_EOS_CHECK_INTERVAL = 4


class EarlyStopping:
    """Mixin for models that decode step by step: ``eos_check_interval`` (None picks by device) and
    :meth:`eos_check_every`."""

    eos_check_interval: int | None = None
    accelerator_eos_check_interval: int = ACCELERATOR_EOS_CHECK_INTERVAL

    def eos_check_every(self, device: torch.device) -> int:
        """Steps between "has every sequence ended?" checks on ``device``: every step on the CPU, else every
        ``accelerator_eos_check_interval`` steps, unless ``eos_check_interval`` is set."""
        return self.eos_check_interval or (1 if device.type == 'cpu' else self.accelerator_eos_check_interval)


def all_ended(ended: Tensor, step: int, check_every: int, last: bool = False) -> bool:
    """Whether to stop after 0-based ``step``: every entry of ``ended`` (N,) is true, asked only every
    ``check_every`` steps (and at the ``last`` one) because the answer is a host sync on accelerators."""
    return ((step + 1) % check_every == 0 or last) and bool(ended.all())


def cut_after_latest_first_eos(logits: Tensor, eos_id: int) -> Tensor:
    """(N, L, C) logits in which every row has an end token -> (N, L', C), L' = 1 + the latest first-EOS position."""
    is_eos = logits.argmax(-1) == eos_id
    first_eos = is_eos.to(torch.uint8).argmax(1)
    return logits[:, : int(first_eos.max()) + 1]


class KeyValueCache:
    """The self-attention keys and values of the positions decoded so far, per layer, preallocated for
    ``capacity`` positions, so that each decoding step runs only its new position through the layers.

    A layer's keys and values live in one buffer, ``(N, capacity, 2, kv_heads, head_dim)``: a step can store the
    packed output of a fused key/value projection, ``(N, T, 2 * kv_heads * head_dim)``, with a single copy
    (:meth:`write_packed`), or separate keys and values (:meth:`write`). ``keys[i]`` / ``values[i]`` are
    ``(N, kv_heads, capacity, head_dim)`` views of layer ``i``'s buffer, the layout of
    ``F.scaled_dot_product_attention``. ``length`` counts the filled positions for callers that advance it.
    """

    def __init__(
        self, num_layers: int, batch_size: int, kv_heads: int, capacity: int, head_dim: int, like: Tensor
    ) -> None:
        self._use([like.new_empty(batch_size, capacity, 2, kv_heads, head_dim) for _ in range(num_layers)])
        self.length = 0

    def _use(self, buffers: list[Tensor]) -> None:
        self.buffers = buffers
        self.packed = [b.flatten(2) for b in buffers]  # (N, capacity, 2 * kv_heads * head_dim) views
        self.keys = [b[:, :, 0].transpose(1, 2) for b in buffers]
        self.values = [b[:, :, 1].transpose(1, 2) for b in buffers]

    def write(self, layer: int, keys: Tensor, values: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Stores (N, kv_heads, T, head_dim) keys and values at positions ``start .. start + T - 1`` of ``layer``
        and returns its keys and values of positions ``0 .. start + T - 1``."""
        end = start + keys.shape[2]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.read(layer, end)

    def write_packed(self, layer: int, packed: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """:meth:`write` for (N, T, 2 * kv_heads * head_dim) keys then values, heads not yet split; (N, 2 * kv_heads
        * head_dim) rows are one position."""
        if packed.dim() == 2:
            self.packed[layer][:, start] = packed
            return self.read(layer, start + 1)
        end = start + packed.shape[1]
        self.packed[layer][:, start:end] = packed
        return self.read(layer, end)

    def read(self, layer: int, end: int) -> tuple[Tensor, Tensor]:
        """Keys and values of positions ``0 .. end - 1`` of ``layer``, (N, kv_heads, end, head_dim) each."""
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def keep_rows(self, rows: Tensor) -> None:
        """Keeps only the sequences ``rows`` (indices or a boolean mask), e.g. when ended ones leave the batch."""
        self._use([b[rows] for b in self.buffers])

    def reorder(self, rows: Tensor, end: int) -> None:
        """Replaces every layer's first ``end`` positions of each row by those of row ``rows[i]`` (beam search:
        each surviving beam continues from its parent's keys and values)."""
        for buffer in self.buffers:
            buffer[:, :end] = buffer[rows, :end]
