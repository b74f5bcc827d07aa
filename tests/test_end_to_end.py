"""A user's whole journey on a tiny config: train -> checkpoint -> resume -> test.py -> bench.py -> read.py."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from strhub.config import compose_config
from strhub.models.loading import build_system, load
from strhub.training import train
from tests.conftest import REPO_ROOT, TINY_PARSEQ


def run_script(name: str, argv: list[str]) -> int:
    """Calls a top-level script's main() in-process (the scripts are thin; this is what a user runs)."""
    spec = importlib.util.spec_from_file_location(f'strhub_script_{name}', REPO_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope='module')
def trained(word_data, tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    overrides = TINY_PARSEQ + [
        'dataset=generated',
        f'data.root_dir={word_data}',
        'trainer.max_steps=4',
        'trainer.val_check_interval=2',
    ]
    cfg = compose_config(overrides)
    train(cfg, out / 'first')
    return overrides, out


def test_train_writes_checkpoints_with_embedded_config(trained):
    _, out = trained
    ckpts = sorted((out / 'first' / 'checkpoints').glob('*.ckpt'))
    assert [p.name for p in ckpts if p.name == 'last.ckpt'] and len(ckpts) == 2  # last + best by val accuracy
    data = torch.load(out / 'first' / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=True)
    assert data['global_step'] == 4
    assert data['strhub_system'] == 'parseq'  # the registered name, not an import path
    assert data['hyper_parameters']['name'] == 'parseq-tiny' and data['hyper_parameters']['arch']['embed_dim'] == 32
    system = load(out / 'first' / 'checkpoints' / 'last.ckpt')
    assert not system.training and system.model.pos_queries.shape[1] == 9  # max_label_length 8 + EOS


def test_resume_continues_from_the_saved_step(trained):
    overrides, out = trained
    # The step-2 checkpoint (best by validation) stands in for a run interrupted half-way.
    interrupted = next(p for p in (out / 'first' / 'checkpoints').glob('*.ckpt') if p.name != 'last.ckpt')
    assert torch.load(interrupted, map_location='cpu', weights_only=True)['global_step'] == 2
    _, trainer = train(compose_config(overrides + [f'ckpt_path={interrupted}']), out / 'resumed')
    assert trainer.global_step == 4
    resumed = torch.load(out / 'resumed' / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=True)
    assert resumed['global_step'] == 4
    # Optimiser and scheduler state carried over: Adam's step counts and the LR schedule continue from 2.
    assert {int(s['step']) for s in resumed['optimizer_states'][0]['state'].values()} == {4}
    assert resumed['lr_schedulers'][0]['last_epoch'] == 4
    with pytest.raises(FileNotFoundError, match='cannot resume'):
        train(compose_config(overrides + [f'ckpt_path={out / "nowhere"}']), out / 'bad')


def test_test_script_prints_table_and_writes_files(trained, word_data, tmp_path, capsys):
    _, out = trained
    ckpt = out / 'first' / 'checkpoints' / 'last.ckpt'
    results, errors = tmp_path / 'results.json', tmp_path / 'errors.tsv'
    rc = run_script(
        'test',
        [
            str(ckpt),
            '--data_root',
            str(word_data),
            '--benchmark_all_eval',
            '--num_workers',
            '0',
            '--device',
            'cpu',
            '--results',
            str(results),
            '--errors',
            str(errors),
            'refine_iters:int=0',
        ],
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert '| Dataset' in table and '| IIIT5k' in table and '| Combined' in table
    figures = json.loads(results.read_text())
    assert figures['results']['IIIT5k']['num_samples'] == 16
    assert 'SVT' in figures['missing']
    lines = errors.read_text().splitlines()
    assert lines[0] == 'dataset\tkey\tlabel\tprediction\tconfidence'
    assert len(lines) - 1 == round(16 * (1 - figures['results']['IIIT5k']['accuracy'] / 100))


def test_read_script(trained, word_data, tmp_path, capsys):
    _, out = trained
    from PIL import Image

    paths = []
    for i in range(3):
        path = tmp_path / f'img{i}.png'
        Image.new('RGB', (100, 32), 'white').save(path)
        paths.append(str(path))
    assert (
        run_script('read', [str(out / 'first' / 'checkpoints' / 'last.ckpt'), '--images', *paths, '--device', 'cpu'])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(p + ': ') and line.endswith(')') for line, p in zip(lines, paths))


def test_bench_script_prints_tables(tmp_path):
    overrides = [o for o in TINY_PARSEQ if not o.startswith(('data.', 'trainer.'))]
    cmd = [
        sys.executable,
        str(REPO_ROOT / 'bench.py'),
        *overrides,
        'device=cpu',
        'batch_sizes=[1,2]',
        'min_run_time=0.05',
        '+range=true',
        f'+json={tmp_path / "bench.json"}',
        f'output_dir={tmp_path}',
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = re.sub(' +', ' ', proc.stdout)  # tables are padded to their columns
    assert '| Batch | Median (ms)' in out and '| Module | Params (M) | GFLOPs' in out
    report = json.loads((tmp_path / 'bench.json').read_text())
    assert [r['batch_size'] for r in report['latency']] == [1, 2]
    assert len(report['range']) == 8 and report['compute'][0]['module'] == 'total'
    assert report['compute'][0]['gflops'] > 0


def test_bad_inputs_fail_clearly(tmp_path, word_data):
    with pytest.raises(FileNotFoundError, match='not found: give an existing file'):
        load(tmp_path / 'missing.ckpt')
    with pytest.raises((MissingConfigException, ConfigCompositionException), match='nope'):
        compose_config(['+experiment=nope'])
    with pytest.raises(MissingConfigException, match='(?s)charset/bogus.*Available options.*36_lowercase'):
        compose_config(['charset=bogus'])
    for override, key in [('+model.arch.bogus=1', 'model.arch'), ('+model.bogus=1', 'model config')]:
        cfg = compose_config(TINY_PARSEQ + [override])
        with pytest.raises(ValueError, match=rf"unknown {key} key\(s\) \['bogus'\].*valid keys: .*embed_dim|lr"):
            build_system(OmegaConf.to_container(cfg.model, resolve=True))
    with pytest.raises(ValueError, match='unknown normalization'):
        cfg = compose_config(
            TINY_PARSEQ + ['model.preprocess.normalization=bogus', f'data.root_dir={word_data}', 'dataset=generated']
        )
        train(cfg, tmp_path / 'run')
    with pytest.raises(FileNotFoundError, match='charset file'):
        compose_and_build = compose_config(TINY_PARSEQ + ['charset=file', 'charset_file=/nonexistent/chars.txt'])
        build_system(OmegaConf.to_container(compose_and_build.model, resolve=True))
    with pytest.raises(ValueError, match='bad model option'):
        run_script('read', ['x.ckpt', '--images', 'a.png', 'refine_iters=2'])


def test_stochastic_weight_averaging_option(word_data, tmp_path):
    overrides = TINY_PARSEQ + [
        'dataset=generated',
        f'data.root_dir={word_data}',
        'trainer.max_epochs=2',
        'trainer.val_check_interval=4',
        'model.swa={swa_lrs: 1e-3, swa_epoch_start: 1}',
    ]
    system, trainer = train(compose_config(overrides), tmp_path / 'swa')
    swa = next(c for c in trainer.callbacks if type(c).__name__ == 'StochasticWeightAveraging')
    assert trainer.current_epoch == 2 and int(swa.n_averaged) >= 1  # weights were averaged from epoch 1 on
