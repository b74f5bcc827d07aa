"""The real-text recipes compose, train a few steps from the synthetic stream, and fine-tune from their checkpoint."""

from __future__ import annotations

import math

import pytest

from strhub.config import compose_config
from strhub.data.synth.stream import SyntheticStream
from strhub.models.loading import load
from strhub.training import build_datamodule, train
from tests.conftest import make_word_lmdb

RECIPES = ['parseq-synth-cpu', 'parseq-synth-gpu', 'parseq-real-finetune', 'crnn-synth-cpu', 'crnn-real-finetune']

# Few, small steps; the architecture stays the recipe's own.
SHORT = [
    'trainer=cpu',
    'compile=false',
    'model.batch_size=4',
    'data.num_workers=0',
    'data.samples_per_epoch=8',
    'trainer.max_steps=2',
    'trainer.val_check_interval=2',
    'trainer.limit_val_batches=1',
    'trainer.num_sanity_val_steps=0',
    '+trainer.enable_progress_bar=false',
]


@pytest.fixture(scope='module')
def real_root(tmp_path_factory):
    """The layout tools/prepare_real.py writes: real/finetune/<set> and real/heldout/<set>."""
    root = tmp_path_factory.mktemp('data')
    make_word_lmdb(root / 'real' / 'finetune' / 'ic15', 16, seed=0)
    make_word_lmdb(root / 'real' / 'heldout' / 'ic15', 8, seed=1)
    return root


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_composes_with_a_synthetic_stream(recipe, real_root):
    cfg = compose_config([f'+experiment={recipe}'])
    sources = {s['name']: s for s in cfg.data.train}
    assert sources['synth']['kind'] == 'synthetic'
    assert sources['synth']['options']['render']['preset'] == 'scene'
    assert cfg.data.samples_per_epoch > 0
    dm = build_datamodule(dict(cfg.data, root_dir=str(real_root)))
    stream = dm.train_dataset.datasets[0]
    assert isinstance(stream, SyntheticStream)
    image, label = stream[0]
    assert image.shape == (3, *cfg.model.img_size) and 0 < len(label) <= cfg.model.max_label_length


@pytest.mark.parametrize('model', ['parseq', 'crnn'])
def test_synthetic_recipes_train_then_fine_tune(model, real_root, tmp_path):
    synth_dir = tmp_path / 'synth'
    system, trainer = train(
        compose_config([f'+experiment={model}-synth-cpu', 'data.val_synthetic.size=4', *SHORT]), synth_dir
    )
    assert trainer.global_step == 2
    checkpoint = synth_dir / 'checkpoints' / 'last.ckpt'
    loaded = load(str(checkpoint)).model.state_dict()
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in system.model.state_dict().items()}

    tune_dir = tmp_path / 'finetune'
    _, trainer = train(
        compose_config(
            [f'+experiment={model}-real-finetune', f'pretrained={checkpoint}', f'data.root_dir={real_root}', *SHORT]
        ),
        tune_dir,
    )
    assert trainer.global_step == 2
    assert 'val_accuracy' in trainer.callback_metrics  # validated on the held-out real split


def test_gpu_recipe_trains_on_cpu_when_told(tmp_path):
    _, trainer = train(
        compose_config(['+experiment=parseq-synth-gpu', 'data.val_synthetic.size=4', 'trainer.precision=32', *SHORT]),
        tmp_path,
    )
    assert trainer.global_step == 2


def test_time_budget_schedule_anneals_by_time_and_resumes(monkeypatch):
    from strhub.models import base

    clock = [100.0]
    monkeypatch.setattr(base.time, 'monotonic', lambda: clock[0])
    shape = base.TimeBudgetOneCycle(total_steps=1000, budget_s=60.0, warmup_pct=0.1)
    assert shape(0) == pytest.approx(1e-3)  # construction: the smallest warm-up factor
    assert shape(1) == pytest.approx(0.01)  # 1 of 1000 steps, no time yet: warming up by steps
    clock[0] += 30.0
    halfway = 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * (0.5 - 0.1) / 0.9))
    assert shape(2) == pytest.approx(halfway)  # half the time budget spent
    state = dict(shape.__dict__)  # what LambdaLR saves
    resumed = base.TimeBudgetOneCycle(total_steps=1000, budget_s=60.0, warmup_pct=0.1)
    resumed(0)
    resumed.__dict__.update(state)
    clock[0] += 500.0  # downtime between the stop and the resume does not count
    assert resumed(3) == pytest.approx(halfway, abs=1e-3)
    clock[0] += 30.0
    assert resumed(4) == pytest.approx(1e-3)  # budget spent: annealed to final_ratio


@pytest.mark.parametrize(
    'recipe, extra',
    [
        # The recipe's schedule follows the wall clock (time_budget_s); a step-based one makes it reproducible.
        ('crnn-synth-cpu', ['model.scheduler.time_budget_s=null', 'data.num_workers=1']),
        ('parseq-demo', ['data.num_workers=1']),
    ],
)
def test_same_seed_and_command_give_identical_losses(recipe, extra, word_data, tmp_path):
    from tests.conftest import LossRecorder

    overrides = [f'+experiment={recipe}', *SHORT, 'trainer.max_steps=4', f'data.root_dir={word_data}', *extra]
    if recipe == 'crnn-synth-cpu':
        overrides.append('data.val_synthetic.size=4')
    runs = []
    for i in range(2):
        recorder = LossRecorder()
        train(compose_config(overrides), tmp_path / f'run{i}', callbacks=[recorder])
        runs.append(recorder.losses)
    assert len(runs[0]) == 4
    assert runs[0] == runs[1]


def test_precision_auto_takes_bf16_where_the_cpu_has_bf16_instructions(monkeypatch):
    from strhub import training

    monkeypatch.setattr(training, 'cpu_has_native_bf16', lambda: True)
    assert training.resolve_precision('auto', 'cpu') == 'bf16-mixed'
    monkeypatch.setattr(training, 'cpu_has_native_bf16', lambda: False)
    assert training.resolve_precision('auto', 'cpu') == '32-true'
    assert training.resolve_precision('32-true', 'cpu') == '32-true'  # an explicit choice is kept
    assert isinstance(training.cpu_has_native_bf16(), bool)
