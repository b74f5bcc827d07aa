"""Ray Tune sweeps (./tune.py) on a tiny PARSeq: tables and best config, failed trials, interrupted sweeps resumed."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from ray import tune as ray_tune

from strhub.config import compose_config
from strhub.training import train
from strhub.tune import check_sweep_config, connect_ray, run_sweep, search_space_entries, trial_rows, write_tables
from tests.conftest import TINY_PARSEQ


@pytest.fixture
def ray_dir(tmp_path_factory) -> Path:
    """Ray's session files: a short path under pytest's temporary root (Unix socket paths have at most 107 bytes)."""
    return tmp_path_factory.mktemp('ray')


def sweep_config(word_data: Path, tmp_path: Path, ray_dir: Path, *overrides: str):
    """A tiny sweep: 4 training steps per trial, validations after steps 2 and 4, a local Ray of 2 CPUs whose
    files stay under pytest's temporary directories."""
    return compose_config(
        TINY_PARSEQ
        + [
            'dataset=generated',
            f'data.root_dir={word_data}',
            'trainer.max_steps=4',
            'trainer.val_check_interval=2',
            'tune.ray.num_cpus=2',
            f'tune.ray.temp_dir={ray_dir}',
            f'tune.sweeps_dir={tmp_path / "sweeps"}',
            *overrides,
        ],
        config_name='tune',
    )


