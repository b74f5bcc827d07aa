"""Plain user paths that crashed or misreported (issue probes): PARSeq called without no_grad, test.py --rotation, a
model of another script scored on its own charset, an empty table, loggers as a config choice, MGP-STR on a fresh
clone, export never leaving an unverified file, and the scripts' one-line errors."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from strhub.cli_args import run_cli
from strhub.config import compose_config
from strhub.data.lmdb_writer import LmdbWriter
from strhub.models.loading import build_system
from strhub.training import train
from tests.conftest import REPO_ROOT, TINY_PARSEQ

GREEK = 'αβγδεζηθικλμνξοπρστυφχψω'


def script(name: str):
    spec = importlib.util.spec_from_file_location(f'strhub_script_{name}', REPO_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def word_lmdb(path: Path, words: list[str]) -> Path:
    with LmdbWriter(path, overwrite=True) as writer:
        for word in words:
            img = Image.new('RGB', (100, 32), 'white')
            ImageDraw.Draw(img).text((4, 8), word, fill='black')
            buf = io.BytesIO()
            img.save(buf, format='PNG')
            writer.add(buf.getvalue(), word)
    return path


def train_tiny(data_root: Path, run_dir: Path, extra: list[str] = ()) -> Path:
    base = [o for o in TINY_PARSEQ if not (o.startswith('charset=') and any(e.startswith('charset=') for e in extra))]
    overrides = base + [
        'dataset=generated',
        f'data.root_dir={data_root}',
        'trainer.max_steps=2',
        'trainer.val_check_interval=2',
        *extra,
    ]
    train(compose_config(overrides), run_dir)
    return run_dir / 'checkpoints' / 'last.ckpt'


@pytest.fixture(scope='module')
def checkpoint(word_data, tmp_path_factory) -> Path:
    return train_tiny(word_data, tmp_path_factory.mktemp('run') / 'tiny')


# -- the three crashes -----------------------------------------------------------------------------------------------


def test_parseq_in_eval_mode_without_no_grad_matches_and_gives_gradients():
    cfg = compose_config(['model=parseq', 'model.arch.enc_depth=1'])
    model = build_system(OmegaConf.to_container(cfg.model, resolve=True)).model.eval()
    images = torch.randn(2, 3, 32, 128)
    with torch.no_grad():
        expected = model(images)
    images.requires_grad_(True)
    logits = model(images)  # the reference README's torch.hub usage: crashed in the one-layer cached loop
    assert logits.requires_grad and torch.equal(logits.detach(), expected)
    logits.softmax(-1).max(-1).values.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_test_script_with_rotation(checkpoint, word_data, tmp_path, capsys):
    results = tmp_path / 'r.json'
    main = script('test')
    assert main([str(checkpoint), '--test_dirs', str(word_data / 'test'), '--rotation', '90', '--num_workers', '0',
                 '--results', str(results)]) == 0  # fmt: skip
    assert '| IIIT5k' in capsys.readouterr().out
    saved = json.loads(results.read_text())
    assert saved['rotation'] == 90 and saved['results']['IIIT5k']['num_samples'] == 16


def test_a_model_of_another_script_is_scored_on_its_own_charset(tmp_path, capsys):
    charset_file = tmp_path / 'greek.txt'
    charset_file.write_text('\n'.join(GREEK) + '\n', encoding='utf-8')
    words = [GREEK[i % 24] + GREEK[(i * 7) % 24] + GREEK[(i * 5 + 3) % 24] for i in range(32)]
    root = tmp_path / 'data'
    word_lmdb(root / 'train' / 'generated' / 'part0', words)
    word_lmdb(root / 'val' / 'generated', words[:8])
    word_lmdb(root / 'test' / 'greek', words[:12])
    ckpt = train_tiny(root, tmp_path / 'run', ['charset=file', f'charset_file={charset_file}'])
    main = script('test')
    assert main([str(ckpt), '--test_dirs', str(root / 'test'), '--num_workers', '0']) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith('| greek'))
    assert row.split('|')[2].strip() == '12' and 'nan' not in table  # before: 0 samples and nan


def test_a_table_of_no_samples_is_an_error_that_says_why(checkpoint, tmp_path, capsys):
    word_lmdb(tmp_path / 'test' / 'greek', ['αβγ', 'δεζ'])  # the Latin model cannot read any of these labels
    main = script('test')
    with pytest.raises(ValueError, match=r'no sample of greek could be scored \(2 empty label\)'):
        main([str(checkpoint), '--test_dirs', str(tmp_path / 'test'), '--num_workers', '0'])
    assert run_cli(main, [str(checkpoint), '--test_dirs', str(tmp_path / 'test'), '--num_workers', '0']) == 2
    err = capsys.readouterr().err
    assert 'error: no sample of greek could be scored' in err and 'Traceback' not in err


# -- also found ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(('override', 'expected'), [('+trainer.logger=false', None), ('logger=csv', 'metrics.csv')])
def test_loggers_are_a_config_choice(word_data, tmp_path, override, expected):
    train_tiny(word_data, tmp_path / 'run', [override])
    written = {p.name for p in (tmp_path / 'run').rglob('*') if p.is_file()}
    assert not any(name.startswith('events.out.tfevents') for name in written)
    if expected:
        assert expected in written


def test_mgp_str_trains_on_a_fresh_clone_without_vocabulary_files(word_data, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/vocab/ here, as on a fresh clone
    from tests.conftest import training_losses
    from tests.test_mgpstr import TINY_MGPSTR

    overrides = [o for o in TINY_MGPSTR if not o.startswith(('model.bpe.source', 'model.wordpiece.source'))]
    with caplog.at_level('INFO'):
        losses = training_losses(overrides, word_data, tmp_path / 'run', steps=2)
    assert len(losses) == 2
    assert (
        'model.bpe: the published vocabulary (data/vocab/gpt2/vocab.json, data/vocab/gpt2/merges.txt) is not here'
        in (caplog.text)
    )
    assert 'trained a' in caplog.text and 'wordpiece vocabulary' in caplog.text
    cfg = compose_config(TINY_MGPSTR[:1] + ['model.bpe.source=files'])
    with pytest.raises(FileNotFoundError, match='GPT-2 vocab.json not found'):  # at build time, before any data set-up
        build_system(OmegaConf.to_container(cfg.model, resolve=True))


def test_export_never_leaves_an_unverified_file(checkpoint, tmp_path, monkeypatch):
    import strhub.export as export
    from strhub.models.loading import load

    def differs(*args, **kwargs):
        raise export.ExportError('ONNX output differs from PyTorch (max abs logit difference 5)')

    monkeypatch.setattr(export, 'verify_onnx', differs)
    out = tmp_path / 'out' / 'model.onnx'
    with pytest.raises(export.ExportError, match='differs'):
        export.export_onnx(load(checkpoint), out, dynamic_batch=True, exporter='legacy')
    assert list(out.parent.iterdir()) == []
    monkeypatch.setattr(export, 'verify_onnx', lambda *args, **kwargs: 0.0)
    assert export.export_onnx(load(checkpoint), out, exporter='legacy')['max_abs_diff'] == 0.0
    assert [p.name for p in out.parent.iterdir()] == ['model.onnx']  # moved into place once verified


# -- the scripts: one clear line per user error, every readable file read --------------------------------------------


def test_scripts_print_one_line_for_user_errors(checkpoint, tmp_path, capsys):
    for name, argv in [
        ('test', [str(tmp_path / 'missing.ckpt')]),
        ('read', [str(tmp_path / 'missing.ckpt'), '--images', 'a.png']),
        ('test', [str(checkpoint), '--test_dirs', str(tmp_path / 'nowhere')]),
    ]:
        assert run_cli(script(name), argv) == 2
        err = capsys.readouterr().err
        assert err.count('error: ') == 1 and 'Traceback' not in err and '--debug' in err
    with pytest.raises(FileNotFoundError):
        run_cli(script('test'), [str(tmp_path / 'missing.ckpt'), '--debug'])


def test_read_reads_every_readable_file_and_reports_the_others(checkpoint, tmp_path, capsys):
    good = tmp_path / 'good.png'
    Image.new('RGB', (100, 32), 'white').save(good)
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    (tmp_path / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'folder').mkdir()
    Image.new('I;16', (100, 32), 40000).save(tmp_path / 'deep.png')
    Image.new('CMYK', (100, 32), (0, 0, 0, 0)).save(tmp_path / 'cmyk.jpg')
    Image.new('RGBA', (1, 1)).save(tmp_path / 'tiny.png')
    images = ['good.png', 'bad.png', 'empty.jpg', 'folder', 'missing.png', 'deep.png', 'cmyk.jpg', 'tiny.png']
    run_dir = checkpoint.parent.parent  # a run directory stands for its last.ckpt
    rc = script('read')([str(run_dir), '--images', *[str(tmp_path / name) for name in images]])
    out, err = capsys.readouterr()
    assert rc == 1
    read = {line.split(':')[0] for line in out.splitlines()}
    assert read == {str(tmp_path / name) for name in ('good.png', 'deep.png', 'cmyk.jpg', 'tiny.png')}
    for name, reason in [('bad.png', 'cannot identify'), ('empty.jpg', 'cannot identify'), ('folder', 'directory'),
                         ('missing.png', 'no such file')]:  # fmt: skip
        assert f'cannot read image {tmp_path / name}: ' in err and reason in err
    assert '4 of 8 file(s) could not be read' in err


@pytest.mark.parametrize(
    ('overrides', 'hint'),
    [
        (['model.batchsize=8'], "'model.batchsize' is not a config key; did you mean model.batch_size?"),
        (['trainer.max_step=3'], 'did you mean trainer.max_steps?'),
        (
            ['+experiment=parseq-tinyy'],
            "'experiment=parseq-tinyy' is not a config of the experiment group; did you mean parseq-tiny",
        ),  # fmt: skip
        (['charset=94-full'], 'did you mean 94_full?'),
        (['model.batch_size=8'], None),
    ],
)
def test_a_refused_override_gets_the_nearest_valid_name(overrides, hint):
    from strhub.config import override_hint

    found = override_hint(overrides)
    assert (found is None) if hint is None else (hint in found)


def test_train_script_prints_the_hint_after_hydras_message(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), 'model.batchsize=8'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and 'did you mean model.batch_size?' in proc.stderr.splitlines()[-1]
