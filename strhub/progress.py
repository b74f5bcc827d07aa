"""Training progress as plain log lines, for runs whose output is not a terminal (a file, a pipe, a CI log)."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger('strhub.progress')


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60}:{rest % 60:02d}'


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


class ProgressLog(pl.Callback):
    """Every ``every_n_steps`` training steps, one line: step, loss, learning rate, samples/s, elapsed time and the
    estimated time left (from ``max_steps`` or ``max_time``, whichever ends first); after every validation, one line
    with its figures. Lines go through :mod:`logging`, so ``train.log`` in the run directory has them too."""

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f'progress.every_n_steps must be >= 1, got {every_n_steps}')
        self.every_n_steps = every_n_steps
        self._start = 0.0
        self._start_step = 0
        self._window_start = 0.0
        self._window_samples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._window_start = time.monotonic()
        self._start_step = trainer.global_step
        self._window_samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._window_samples += len(batch[1]) if isinstance(batch, list | tuple) and len(batch) > 1 else 0
        step = trainer.global_step
        if step % self.every_n_steps or trainer.sanity_checking or not trainer.is_global_zero:
            return
        now = time.monotonic()
        # Every rank trains on as many samples as this one: the rate of the whole run.
        rate = self._window_samples * trainer.world_size / max(now - self._window_start, 1e-9)
        self._window_start, self._window_samples = now, 0
        elapsed = now - self._start
        loss = outputs.get('loss') if isinstance(outputs, dict) else outputs
        loss_text = f'{float(loss):.4f}' if loss is not None else 'n/a'
        lrs = [group['lr'] for opt in trainer.optimizers for group in opt.param_groups]
        lr_text = f'{lrs[0]:.3g}' if lrs else 'n/a'
        log.info(
            'step %d%s | loss %s | lr %s | %.1f samples/s | elapsed %s | left %s',
            step,
            f'/{trainer.max_steps}' if trainer.max_steps and trainer.max_steps > 0 else '',
            loss_text,
            lr_text,
            rate,
            _duration(elapsed),
            self._time_left(trainer, step, elapsed),
        )

    def _time_left(self, trainer: pl.Trainer, step: int, elapsed: float) -> str:
        done = step - self._start_step
        estimates = []
        if trainer.max_steps and trainer.max_steps > 0 and done > 0:
            estimates.append(elapsed / done * (trainer.max_steps - step))
        timer = next((c for c in trainer.callbacks if type(c).__name__ == 'Timer'), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None and math.isfinite(remaining):
            estimates.append(remaining)
        return _duration(max(min(estimates), 0.0)) if estimates else 'unknown'

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        figures = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith('val_') and v.numel() == 1}
        if figures:
            log.info(
                'validation at step %d: %s',
                trainer.global_step,
                ', '.join(f'{k[4:]} {v:.4f}' for k, v in sorted(figures.items())),
            )