def read_trials(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / 'trials.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_bad_sweep_settings_fail_clearly(word_data, tmp_path, ray_dir):
    def fails(match: str, *overrides: str) -> None:
        with pytest.raises(ValueError, match=match):
            check_sweep_config(sweep_config(word_data, tmp_path, ray_dir, *overrides))

    fails(r'no model\.lrr in the config', '+tune.search_space.model.lrr={type: uniform, low: 0, high: 1}')
    fails(r"unknown type 'gaussian'; valid types", 'tune.search_space.model.lr.type=gaussian')
    fails(r'loguniform range must be positive', 'tune.search_space.model.lr.low=0')
    fails(r'low must be below high', 'tune.search_space.model.lr.low=1')
    fails(r'tune\.search_space is empty', '~tune.search_space.model.lr')
    fails(r"tune\.metric='accuracy' is not reported.*val_accuracy", 'tune.metric=accuracy')
    fails(r'one process on one device.*trainer=auto, cpu or gpu', 'trainer=ddp')
    fails(
        r'points_to_evaluate.*exactly the search-space keys', 'tune.search.points_to_evaluate=[{model.batch_size: 8}]'
    )
    spec = {'type': 'uniform', 'low': 0, 'high': 1}
    with pytest.raises(ValueError, match=r'gives model\.lr twice \(nested and dotted\)'):
        search_space_entries({'model': {'lr': spec}, 'model.lr': spec})
    with pytest.raises(ValueError, match=r'tune\.ray\.num_cpus configure a local Ray.*tune\.ray\.address=auto'):
        connect_ray({'address': 'auto', 'num_cpus': 2})
    with pytest.raises(FileNotFoundError, match='no sweep to resume under'):
        run_sweep(sweep_config(word_data, tmp_path, ray_dir, 'tune.resume=true'), tmp_path / 'new')
    with pytest.raises(FileNotFoundError, match='is not a sweep directory'):
        run_sweep(sweep_config(word_data, tmp_path, ray_dir, f'tune.resume={tmp_path}'), tmp_path / 'new')


def test_a_budget_without_intermediate_validations_is_allowed_with_a_warning(word_data, tmp_path, ray_dir, caplog):
    check_sweep_config(sweep_config(word_data, tmp_path, ray_dir, 'trainer.val_check_interval=1000'))
    assert 'trials validate only once, at the end (trainer.val_check_interval=1000 steps > trainer.max_steps=4)' in (
        caplog.text
    )


def test_trial_table_ranks_and_labels_trials(tmp_path):
    def result(trial: str, lr: float, finished: bool = True, **metrics: float) -> ray_tune.Result:
        metrics = {'config': {'model.lr': lr}, 'finished': finished, 'training_iteration': 2, 'step': 4, **metrics}
        return ray_tune.Result(metrics=metrics, checkpoint=None, error=None, path=str(tmp_path / trial))

    error = RuntimeError('Traceback (most recent call last):\n  File "x.py"\nValueError: bad optimizer')
    grid = [
        result('a', 1e-3, val_NED=50.0, val_loss=2.0),
        result('b', 2e-3, False, val_NED=60.0, val_loss=1.9),  # stopped early by the scheduler
        result('c', 3e-3, val_NED=60.0, val_loss=1.5),  # ties with b on NED, lower loss
        ray_tune.Result(metrics={}, checkpoint=None, error=error, path=str(tmp_path / 'd')),  # restored: no config
        result('e', 4e-3, False, val_NED=70.0, val_loss=1.0),  # running when the sweep was interrupted
    ]
    saved = {
        'a': SimpleNamespace(status='TERMINATED', config={'model.lr': 1e-3}),
        'd': SimpleNamespace(status='ERROR', config={'model.lr': 5e-3}),
        'e': SimpleNamespace(status='RUNNING', config={'model.lr': 4e-3}),
    }
    rows = trial_rows(grid, ['model.lr'], 'val_NED', 'max', saved)
    assert [(r.trial, r.status) for r in rows] == [
        ('e', 'unfinished'),
        ('c', 'completed'),
        ('b', 'stopped'),
        ('a', 'completed'),
        ('d', 'failed'),
    ]
    assert rows[-1].values == {'model.lr': 5e-3} and rows[-1].error == 'ValueError: bad optimizer'
    assert [r.trial for r in trial_rows(grid, ['model.lr'], 'val_loss', 'min', saved)] == ['e', 'c', 'b', 'a', 'd']
    write_tables(rows, ['model.lr'], tmp_path, 'summary line')
    table = read_trials(tmp_path)
    assert [r['trial'] for r in table] == ['e', 'c', 'b', 'a', 'd'] and table[1]['model.lr'] == '0.003'
    assert table[-1]['val_NED'] == '' and table[-1]['error'] == 'ValueError: bad optimizer'
    markdown = [re.sub(' +', ' ', line) for line in (tmp_path / 'trials.md').read_text().splitlines()]
    assert markdown[0] == 'summary line' and markdown[-1].startswith('| d | failed | 0.005 |')


def test_abinet_language_model_experiment_composes_with_tune(tmp_path):
    words = tmp_path / 'words.txt'
    words.write_text('abc\ndef\n')
    cfg = compose_config(['+experiment=tune_abinet-lm', f'data.text_file={words}'], config_name='tune')
    check_sweep_config(cfg)
    assert cfg.model.lm_only and cfg.data.module == 'text'
    assert dict(cfg.tune.search_space.model.lr) == {'type': 'loguniform', 'low': 1e-4, 'high': 3e-3}


def test_two_trial_sweep_writes_tables_and_a_trainable_best_config(word_data, tmp_path, ray_dir):
    # A validation after step 3; the budget (4 steps) ends between validations, so the trial validates once more.
    overrides = ['tune.num_samples=2', 'tune.search_space.model.lr.high=1e-2', 'trainer.val_check_interval=3']
    result = run_sweep(sweep_config(word_data, tmp_path, ray_dir, *overrides), tmp_path / 'sweep')
    sweep = tmp_path / 'sweep'
    rows = read_trials(sweep)
    assert [r['status'] for r in rows] == ['completed', 'completed'] and not result.interrupted
    for row in rows:
        assert 1e-4 <= float(row['model.lr']) <= 1e-2
        assert row['validations'] == '2' and row['step'] == '4'  # one report per validation, the last at the end
        assert 0 <= float(row['val_NED']) <= 100 and float(row['val_loss']) > 0
        assert (Path(row['path']) / 'run' / 'checkpoints' / 'last.ckpt').is_file()  # the trial's Lightning run
    assert result.best.trial == rows[0]['trial']
    assert float(rows[0]['val_NED']) >= float(rows[1]['val_NED'])  # best first
    markdown = re.sub(' +', ' ', (sweep / 'trials.md').read_text())
    assert 'Best: trial ' + rows[0]['trial'] in markdown and '| trial | status | model.lr |' in markdown

    # The best config is a complete primary config for ./train.py --config-dir <sweep> --config-name best_config.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(sweep), version_base='1.3'):
        best = compose(config_name='best_config', overrides=['trainer.max_steps=1', 'trainer.limit_val_batches=0'])
    assert best.model.lr == pytest.approx(float(rows[0]['model.lr']), rel=1e-12) and 'tune' not in best
    _, trainer = train(best, tmp_path / 'best_run')
    assert trainer.global_step == 1


class InterruptAtFirstCheckpoint(ray_tune.Callback):
    """Presses Ctrl+C (SIGINT to the driver) once a running trial has reported its first validation and checkpoint,
    as a user stopping a sweep would; a marker file makes it fire only once (Ray restores callbacks with the sweep)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        if not self.marker.exists():
            self.marker.write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGINT)


def test_failed_trial_does_not_stop_the_sweep_and_an_interrupted_sweep_resumes(word_data, tmp_path, ray_dir):
    # First trial: an optimizer name that makes the trial raise; second: a good one, interrupted mid-way.
    cfg = sweep_config(
        word_data,
        tmp_path,
        ray_dir,
        'tune.num_samples=2',
        'tune.max_concurrent_trials=1',
        '~tune.search_space.model.lr',
        '+tune.search_space.model.optimizer.name={type: choice, values: [adamw, bogus]}',
        'tune.search.points_to_evaluate=[{model.optimizer.name: bogus}, {model.optimizer.name: adamw}]',
    )
    marker = tmp_path / 'interrupted'
    first = run_sweep(cfg, tmp_path / 'sweep', callbacks=[InterruptAtFirstCheckpoint(marker)])
    sweep = tmp_path / 'sweep'
    assert first.interrupted and 'tune.resume=' in (sweep / 'trials.md').read_text()
    failed = [r for r in first.rows if r.status == 'failed']
    assert len(failed) == 1 and failed[0].values == {'model.optimizer.name': 'bogus'}
    assert "unknown optimizer 'bogus'" in failed[0].error  # the trial's own error, recorded in the table
    assert [(r.trial, r.status) for r in first.rows if r.status != 'failed'] == [(marker.read_text(), 'unfinished')]

    resumed = run_sweep(sweep_config(word_data, tmp_path, ray_dir, f'tune.resume={sweep}'), tmp_path / 'unused')
    assert resumed.sweep_dir == sweep and not resumed.interrupted and not (tmp_path / 'unused').exists()
    rows = {r['trial']: r for r in read_trials(sweep)}
    good = rows[marker.read_text()]  # the trial that was interrupted after its first validation
    assert good['status'] == 'completed' and good['model.optimizer.name'] == 'adamw'
    assert good['validations'] == '2' and good['step'] == '4'
    assert rows[failed[0].trial]['status'] == 'failed' and "unknown optimizer 'bogus'" in rows[failed[0].trial]['error']
    # It went on from the checkpoint of its first validation rather than from scratch.
    run = Path(good['path']) / 'run'
    assert (run / 'resumed_from' / 'last.ckpt').is_file()
    progress = [json.loads(line) for line in (Path(good['path']) / 'result.json').read_text().splitlines()]
    assert [p['step'] for p in progress] == [2, 4]
    assert resumed.best.trial == good['trial'] and (sweep / 'best_config.yaml').is_file()
