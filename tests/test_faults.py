"""Nothing lost, nothing miscounted: killed runs, full disks, --overwrite, interrupted and truncated LMDBs, undecodable
test images, and the silent misreadings found by probing (16-bit images, charset typos, shared run directories,
unreadable files among good ones, bad config numbers)."""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import lmdb
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from strhub.checkpointing import CheckpointWriteError, RunDirectoryLock, resolve_resume_path, save_atomically
from strhub.config import compose_config
from strhub.data.charsets import resolve_charset
from strhub.data.lmdb_dataset import LmdbDataset, LmdbFormatError, find_lmdb_dirs
from strhub.data.lmdb_writer import LmdbWriter
from strhub.data.module import SceneTextDataModule
from strhub.data.preprocess import Preprocess, convert_mode
from strhub.evaluation import discover_test_sets, format_skipped, run_evaluation
from strhub.metrics import COMBINED, TextNormalizer
from strhub.models.loading import build_system
from strhub.training import train
from tests.conftest import REPO_ROOT, TINY_PARSEQ, make_word_lmdb

PYTHON = sys.executable


def png_bytes(text_width: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (32, text_width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


# -- 1. a killed run keeps its last steps ----------------------------------------------------------------------------


def _logged_steps(log_file: Path) -> list[int]:
    if not log_file.is_file():
        return []
    return [int(m) for m in re.findall(r'step (\d+)/', log_file.read_text(errors='replace'))]


def test_kill_9_on_a_plateau_keeps_the_last_steps_and_resumes_there(word_data, tmp_path):
    run_dir = tmp_path / 'run'
    every = 5
    overrides = TINY_PARSEQ + [
        'dataset=generated',
        f'data.root_dir={word_data}',
        'trainer.max_steps=100000',
        'trainer.max_epochs=-1',
        'trainer.val_check_interval=10',
        f'checkpoint.every_n_steps={every}',
        'checkpoint.every_minutes=0',
        'progress.log_lines=true',
        'progress.every_n_steps=1',
    ]
    proc = subprocess.Popen(
        [PYTHON, str(REPO_ROOT / 'train.py'), *overrides, f'hydra.run.dir={run_dir}'],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    log_file = run_dir / 'train.log'
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if max(_logged_steps(log_file), default=0) >= 37:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    reached = max(_logged_steps(log_file))
    last = run_dir / 'checkpoints' / 'last.ckpt'
    saved = torch.load(last, map_location='cpu', weights_only=True)['global_step']
    # val_accuracy stays 0 on this plateau: the best checkpoint was written once (step 10), last.ckpt kept going.
    assert saved > 10 and reached - saved <= every, (saved, reached)

    class StartRecorder(pl.Callback):
        start = None

        def on_train_start(self, trainer, module):
            StartRecorder.start = trainer.global_step

    resumed = [o for o in overrides if not o.startswith(('trainer.max_steps', 'progress.', 'checkpoint.every_min'))]
    cfg = compose_config(resumed + [f'trainer.max_steps={saved + 3}', f'ckpt_path={run_dir}'])
    _, trainer = train(cfg, run_dir, callbacks=[StartRecorder()])
    assert StartRecorder.start == saved and trainer.global_step == saved + 3
    # A write cut short by the kill (if it hit one) was cleaned up by the resumed run, which held the directory.
    assert not list((run_dir / 'checkpoints').glob('.*.tmp')), 'a partial checkpoint file was left behind'


def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, caplog):
    checkpoints = tmp_path / 'run' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    save_atomically({'global_step': 7}, checkpoints / 'epoch0-step7.ckpt')
    save_atomically({'global_step': 9}, checkpoints / 'last.ckpt')
    assert resolve_resume_path(tmp_path / 'run') == str(checkpoints / 'last.ckpt')
    data = (checkpoints / 'last.ckpt').read_bytes()
    (checkpoints / 'last.ckpt').write_bytes(data[: len(data) // 2])  # as a kill during a non-atomic copy left it
    with caplog.at_level('WARNING'):
        assert resolve_resume_path(tmp_path / 'run') == str(checkpoints / 'epoch0-step7.ckpt')
    assert 'resuming from the newest loadable checkpoint' in caplog.text
    (checkpoints / 'epoch0-step7.ckpt').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='no loadable checkpoint'):
        resolve_resume_path(tmp_path / 'run')


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / 'last.ckpt'
    save_atomically({'global_step': 1, 'w': torch.ones(3)}, target)
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b'PK\x03\x04' + b'\0' * 1000)  # part of the archive made it to disk, then the disk filled up
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(CheckpointWriteError, match='disk or your quota is full.*previous last.ckpt is kept'):
        save_atomically({'global_step': 2}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt']


def test_a_real_write_limit_while_saving_gives_the_clear_error(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past N bytes (EFBIG), as a full disk does; in a subprocess so the
    # limit does not apply to the test runner.
    code = f"""
import resource, signal, torch
from strhub.checkpointing import CheckpointWriteError, save_atomically
save_atomically({{'w': torch.zeros(10)}}, {str(tmp_path / 'last.ckpt')!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    save_atomically({{'w': torch.zeros(100_000)}}, {str(tmp_path / 'last.ckpt')!r})
except CheckpointWriteError as e:
    print('CLEAR', e)
"""
    out = subprocess.run([PYTHON, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert 'CLEAR could not write checkpoint' in out.stdout, out.stderr[-2000:]
    assert torch.load(tmp_path / 'last.ckpt', weights_only=True)['w'].shape == (10,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt']


# -- 2. --overwrite replaces datasets only ---------------------------------------------------------------------------


def _image_folder(root: Path, num: int = 3) -> Path:
    images = root / 'images'
    images.mkdir(parents=True)
    lines = []
    for i in range(num):
        (images / f'w{i}.png').write_bytes(png_bytes(seed=i))
        lines.append(f'w{i}.png\tword{i}')
    (images / 'labels.tsv').write_text('\n'.join(lines) + '\n')
    return images


def create_lmdb_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(REPO_ROOT / 'tools' / 'create_lmdb.py'), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_lmdb_overwrite_never_deletes_what_is_not_an_lmdb(tmp_path):
    images = _image_folder(tmp_path)
    before = sorted(p.name for p in images.iterdir())
    base = ['tsv', '--images', str(images), '--labels', str(images / 'labels.tsv'), '--overwrite']
    refused = create_lmdb_cli(*base, '--out', str(images))
    assert refused.returncode != 0 and 'inside the image folder' in refused.stderr
    refused = create_lmdb_cli(*base, '--out', str(images / 'lmdb'))
    assert refused.returncode != 0 and 'inside the image folder' in refused.stderr
    assert sorted(p.name for p in images.iterdir()) == before

    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'todo.txt').write_text('keep me')
    (notes / 'photo.jpg').write_bytes(b'\xff\xd8 not really')
    refused = create_lmdb_cli(*base, '--out', str(notes))
    assert refused.returncode != 0 and 'is not an LMDB dataset (it holds photo.jpg, todo.txt)' in refused.stderr
    assert (notes / 'todo.txt').read_text() == 'keep me' and (notes / 'photo.jpg').exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]

    dataset = tmp_path / 'val' / 'mine'
    assert create_lmdb_cli(*base[:-1], '--out', str(dataset)).returncode == 0
    (images / 'labels.tsv').write_text('w0.png\tonly\n')
    assert create_lmdb_cli(*base, '--out', str(dataset)).returncode == 0  # an LMDB of ours is replaced
    assert LmdbDataset(dataset, cache_dir=None).labels == ['only']
    assert sorted(p.name for p in (tmp_path / 'val').iterdir()) == ['mine']


# -- 3. an interrupted writer leaves nothing that looks finished -----------------------------------------------------


def test_a_killed_writer_leaves_nothing_discovery_or_check_lmdb_accepts(tmp_path, caplog):
    out = tmp_path / 'test' / 'IIIT5k'
    code = f"""
import os, signal
from strhub.data.lmdb_writer import LmdbWriter
writer = LmdbWriter({str(out)!r}, commit_every=10)
for i in range(25):
    writer.add({png_bytes()!r}, 'w%d' % i)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([PYTHON, '-c', code], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(out.parent.glob('.IIIT5k.*.tmp'))
    assert len(leftovers) == 1 and (leftovers[0] / 'data.mdb').is_file()
    assert find_lmdb_dirs(tmp_path) == [] and discover_test_sets([tmp_path / 'test']) == {}
    check = subprocess.run(
        [PYTHON, str(REPO_ROOT / 'tools' / 'check_lmdb.py'), str(leftovers[0])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode != 0 and 'num-samples' in check.stderr
    with caplog.at_level('WARNING'):
        make_word_lmdb(out, 4)
    assert 'interrupted writer' in caplog.text and not list(out.parent.glob('.IIIT5k.*.tmp'))
    assert find_lmdb_dirs(tmp_path) == [out]


# -- 4. a truncated or broken data.mdb is an error, never SIGBUS ------------------------------------------------------


def _probe(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _big_lmdb(path: Path) -> Path:
    with LmdbWriter(path) as writer:
        for i in range(40):
            writer.add(png_bytes(text_width=400, seed=i), f'w{i}')
    return path


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'not_lmdb'])
def test_a_damaged_data_mdb_gives_one_clear_line(tmp_path, damage):
    path = _big_lmdb(tmp_path / 'set')
    data = path / 'data.mdb'
    if damage == 'truncated':
        os.truncate(data, data.stat().st_size // 2)
    elif damage == 'empty':
        os.truncate(data, 0)
    else:
        data.write_bytes(os.urandom(20000))
    expected = {'truncated': 'is truncated', 'empty': 'is empty', 'not_lmdb': 'not an LMDB file'}[damage]
    for code in (
        f'from strhub.data.lmdb_dataset import LmdbDataset\nLmdbDataset({str(path)!r}, cache_dir=None)',
        f'from strhub.data.inspect import inspect_lmdb\ninspect_lmdb({str(path)!r})',
    ):
        proc = _probe(code)
        assert proc.returncode == 1, f'exit {proc.returncode} (-7 is SIGBUS): {proc.stderr[-1500:]}'
        assert 'LmdbFormatError' in proc.stderr and expected in proc.stderr
    check = subprocess.run(
        [PYTHON, str(REPO_ROOT / 'tools' / 'check_lmdb.py'), str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 2 and expected in check.stderr and 'Traceback' not in check.stderr


@pytest.mark.parametrize('count', [b'abc', b'0', b'-3', None])
def test_num_samples_must_be_a_positive_integer(tmp_path, count):
    path = tmp_path / 'set'
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b'image-000000001', png_bytes())
        txn.put(b'label-000000001', b'a')
        if count is not None:
            txn.put(b'num-samples', count)
    env.close()
    with pytest.raises(LmdbFormatError, match='num-samples|no num-samples key'):
        LmdbDataset(path, cache_dir=None)


# -- 5. an undecodable test image is skipped and counted, never replaced ---------------------------------------------


@pytest.fixture(scope='module')
def tiny_system():
    cfg = compose_config(TINY_PARSEQ)
    return build_system(OmegaConf.to_container(cfg.model, resolve=True)).eval()


def _set_with_a_bad_image(path: Path) -> Path:
    with LmdbWriter(path) as writer:
        for i in range(6):
            writer.add(b'not an image at all' if i == 4 else png_bytes(seed=i), f'word{i}')
    return path


def test_an_undecodable_test_image_is_skipped_and_counted(tmp_path, tiny_system):
    sets = {'SVT': _set_with_a_bad_image(tmp_path / 'test' / 'SVT')}
    datamodule = SceneTextDataModule(
        root_dir=str(tmp_path),
        charset_train=tiny_system.charset_train,
        preprocess={'img_size': list(tiny_system.hparams.img_size)},
        batch_size=4,
        num_workers=0,
        cache_dir=None,
    )
    loaders = datamodule.test_dataloaders(sets)
    evaluation = run_evaluation(
        tiny_system, loaders, TextNormalizer.from_options(), collect_errors=True, progress=False
    )
    assert evaluation.results['SVT']['num_samples'] == 5 and evaluation.results[COMBINED]['num_samples'] == 5
    assert evaluation.skipped['SVT'].counts == {'corrupt image': 1}
    assert evaluation.skipped['SVT'].keys == ['SVT:image-000000005']
    # The wrong predictions name the five scored samples, each once, and never the skipped one.
    keys = [e.key for e in evaluation.errors]
    assert len(keys) == len(set(keys)) and 'SVT:label-000000005' not in keys
    assert set(keys) <= {f'SVT:label-{i:09d}' for i in (1, 2, 3, 4, 6)}
    assert 'SVT: 1 not scored (1 corrupt image; e.g. SVT:image-000000005)' in format_skipped(evaluation.skipped)


# -- also silent before ----------------------------------------------------------------------------------------------


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    path = tmp_path / 'deep.png'
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith('I')
        gray = np.asarray(convert_mode(img, 'L'))
    assert gray.min() == 0 and gray.max() == 255 and 100 < gray.mean() < 155  # before: every pixel 255
    tensor = Preprocess(img_size=(16, 64), normalization='zero_one')(Image.open(path))
    assert float(tensor.std()) > 0.2
    rgba = Image.new('RGBA', (8, 8), (0, 0, 0, 0))  # a fully transparent image reads as white, not black
    assert np.asarray(convert_mode(rgba, 'RGB')).min() == 255


def test_a_charset_name_typo_is_an_error_and_literals_stay_possible():
    with pytest.raises(ValueError, match=r"unknown charset name '62_mixedcase'; did you mean '62_mixed-case'"):
        resolve_charset('62_mixedcase')
    assert resolve_charset('chars:62_mixedcase') == '62_mixedcas'
    assert resolve_charset('αβγ') == 'αβγ'
    with pytest.raises(ValueError, match='model.charset_train|unknown charset name'):
        cfg = compose_config(TINY_PARSEQ + ['model.charset_train=36_lowercas'])
        build_system(OmegaConf.to_container(cfg.model, resolve=True))


def test_a_run_directory_takes_one_training_run(tmp_path):
    run_dir = tmp_path / 'run'
    with RunDirectoryLock(run_dir):
        with pytest.raises(RuntimeError, match=r'in use by another training process \(pid \d+\)'):
            with RunDirectoryLock(run_dir):
                pass
    (run_dir / 'checkpoints').mkdir()
    save_atomically({'global_step': 3}, run_dir / 'checkpoints' / 'last.ckpt')
    with pytest.raises(FileExistsError, match='already holds the checkpoints of another run'):
        with RunDirectoryLock(run_dir):
            pass
    with RunDirectoryLock(run_dir, resume=str(run_dir / 'checkpoints' / 'last.ckpt')):
        pass  # resuming the run in its own directory is allowed


@pytest.mark.parametrize(('value', 'message'), [('-4', 'got -4'), ('abc', "got 'abc'"), ('0', 'got 0')])
def test_config_numbers_are_checked_with_their_key(value, message):
    cfg = compose_config(TINY_PARSEQ + [f'model.batch_size={value}'])
    with pytest.raises(ValueError, match=rf'model\.batch_size must be a positive integer, {message}'):
        build_system(OmegaConf.to_container(cfg.model, resolve=True))
    cfg = compose_config(TINY_PARSEQ + ['model.max_label_length=0'])
    with pytest.raises(ValueError, match='model.max_label_length must be a positive integer'):
        build_system(OmegaConf.to_container(cfg.model, resolve=True))


class BatchRecorder(pl.Callback):
    """Records the labels of every training batch, by global step; stops the run after ``stop_after`` steps as a
    kill would (no final checkpoint)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.labels: dict[int, list[str]] = {}
        self.stop_after = stop_after

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.labels[trainer.global_step + 1] = list(batch[1])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.stop_after is not None and trainer.global_step >= self.stop_after:
            raise KeyboardInterrupt  # as Ctrl-C would: Lightning stops the run and exits, no final checkpoint


def test_a_run_resumed_mid_epoch_sees_the_batches_the_uninterrupted_run_saw(word_data, tmp_path):
    # 64 training words in batches of 16: 4 batches an epoch; the interruption at step 6 is mid-epoch 1.
    overrides = TINY_PARSEQ + ['dataset=generated', f'data.root_dir={word_data}', 'trainer.max_steps=10']
    overrides += ['trainer.max_epochs=-1', 'trainer.val_check_interval=4', 'checkpoint.every_n_steps=1']
    whole = BatchRecorder()
    train(compose_config(overrides), tmp_path / 'whole', callbacks=[whole])
    assert sorted(whole.labels) == list(range(1, 11))
    first = BatchRecorder(stop_after=6)
    with pytest.raises(SystemExit):  # Lightning's answer to the interrupt: exit, as a killed run would stop
        train(compose_config(overrides), tmp_path / 'cut', callbacks=[first])
    saved = torch.load(tmp_path / 'cut' / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=True)
    assert saved['global_step'] == 6
    rest = BatchRecorder()
    train(compose_config(overrides + [f'ckpt_path={tmp_path / "cut"}']), tmp_path / 'cut', callbacks=[rest])
    assert sorted(rest.labels) == [7, 8, 9, 10]
    assert {step: rest.labels[step] for step in rest.labels} == {step: whole.labels[step] for step in rest.labels}
    assert first.labels == {step: whole.labels[step] for step in first.labels}
