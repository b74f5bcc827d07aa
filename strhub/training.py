"""Training from a composed config: the logic behind ``./train.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from strhub.data.module import SceneTextDataModule
from strhub.data.text import TextDataModule
from strhub.models.base import BaseSystem
from strhub.models.loading import build_system, count_parameters, load_pretrained_weights

log = logging.getLogger(__name__)


def resolve_precision(precision: str | int | None, accelerator: str) -> str | int:
    """``auto``: bf16 mixed precision on GPUs that support it, fp16 mixed on older GPUs, fp32 on the CPU."""
    if precision not in (None, 'auto'):
        return precision
    on_gpu = accelerator in ('gpu', 'cuda') or (accelerator == 'auto' and torch.cuda.is_available())
    if not on_gpu:
        return '32-true'
    return 'bf16-mixed' if torch.cuda.is_bf16_supported() else '16-mixed'


def resolve_resume_path(ckpt_path: str | None) -> str | None:
    """``ckpt_path`` may name a checkpoint file or a run directory (then its ``checkpoints/last.ckpt`` is used)."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / 'checkpoints' / 'last.ckpt'
    if not path.is_file():
        raise FileNotFoundError(
            f'cannot resume: checkpoint {path} does not exist. Pass ckpt_path=<run dir or .ckpt '
            'file>, e.g. outputs/parseq/<timestamp>/checkpoints/last.ckpt'
        )
    return str(path)


def build_datamodule(data_cfg: Mapping[str, Any]) -> pl.LightningDataModule:
    """The data module ``data.module`` names: ``images`` (LMDB images and labels, the default) or ``text`` (a word
    list without images, for language-model pre-training)."""
    cfg = dict(data_cfg)
    kind = cfg.pop('module', 'images')
    if kind == 'images':
        return SceneTextDataModule(**cfg)
    if kind == 'text':
        return TextDataModule.from_config(cfg)
    raise ValueError(f"unknown data.module {kind!r}; valid: 'images', 'text'")


# Lightning's DDP strategy names that have a registered ``<name>_find_unused_parameters_true`` variant.
_DDP_STRATEGIES = ('ddp', 'ddp_spawn', 'ddp_fork', 'ddp_notebook')


def resolve_strategy(strategy: Any, system: BaseSystem | None) -> Any:
    """``strategy`` with DDP's ``find_unused_parameters`` turned on when ``system`` has parameters that some
    training steps leave without gradient (:attr:`BaseSystem.ddp_find_unused_parameters`); unchanged otherwise."""
    if system is not None and system.ddp_find_unused_parameters and strategy in _DDP_STRATEGIES:
        log.info('%s: some parameters get no gradient in some steps; DDP will look for them', type(system).__name__)
        return f'{strategy}_find_unused_parameters_true'
    return strategy


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    callbacks: Sequence[pl.Callback] = (),
    system: BaseSystem | None = None,
    **extra: Any,
) -> pl.Trainer:
    """The Lightning Trainer for ``cfg.trainer``: checkpoints (best by val_accuracy, and last) and TensorBoard logs
    under ``run_dir``, plus ``callbacks``. ``system``, when given, decides DDP's ``find_unused_parameters``.
    ``extra`` goes to ``pl.Trainer`` as is."""
    trainer_cfg: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)
    accelerator = trainer_cfg.get('accelerator', 'auto')
    has_gpu = torch.cuda.is_available() or (accelerator == 'gpu' and torch.backends.mps.is_available())
    if accelerator in ('gpu', 'cuda') and not has_gpu:
        raise ValueError(
            f'trainer.accelerator={accelerator} but no GPU is visible to this process (no CUDA GPU found); use '
            'trainer=cpu, or trainer=auto to take the GPU when there is one'
        )
    trainer_cfg['precision'] = resolve_precision(trainer_cfg.get('precision'), accelerator)
    if 'strategy' in trainer_cfg:
        trainer_cfg['strategy'] = resolve_strategy(trainer_cfg['strategy'], system)
    # No '=' in file names: Hydra's override grammar would need quoting for ckpt_path=<file>.
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / 'checkpoints',
        monitor='val_accuracy',
        mode='max',
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        filename='epoch{epoch}-step{step}-acc{val_accuracy:.4f}-ned{val_NED:.4f}',
    )
    callbacks = [checkpoint, LearningRateMonitor(logging_interval='step'), *callbacks]
    logger = TensorBoardLogger(str(run_dir), name='', version='', default_hp_metric=False)
    return pl.Trainer(**trainer_cfg, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir), **extra)


def train(cfg: DictConfig, run_dir: str | Path, callbacks: Sequence[pl.Callback] = ()) -> tuple[BaseSystem, pl.Trainer]:
    """Trains the model described by ``cfg`` and writes checkpoints and logs under ``run_dir``.

    ``cfg.ckpt_path`` resumes an interrupted run exactly (weights, optimiser, scheduler, step);
    ``cfg.pretrained`` starts from other weights (a path, URL or pretrained name) with a fresh schedule.
    ``callbacks`` are added to the trainer's own (checkpointing, LR monitor).

    Under DDP (``trainer=ddp``) every process runs this function on its own shard of the data; rank 0 alone writes
    the checkpoints and logs, and the learning rate is scaled for the world size (:func:`strhub.models.base.scaled_lr`).
    """
    run_dir = Path(run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    resume = resolve_resume_path(cfg.ckpt_path)
    system = build_system(OmegaConf.to_container(cfg.model, resolve=True))
    if cfg.pretrained:
        load_pretrained_weights(system, cfg.pretrained)
    log.info('%s: %.2fM parameters', cfg.model.name, count_parameters(system.model) / 1e6)
    if cfg.get('compile'):
        # In place, per part: the training losses call the parts directly (not the model's forward), and the
        # state-dict keys stay unchanged.
        for part in system.model.children():
            part.compile()
        log.info('compiled %s', ', '.join(name for name, _ in system.model.named_children()))
    datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    trainer = build_trainer(cfg, run_dir, callbacks, system=system)
    trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
    # last.ckpt is otherwise written only after a validation; make it hold the final step too.
    if not trainer.interrupted:
        # Full state (optimiser, scheduler, loops), so that ckpt_path= can resume or extend the run from it.
        trainer.save_checkpoint(run_dir / 'checkpoints' / 'last.ckpt', weights_only=False)
    return system, trainer
