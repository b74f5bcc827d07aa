"""DDP with two CPU processes (gloo), run as users run it: ./train.py trainer=ddp trainer.accelerator=cpu
trainer.devices=2. Sharded training, validation figures equal to one process's, one set of checkpoints, the LR
rule, SWA and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DistributedSampler

from strhub.config import compose_config, model_config
from strhub.data.sharding import EvaluationShardSampler
from strhub.models.base import scaled_lr
from strhub.models.loading import build_system, load
from strhub.training import build_datamodule, build_trainer, resolve_precision, resolve_strategy
from tests.conftest import REPO_ROOT, TINY_PARSEQ, make_word_lmdb

DDP = ['trainer=ddp', 'trainer.accelerator=cpu', 'trainer.devices=2']


@pytest.fixture(scope='module')
def odd_data(tmp_path_factory) -> Path:
    """64 training words and 15 validation words: an odd count, which a padded 2-way split would not count exactly."""
    root = tmp_path_factory.mktemp('ddp_data')
    make_word_lmdb(root / 'train' / 'generated' / 'part0', 64, seed=0)
    make_word_lmdb(root / 'val' / 'generated', 15, seed=1)
    return root


def run_train(args: list[str], cwd: Path) -> None:
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'train.py'), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope='module')
def ddp_run(odd_data, tmp_path_factory) -> tuple[list[str], Path]:
    """Two epochs of 2 steps per process (validation after steps 2 and 4), SWA from the second epoch."""
    out = tmp_path_factory.mktemp('ddp')
    overrides = TINY_PARSEQ + [
        'dataset=generated',
        f'data.root_dir={odd_data}',
        'trainer.max_epochs=2',
        'trainer.val_check_interval=2',
        'model.swa={swa_lrs: 1e-3, swa_epoch_start: 1}',
        '+trainer.enable_progress_bar=false',
    ]
    run_train(overrides + DDP + [f'hydra.run.dir={out / "run"}'], out)
    return overrides, out / 'run'


def checkpoints(run: Path) -> dict[str, dict]:
    return {p.name: torch.load(p, map_location='cpu', weights_only=False) for p in (run / 'checkpoints').glob('*')}


def swa_averages(ckpt: dict) -> int:
    return int(ckpt['callbacks']['StochasticWeightAveraging']['n_averaged'])


def test_evaluation_shards_cover_every_sample_once():
    for size in (1, 3, 15, 16):
        for world in (1, 2, 3):
            shards = [list(EvaluationShardSampler(range(size), num_replicas=world, rank=r)) for r in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(size))
            assert [len(s) for s in shards] == [
                len(EvaluationShardSampler(range(size), world, r)) for r in range(world)
            ]
    # torch's sampler, which Lightning injects by default, repeats samples to even out the ranks.
    padded = [list(DistributedSampler(range(15), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert sum(map(len, padded)) == 16


def test_ddp_shards_training_writes_one_checkpoint_set_and_scales_the_lr(ddp_run):
    _, run = ddp_run
    ckpts = checkpoints(run)
    assert len(ckpts) == 2 and 'last.ckpt' in ckpts  # last + best, written by rank 0 only
    assert len(list(run.glob('events.out.tfevents.*'))) == 1  # one TensorBoard log
    last = ckpts['last.ckpt']
    # 64 samples / 2 processes / batch 16 = 2 steps per epoch; one process would have taken 8 steps.
    assert last['global_step'] == 4
    hp = last['hyper_parameters']
    expected = scaled_lr(hp['lr'], hp['batch_size'], devices=2)  # lr * sqrt(2) * 16 / 256
    assert [g['max_lr'] for g in last['optimizer_states'][0]['param_groups']] == pytest.approx([expected] * 2)
    assert swa_averages(last) >= 1


def test_ddp_validation_figures_equal_a_single_process(ddp_run):
    overrides, run = ddp_run
    best_name = next(name for name in checkpoints(run) if name != 'last.ckpt')
    best = run / 'checkpoints' / best_name
    step = torch.load(best, map_location='cpu', weights_only=False)['global_step']
    events = EventAccumulator(str(run))
    events.Reload()
    # What the 2-process run logged at the validation whose weights the best checkpoint holds (steps 2 and 4).
    index = [2, 4].index(step)
    logged = {k: events.Scalars(k)[index].value for k in ('val_accuracy', 'val_NED', 'val_loss')}

    cfg = compose_config(overrides)
    datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    # The precision the run validated in (bf16 mixed on CPUs with bf16 instructions, else fp32).
    precision = resolve_precision(cfg.trainer.precision, 'cpu')
    trainer = pl.Trainer(accelerator='cpu', devices=1, precision=precision, logger=False, enable_progress_bar=False)
    single = trainer.validate(load(best), datamodule=datamodule, verbose=False)[0]
    assert len(trainer.val_dataloaders.dataset) == 15
    for key, value in logged.items():
        assert value == pytest.approx(single[key], rel=1e-6, abs=1e-9), key


def test_ddp_resume_continues_from_the_saved_step(ddp_run):
    overrides, run = ddp_run
    interrupted = next(p for p in (run / 'checkpoints').glob('*.ckpt') if p.name != 'last.ckpt')
    assert torch.load(interrupted, map_location='cpu', weights_only=False)['global_step'] == 2
    resumed_dir = run.parent / 'resumed'
    run_train(overrides + DDP + [f'ckpt_path={interrupted}', f'hydra.run.dir={resumed_dir}'], run.parent)
    last = checkpoints(resumed_dir)['last.ckpt']
    assert last['global_step'] == 4
    assert {int(s['step']) for s in last['optimizer_states'][0]['state'].values()} == {4}
    assert swa_averages(last) >= 1


def test_trainer_configs_and_unused_parameter_detection(tmp_path):
    choices = {name: compose_config([f'trainer={name}']).trainer for name in ('auto', 'cpu', 'gpu', 'ddp')}
    assert choices['cpu'].accelerator == 'cpu' and choices['gpu'].accelerator == 'gpu'
    assert choices['ddp'].strategy == 'ddp' and choices['ddp'].devices == 'auto' and 'strategy' not in choices['auto']

    parseq = build_system(model_config('parseq-tiny', TINY_PARSEQ[1:]))
    abinet_arch = ['model.arch.d_model=32', 'model.arch.nhead=2', 'model.arch.d_inner=64', 'model.arch.v_num_layers=1']
    abinet_arch += ['model.arch.l_num_layers=1']
    frozen_lm = build_system(model_config('abinet', [*abinet_arch, 'model.pretrain_lm_on_labels=false']))
    assert resolve_strategy('ddp', parseq) == 'ddp'
    assert resolve_strategy('ddp', frozen_lm) == 'ddp_find_unused_parameters_true'
    assert resolve_strategy('ddp', build_system(model_config('abinet', abinet_arch))) == 'ddp'
    cfg = compose_config(TINY_PARSEQ + DDP)
    trainer = build_trainer(cfg, tmp_path, system=frozen_lm)
    assert type(trainer.strategy).__name__ == 'DDPStrategy' and trainer.num_devices == 2
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no GPU is visible.*trainer=cpu'):
            build_trainer(compose_config(TINY_PARSEQ + ['trainer=gpu']), tmp_path)
