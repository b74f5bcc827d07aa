"""Training from a composed config: the logic behind ``./train.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from strhub.checkpointing import AtomicCheckpointIO, LastCheckpoint, RunDirectoryLock, resolve_resume_path
from strhub.data.module import SceneTextDataModule
from strhub.data.preprocess import Preprocess
from strhub.data.text import TextDataModule
from strhub.models.base import BaseSystem
from strhub.models.huggingface import HUB_ID, is_hub_spec
from strhub.models.loading import build_system, count_parameters, load_pretrained_weights, pretrained_model_config
from strhub.progress import ProgressLog, stdout_is_terminal

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where bf16 matrix products run ~2x
    faster than fp32 ones (oneDNN); without it bf16 is emulated and slower, so fp32 is kept."""
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str | int | None, accelerator: str) -> str | int:
    """``auto``: bf16 mixed precision on GPUs that support it, fp16 mixed on older GPUs; on the CPU bf16 mixed where
    the CPU has bf16 instructions (:func:`cpu_has_native_bf16`), else fp32."""
    if precision not in (None, 'auto'):
        return precision
    on_gpu = accelerator in ('gpu', 'cuda') or (accelerator == 'auto' and torch.cuda.is_available())
    if not on_gpu:
        return 'bf16-mixed' if cpu_has_native_bf16() else '32-true'
    return 'bf16-mixed' if torch.cuda.is_bf16_supported() else '16-mixed'


def build_datamodule(data_cfg: Mapping[str, Any], preprocess: Preprocess | None = None) -> pl.LightningDataModule:
    """The data module ``data.module`` names: ``images`` (LMDB images and labels, the default) or ``text`` (a word
    list without images, for language-model pre-training). ``preprocess`` (a system's ``preprocessing``) is used
    unless ``data.preprocess`` sets one."""
    cfg = dict(data_cfg)
    kind = cfg.pop('module', 'images')
    if kind == 'images':
        if cfg.get('preprocess') is None:
            cfg['preprocess'] = preprocess
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
    # No '=' in file names: Hydra's override grammar would need quoting for ckpt_path=<file>. last.ckpt is written
    # by LastCheckpoint on its own schedule, not only when the best checkpoint improves.
    checkpoint_dir = run_dir / 'checkpoints'
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        monitor='val_accuracy',
        mode='max',
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        filename='epoch{epoch}-step{step}-acc{val_accuracy:.4f}-ned{val_NED:.4f}',
    )
    saving = cfg.get('checkpoint') or {}
    last = LastCheckpoint(
        checkpoint_dir,
        saving.get('every_n_steps', 0),
        saving.get('every_minutes', 0.0),
        saving.get('keep_every_minutes', 0.0),
    )
    logger = build_logger(trainer_cfg.pop('logger', cfg.get('logger', 'tensorboard')), run_dir)
    # The LR monitor writes to the logger; without one the learning rate is still in the progress lines.
    monitors = [LearningRateMonitor(logging_interval='step')] if logger else []
    callbacks = [best, last, *monitors, *callbacks]
    progress = cfg.get('progress') or {}
    log_lines = progress.get('log_lines', 'auto')
    if log_lines is True or (log_lines == 'auto' and not stdout_is_terminal()):
        callbacks.append(ProgressLog(progress.get('every_n_steps', 50)))
    plugins = trainer_cfg.pop('plugins', None) or []
    plugins = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
    return pl.Trainer(
        **trainer_cfg,
        callbacks=callbacks,
        logger=logger,
        plugins=plugins,
        default_root_dir=str(run_dir),
        **extra,
    )


LOGGERS = ('tensorboard', 'csv', 'none')


def build_logger(choice: Any, run_dir: Path) -> Logger | bool:
    """The experiment logger ``logger`` names (``tensorboard``, ``csv`` or ``none``; ``trainer.logger=false`` is
    ``none`` and ``true`` the default), writing under ``run_dir``."""
    if choice is True:
        choice = 'tensorboard'
    if choice in (False, None, 'none'):
        return False
    if choice == 'tensorboard':
        return TensorBoardLogger(str(run_dir), name='', version='', default_hp_metric=False)
    if choice == 'csv':
        return CSVLogger(str(run_dir), name='', version='')
    raise ValueError(f'unknown logger {choice!r}; valid: {list(LOGGERS)} (or trainer.logger=false)')


def with_published_model(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg`` with its model section replaced by the one that ``cfg.pretrained`` fixes, where it fixes one (a Hugging
    Face repository: architecture, tokenizer, preprocessing; with a model config of another family, that family's
    training defaults too), then the ``model.*`` entries of the command line's ``overrides`` applied again
    (``model.lr=1e-5`` still counts)."""
    published = pretrained_model_config(cfg.pretrained, OmegaConf.to_container(cfg.model, resolve=True))
    if published is None:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model = OmegaConf.create(published)
    again = [o.lstrip('+') for o in overrides if o.lstrip('+').startswith('model.')]
    if again:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(again))
    log.info('model from %s: %s', cfg.pretrained, cfg.model.name)
    return cfg


def published_run_dir_override(argv: Sequence[str]) -> list[str]:
    """For a command line that fine-tunes a Hugging Face model (``pretrained=owner/name``) without choosing its run
    directory: the override naming the run directory after that model, not after the default model config."""
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('pretrained=')), None)
    if not spec or not is_hub_spec(spec) or any(a.startswith(('hydra.run.dir=', 'model.name=')) for a in argv):
        return []
    match = HUB_ID.match(spec)
    name = match['repo'].split('/')[-1] if match else Path(spec).resolve().name
    return [f'hydra.run.dir=${{output_dir}}/{name}/${{now:%Y-%m-%d}}_${{now:%H-%M-%S}}']


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
    with RunDirectoryLock(run_dir, resume):
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
        datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), system.preprocessing)
        trainer = build_trainer(cfg, run_dir, callbacks, system=system)
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
        # last.ckpt is otherwise written on its schedule; make it hold the final step too.
        if not trainer.interrupted:
            # Full state (optimiser, scheduler, loops), so that ckpt_path= can resume or extend the run from it.
            trainer.save_checkpoint(run_dir / 'checkpoints' / 'last.ckpt', weights_only=False)
    return system, trainer
