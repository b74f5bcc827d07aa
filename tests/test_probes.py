"""The probe table of bad input not covered elsewhere: awkward annotation files, LMDB oddities, checkpoints that are
not ours, and image files of every kind given to read.py. Each probe gets a correct result, a counted skip, or one
clear error line; nothing is lost and no good input is dropped because of a bad one."""

from __future__ import annotations

import io
import os

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from strhub.data.create import create_lmdb, read_tsv_annotations
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_dataset import LmdbDataset
from strhub.models.loading import load
from strhub.reading import open_image
from tests.test_user_paths import script


def png(width: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new('RGB', (width, 16), 'white').save(buf, format='PNG')
    return buf.getvalue()


# -- create_lmdb: awkward annotation files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('text', 'labels'),
    [
        ('a.png\tone\na.png\tone\n', ['one', 'one']),  # duplicate names: written as listed
        ('a.png\tone\n\n\n   \nb.png\ttwo\n', ['one', 'two']),  # blank lines are skipped, not errors
        ('a.png\tone\r\nb.png\ttwo\r\n', ['one', 'two']),  # CRLF endings do not end up in the labels
        ('a.png\tab\tc\n', ['ab\tc']),  # only the first tab separates; the rest is the label
        ('a.png\tστρ\nb.png\tcafé\n', ['στρ', 'café']),  # Unicode labels are stored as UTF-8
        ('\ufeffa.png\tone\n', ['one']),  # a UTF-8 byte-order mark is not part of the first file name
    ],
)
def test_annotation_files_as_users_write_them(tmp_path, text, labels):
    (tmp_path / 'a.png').write_bytes(png())
    (tmp_path / 'b.png').write_bytes(png(50))
    (tmp_path / 'labels.tsv').write_bytes(text.encode('utf-8'))
    summary = create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', tmp_path), tmp_path / 'out')
    assert summary.written == len(labels) and not summary.skipped
    assert LmdbDataset(tmp_path / 'out', cache_dir=None).labels == labels


# -- LMDB oddities ---------------------------------------------------------------------------------------------------


def _lmdb(path, entries: dict[bytes, bytes]):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()
    return path


def test_more_samples_declared_than_stored_are_counted(tmp_path):
    path = _lmdb(tmp_path / 'set', {b'num-samples': b'5', b'image-000000001': png(), b'label-000000001': b'a'})
    dataset = LmdbDataset(path, cache_dir=None)
    assert dataset.labels == ['a'] and dataset.skipped['missing label']['count'] == 4


def test_over_long_labels_are_filtered_and_counted(tmp_path):
    entries = {b'num-samples': b'2', b'image-000000001': png(), b'label-000000001': b'a' * 300}
    entries |= {b'image-000000002': png(), b'label-000000002': b'ok'}
    dataset = LmdbDataset(_lmdb(tmp_path / 'set', entries), LabelFilter('abcdefghijklmnopqrstuvwxyz'), cache_dir=None)
    assert dataset.labels == ['ok'] and dataset.skipped['label too long']['count'] == 1


def test_a_folder_that_is_not_an_lmdb_and_a_missing_path_are_one_line_each(checkpoint_file, tmp_path, capsys):
    from strhub.cli_args import run_cli

    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'a.txt').write_text('x')
    for target, message in [(tmp_path / 'notes', 'no LMDB (a directory holding data.mdb) under'),
                            (tmp_path / 'nowhere', 'does not exist')]:  # fmt: skip
        assert run_cli(script('test'), [str(checkpoint_file), '--test_dirs', str(target)]) == 2
        err = capsys.readouterr().err
        assert f'error: {"dataset path " if message == "does not exist" else ""}' in err and message in err
    assert (tmp_path / 'notes' / 'a.txt').read_text() == 'x'


def test_a_read_only_lmdb_is_read_without_writing(tmp_path):
    path = _lmdb(tmp_path / 'set', {b'num-samples': b'1', b'image-000000001': png(), b'label-000000001': b'a'})
    (path / 'lock.mdb').unlink(missing_ok=True)
    for p in (path / 'data.mdb', path):
        os.chmod(p, 0o444 if p.is_file() else 0o555)
    try:
        dataset = LmdbDataset(path, cache_dir=None)
        assert dataset[0][1] == 'a' and sorted(p.name for p in path.iterdir()) == ['data.mdb']  # no lock file made
    finally:
        os.chmod(path, 0o755)


# -- checkpoints that are not ours -----------------------------------------------------------------------------------


@pytest.mark.parametrize('content', ['truncated', 'random', 'unknown_system'])
def test_bad_checkpoints_are_one_clear_error(checkpoint_file, tmp_path, content):
    path = tmp_path / 'bad.ckpt'
    raw = checkpoint_file.read_bytes()
    if content == 'truncated':
        path.write_bytes(raw[: len(raw) // 2])
        expected = 'is not a readable checkpoint'
    elif content == 'random':
        path.write_bytes(os.urandom(4000))
        expected = 'is not a readable checkpoint'
    else:
        data = torch.load(checkpoint_file, weights_only=True)
        data['strhub_system'] = 'strhub.models.nope.NopeSystem'
        torch.save(data, path)
        expected = 'is not a registered strhub system'
    with pytest.raises((ValueError, KeyError), match=expected):
        load(path)


@pytest.fixture(scope='module')
def checkpoint_file(word_data, tmp_path_factory):
    from tests.test_user_paths import train_tiny

    return train_tiny(word_data, tmp_path_factory.mktemp('run') / 'tiny')


# -- image files of every kind ---------------------------------------------------------------------------------------


def _animated_gif(path):
    frames = [Image.new('P', (60, 20), i) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format='JPEG')
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])


@pytest.mark.parametrize(
    ('name', 'make', 'readable'),
    [
        ('gray.png', lambda p: Image.new('L', (60, 20), 128).save(p), True),
        ('rgba.png', lambda p: Image.new('RGBA', (60, 20), (0, 0, 0, 0)).save(p), True),
        ('one.png', lambda p: Image.new('RGB', (1, 1)).save(p), True),
        ('huge.png', lambda p: Image.new('L', (10000, 10000), 255).save(p), True),
        ('anim.gif', _animated_gif, True),
        ('cmyk.jpg', lambda p: Image.new('CMYK', (60, 20)).save(p), True),
        ('cut.jpg', _truncated_jpeg, False),
        ('text.png', lambda p: p.write_text('not an image'), False),
    ],
)
def test_image_files_are_read_or_refused_with_a_reason(tmp_path, name, make, readable):
    path = tmp_path / name
    make(path)
    if readable:
        with open_image(path) as img:
            assert min(img.size) >= 1
    else:
        with pytest.raises(ValueError, match=f'cannot read image {path}: '):
            open_image(path)
