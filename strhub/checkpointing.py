"""Keeping a training run's state safe: atomic checkpoint files, ``last.ckpt`` on its own schedule, resuming from the
newest checkpoint that loads, and one training process per run directory."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

LAST_NAME = 'last.ckpt'
LOCK_NAME = '.train.lock'
# errno values that mean "the disk (or the quota / file-size limit) is full".
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the file it would have replaced is untouched."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomically(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes ``checkpoint`` to ``path`` through a temporary file in the same directory, then renames it into place.

    A kill at any moment leaves either the previous file or the new one, never a partial one; a full disk leaves the
    previous file and raises :class:`CheckpointWriteError`. The temporary file is on the same filesystem, so the
    rename is atomic and nothing is left behind elsewhere.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError from its zip writer, with the OSError as its context.
        cause = e if isinstance(e, OSError) else (e.__cause__ or e.__context__)
        out_of_space = (isinstance(cause, OSError) and cause.errno in _NO_SPACE) or 'write failed' in str(e)
        if not out_of_space:
            raise
        raise CheckpointWriteError(
            f'could not write checkpoint {path} ({e}): the disk or your quota is full. The previous {path.name} is '
            f'kept; free some space, then resume with ckpt_path={path.parent.parent}'
        ) from e


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with :func:`save_atomically` for every file the trainer writes."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError('AtomicCheckpointIO takes no storage_options')
        save_atomically(checkpoint, path)


class LastCheckpoint(pl.Callback):
    """Rewrites ``<dirpath>/last.ckpt`` after every validation, every ``every_n_steps`` training steps and at least
    every ``every_minutes`` minutes of training (0 turns a trigger off), whether or not the model improved: a killed
    run loses at most that much work.

    Every checkpoint also records ``train_elapsed_s``, the wall-clock seconds of training so far (summed over resumed
    sessions). With ``keep_every_minutes``, a copy is kept each time that much training time has passed, as
    ``minute-<MMMM.mm>.ckpt``: the points of an accuracy-against-time curve (``tools/curve.py``).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_steps: int = 0,
        every_minutes: float = 0.0,
        keep_every_minutes: float = 0.0,
    ) -> None:
        if every_n_steps < 0 or every_minutes < 0 or keep_every_minutes < 0:
            raise ValueError(
                f'checkpoint.every_n_steps ({every_n_steps}), checkpoint.every_minutes ({every_minutes}) and '
                f'checkpoint.keep_every_minutes ({keep_every_minutes}) must be >= 0 (0 = off)'
            )
        self.dirpath = Path(dirpath)
        self.path = self.dirpath / LAST_NAME
        self.every_n_steps = int(every_n_steps)
        self.every_seconds = float(every_minutes) * 60.0
        self.keep_seconds = float(keep_every_minutes) * 60.0
        self._saved_step = -1
        self._saved_at = time.monotonic()
        self._elapsed_before = 0.0  # training seconds of earlier sessions of this run (from the resumed checkpoint)
        self._started = time.monotonic()
        self._kept = 0  # how many keep_every_minutes marks have been saved

    def elapsed(self) -> float:
        """Wall-clock seconds of training in this run so far."""
        return self._elapsed_before + time.monotonic() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {'train_elapsed_s': self.elapsed(), 'kept': self._kept}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._elapsed_before = float(state_dict.get('train_elapsed_s', 0.0))
        self._kept = int(state_dict.get('kept', 0))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint['train_elapsed_s'] = self.elapsed()

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step or trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()
        self._started = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        due = self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0
        keep = self.keep_seconds > 0 and self.elapsed() >= (self._kept + 1) * self.keep_seconds
        if not due and self.every_seconds > 0:
            due = time.monotonic() - self._saved_at >= self.every_seconds
        if trainer.world_size > 1 and (self.every_seconds > 0 or self.keep_seconds > 0):
            # Saving is collective (a barrier): every rank must agree, and their clocks do not.
            due, keep = trainer.strategy.broadcast((due, keep), src=0)
        if keep:
            self._kept = int(self.elapsed() // self.keep_seconds)
            minute = self._kept * self.keep_seconds / 60.0
            # Full checkpoints: weights-only ones skip the callbacks' hooks (EMA weights, elapsed time).
            trainer.save_checkpoint(self.dirpath / f'minute-{minute:07.2f}.ckpt', weights_only=False)
        if due:
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == 'fit':
            self._save(trainer)


def is_loadable(path: str | os.PathLike) -> bool:
    """True when ``path`` is a complete checkpoint archive (zip directory and every record's CRC intact); reads the
    file but runs no unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def resolve_resume_path(ckpt_path: str | os.PathLike | None) -> str | None:
    """The checkpoint to resume from. ``ckpt_path`` names a checkpoint file or a run directory (then its
    ``checkpoints/last.ckpt``). When that file is missing or does not load (a kill or a full disk while it was
    written by older code), the newest loadable checkpoint beside it is used, with a line saying so."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / 'checkpoints' / LAST_NAME
    if path.is_file() and is_loadable(path):
        return str(path)
    candidates = sorted(
        (p for p in path.parent.glob('*.ckpt') if p != path and p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    fallback = next((p for p in candidates if is_loadable(p)), None)
    problem = 'does not exist' if not path.exists() else 'is incomplete or corrupt (it does not load)'
    if fallback is None:
        raise FileNotFoundError(
            f'cannot resume: checkpoint {path} {problem} and no loadable checkpoint is beside it. Pass '
            'ckpt_path=<run dir or .ckpt file>, e.g. outputs/parseq/<timestamp>/checkpoints/last.ckpt'
        )
    log.warning('checkpoint %s %s; resuming from the newest loadable checkpoint instead: %s', path, problem, fallback)
    return str(fallback)


def _is_rank_zero() -> bool:
    return all(os.environ.get(var, '0') == '0' for var in ('RANK', 'LOCAL_RANK', 'NODE_RANK'))


class RunDirectoryLock:
    """Claims ``run_dir`` for one training process (rank 0 under DDP).

    Refuses a directory that another live process is training in (an advisory ``flock``, released by the kernel
    when that process dies, even by ``kill -9``), and a directory that already holds checkpoints of an earlier run
    unless this run resumes from a checkpoint inside it: two runs never interleave their checkpoints and logs.
    """

    def __init__(self, run_dir: str | os.PathLike, resume: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self._fd: int | None = None

    def __enter__(self) -> RunDirectoryLock:
        if not _is_rank_zero():
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or '?'
            os.close(fd)
            raise RuntimeError(
                f'run directory {self.run_dir} is in use by another training process (pid {holder}); give this run '
                'its own directory (hydra.run.dir=...) or wait for that one to finish'
            ) from None
        self._fd = fd
        try:
            self._refuse_foreign_checkpoints()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._remove_partial_writes()
        return self

    def _remove_partial_writes(self) -> None:
        """Deletes the temporary files of checkpoint writes that a killed process left (it held this lock, so no
        writer is running now)."""
        for partial in (self.run_dir / 'checkpoints').glob('.*.ckpt.*.tmp'):
            partial.unlink(missing_ok=True)
            log.warning(
                'removed %s: a checkpoint write interrupted by a kill (the checkpoint it replaced is intact)', partial
            )

    def _refuse_foreign_checkpoints(self) -> None:
        existing = sorted((self.run_dir / 'checkpoints').glob('*.ckpt'))
        if not existing:
            return
        # Resuming from a checkpoint inside this directory continues the run that wrote it.
        if self.resume and self.run_dir.resolve() in Path(self.resume).resolve().parents:
            return
        raise FileExistsError(
            f'run directory {self.run_dir} already holds the checkpoints of another run ({existing[0].name}, ...); '
            f'resume it with ckpt_path={self.run_dir}, or give this run a new directory (hydra.run.dir=...)'
        )

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
