"""Weight averaging (model.ema), checkpoints kept along the training time (checkpoint.keep_every_minutes) and the
accuracy-against-time curve drawn from them (tools/curve.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from strhub.config import compose_config
from strhub.curve import kept_checkpoints, measure
from strhub.data.module import SceneTextDataModule
from strhub.evaluation import run_evaluation
from strhub.metrics import TextNormalizer
from strhub.models.base import ema_callback
from strhub.models.loading import load, read_checkpoint
from strhub.training import train
from tests.conftest import REPO_ROOT, make_word_lmdb

# The CPU recipe's model and synthetic stream, a few small steps.
SHORT = [
    '+experiment=crnn-synth-cpu',
    'model.arch.hidden_size=16',
    'model.arch.cnn_channels=[8,8,16,16,16,16,16]',
    'model.batch_size=4',
    'data.num_workers=0',
    'data.samples_per_epoch=64',
    'data.val_synthetic.size=8',
    'trainer.num_sanity_val_steps=0',
    '+trainer.enable_progress_bar=false',
]


class Sleep(pl.Callback):
    """Makes every training step last at least ``seconds``, so that kept checkpoints fall between known steps
    whatever the machine's speed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


def test_ema_validates_checkpoints_and_resumes_with_the_averaged_weights(tmp_path):
    overrides = [*SHORT, 'trainer.val_check_interval=3', 'model.ema={decay: 0.5}']
    cfg = compose_config([*overrides, 'trainer.max_steps=6', 'checkpoint.keep_every_minutes=0.004'])
    _, trainer = train(cfg, tmp_path / 'run', callbacks=[Sleep(0.1)])
    ema = next(c for c in trainer.callbacks if type(c).__name__ == 'EMAWeightAveraging')
    averaged = ema._average_model.module.state_dict()
    last = read_checkpoint(tmp_path / 'run' / 'checkpoints' / 'last.ckpt')
    # Every checkpoint ships the average; at the end of training Lightning makes the model the average too.
    for key, value in last['state_dict'].items():
        assert torch.equal(value, averaged[key]), key
    loaded = load(tmp_path / 'run' / 'checkpoints' / 'last.ckpt')
    assert all(torch.equal(v, last['state_dict'][k]) for k, v in loaded.state_dict().items() if k in last['state_dict'])
    # A checkpoint from the middle of the run keeps the raw weights beside the average, to resume from.
    middle = read_checkpoint(kept_checkpoints(tmp_path / 'run')[0])
    assert middle['global_step'] < 6
    raw, shipped = middle['current_model_state'], middle['state_dict']
    assert any(not torch.equal(raw[k], shipped[k]) for k in raw if raw[k].is_floating_point())
    resumed = compose_config([*overrides, 'trainer.max_steps=8'])
    resumed.ckpt_path = str(tmp_path / 'run')
    _, trainer = train(resumed, tmp_path / 'run')
    assert trainer.global_step == 8


@pytest.mark.parametrize(
    'ema, message',
    [({'decay': 1.5}, 'model.ema.decay must lie between 0 and 1'), ({'rate': 0.9}, "unknown keys \\['rate'\\]")],
)
def test_a_wrong_ema_section_names_the_key(ema, message):
    with pytest.raises(ValueError, match=message):
        ema_callback(ema)


def test_kept_checkpoints_record_training_time_and_draw_a_curve(tmp_path):
    real = tmp_path / 'real'
    make_word_lmdb(real / 'iiit5k', 8, seed=0, alphabet='abc')
    make_word_lmdb(real / 'svt', 6, seed=1, alphabet='abc')
    run = tmp_path / 'run'
    cfg = compose_config(
        [
            *SHORT,
            'trainer.max_steps=8',
            'trainer.val_check_interval=8',
            'checkpoint.keep_every_minutes=0.004',
            'model.ema={decay: 0.5}',
        ]
    )
    # What Hydra saves beside a ./train.py run; the curve tool reads the synthetic validation split from it.
    (run / '.hydra').mkdir(parents=True)
    OmegaConf.save(cfg, run / '.hydra' / 'config.yaml')
    train(cfg, run, callbacks=[Sleep(0.1)])
    kept = kept_checkpoints(run)
    assert kept[-1].name == 'last.ckpt' and len(kept) >= 3  # 0.24 s marks over >= 0.8 s of training
    minutes = [read_checkpoint(p)['train_elapsed_s'] / 60 for p in kept]
    steps = [read_checkpoint(p)['global_step'] for p in kept]
    assert minutes == sorted(minutes) and steps == sorted(steps) and steps[-1] == 8
    for path, m in zip(kept[:-1], minutes, strict=False):
        marked = float(path.stem.split('-', 1)[1])  # rounded to 2 decimals in the name
        assert marked - 0.005 <= m < marked + 0.005 + 0.004  # saved at the first step after its mark

    rows = measure(run, [real])
    assert [r['checkpoint'] for r in rows] == [p.name for p in kept]
    # Accuracy in %, as test.py prints it: the same figure for the same checkpoint.
    last = load(kept[-1])
    normalizer = TextNormalizer.from_options(model_charset=last.charset_train)
    module = SceneTextDataModule(
        root_dir=run,
        charset_train=last.charset_train,
        charset_test=normalizer.charset,
        max_label_length=last.max_label_length,
        preprocess=last.preprocessing,
        num_workers=0,
    )
    expected = run_evaluation(last, module.test_dataloaders({'svt': real / 'svt'}), normalizer, progress=False)
    assert rows[-1]['svt'] == round(expected.results['svt']['accuracy'], 2)
    assert {'synthetic val', 'iiit5k', 'svt', 'Combined'} <= set(rows[0])
    assert all(0.0 <= r['iiit5k'] <= 100.0 for r in rows)

    out = subprocess.run(
        [sys.executable, 'tools/curve.py', str(run), '--test_dirs', str(real), '--plot', str(tmp_path / 'c.png'),
         '--csv', str(tmp_path / 'c.csv'), '--raw'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '| checkpoint' in out.stdout and 'last.ckpt' in out.stdout
    assert ' raw |' in out.stdout and ' shipped |' in out.stdout  # the EMA run's raw weights scored beside the average
    assert (tmp_path / 'c.png').read_bytes()[:4] == b'\x89PNG'
    assert (tmp_path / 'c.csv').read_text().splitlines()[0].startswith('checkpoint,minutes,step,weights,synthetic val')


def test_curve_of_a_run_without_checkpoints_says_how_to_get_them(tmp_path):
    (tmp_path / 'checkpoints').mkdir()
    out = subprocess.run(
        [sys.executable, 'tools/curve.py', str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert 'checkpoint.keep_every_minutes' in out.stderr
