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
