"""LmdbDataset: label filtering, bad-data handling, worker/fork safety, layout discovery."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from strhub.data.charsets import STANDARD_CHARSETS
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_dataset import LmdbDataset, find_lmdb_dirs
from strhub.data.lmdb_writer import LmdbWriter, image_key, label_key
from strhub.data.module import SceneTextDataModule, collate_images_labels
from strhub.data.preprocess import Preprocess
from strhub.data.sampling import RatioSampler

FULL = STANDARD_CHARSETS['94_full']
LOWER = STANDARD_CHARSETS['36_lowercase']


def png_bytes(width: int = 40, height: int = 16, value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new('RGB', (width, height), (value, value, value)).save(buf, format='PNG')
    return buf.getvalue()


def write_lmdb(path: Path, labels: list[str], sizes: list[tuple[int, int]] | None = None) -> Path:
    with LmdbWriter(path) as writer:
        for i, label in enumerate(labels):
            w, h = sizes[i] if sizes else (40, 16)
            writer.add(png_bytes(w, h, 10 * i % 256), label)
    return path


def test_label_filter_rules():
    f = LabelFilter(FULL, max_length=5)
    assert f('ab c') == ('abc', None)  # whitespace removed
    assert f('abcdef') == (None, 'label too long')
    assert f('   ') == (None, 'empty label')
    assert f('café') == ('cafe', None)  # diacritic folded to a charset letter
    assert f('ﬁ') == ('fi', None)  # NFKC ligature
    assert f('a€b') == ('ab', None)  # unknown char removed
    assert LabelFilter(FULL, unknown_chars='drop')('a€b') == (None, 'chars outside charset')
    assert LabelFilter(LOWER)('HeLLo') == ('hello', None)  # lowercase charset folds case
    assert LabelFilter(FULL)('HeLLo') == ('HeLLo', None)
    assert LabelFilter(FULL, remove_whitespace=False, unknown_chars='drop')('a b') == (None, 'chars outside charset')


def test_label_filter_keeps_non_latin_scripts():
    cyrillic = 'абвгдежзийклмнопрстуфхцчшщъыьэюяё'
    f = LabelFilter(cyrillic + LOWER)
    assert f('Привет') == ('привет', None)
    assert f('ёлка') == ('ёлка', None)  # ё is in the charset: not folded to е
    assert LabelFilter(FULL)('Привет') == (None, 'empty label')  # not silently kept in a Latin charset


def test_dataset_reads_and_filters(tmp_path):
    root = write_lmdb(tmp_path / 'set', ['Hello', 'toolongforthis', 'ok€', '  ', 'Zz'])
    ds = LmdbDataset(root, LabelFilter(LOWER, max_length=8), cache_dir=None)
    assert ds.labels == ['hello', 'ok', 'zz']
    assert ds.skipped == {
        'label too long': {'count': 1, 'keys': ['label-000000002']},
        'empty label': {'count': 1, 'keys': ['label-000000004']},
    }
    img, label = ds[0]
    assert isinstance(img, Image.Image) and label == 'hello'


def test_min_image_size_filter(tmp_path):
    root = write_lmdb(tmp_path / 'set', ['a', 'b', 'c'], sizes=[(40, 16), (3, 16), (40, 4)])
    ds = LmdbDataset(root, LabelFilter(LOWER), min_image_size=5, cache_dir=None)
    assert ds.labels == ['a']
    assert ds.skipped['image too small']['count'] == 2


def build_bad_lmdb(path: Path) -> Path:
    """Samples: 1 good, 2 corrupt image, 3 missing label, 4 non-UTF-8 label, 5 over-long label, 6 good,
    7 missing image."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(image_key(1), png_bytes()), txn.put(label_key(1), b'good')
        txn.put(image_key(2), b'\x89PNG\r\n\x1a\n garbage'), txn.put(label_key(2), b'corrupt')
        txn.put(image_key(3), png_bytes())
        txn.put(image_key(4), png_bytes()), txn.put(label_key(4), b'\xff\xfebad')
        txn.put(image_key(5), png_bytes()), txn.put(label_key(5), b'x' * 40)
        txn.put(image_key(6), png_bytes()), txn.put(label_key(6), b'fine')
        txn.put(label_key(7), b'noimage')
        txn.put(b'num-samples', b'7')
    env.close()
    return path


def test_bad_data_is_skipped_and_counted(tmp_path, caplog):
    root = build_bad_lmdb(tmp_path / 'bad')
    before = (root / 'data.mdb').read_bytes()
    with caplog.at_level(logging.INFO):
        ds = LmdbDataset(root, LabelFilter(FULL, max_length=25), cache_dir=None)
    assert ds.labels == ['good', 'corrupt', 'fine']
    assert {k: v['count'] for k, v in ds.skipped.items()} == {
        'missing label': 1,
        'label not UTF-8': 1,
        'label too long': 1,
        'missing image': 1,
    }
    assert 'skipped' in caplog.text and 'label-000000004' in caplog.text
    labels = [ds[i][1] for i in range(len(ds))]
    # The corrupt image is replaced by the next good sample; it is counted, not fatal.
    assert labels == ['good', 'fine', 'fine']
    assert ds.num_skipped == 5
    assert (root / 'data.mdb').read_bytes() == before  # read-only: the user's file is untouched


def test_index_cache_is_reused(tmp_path, monkeypatch):
    root = write_lmdb(tmp_path / 'set', ['abc', 'def'])
    cache = tmp_path / 'cache'
    first = LmdbDataset(root, LabelFilter(LOWER), cache_dir=cache)
    assert len(list(cache.glob('*.json'))) == 1

    def fail(self):
        raise AssertionError('labels rescanned despite the cache')

    monkeypatch.setattr(LmdbDataset, '_scan_labels', fail)
    second = LmdbDataset(root, LabelFilter(LOWER), cache_dir=cache)
    assert second.labels == first.labels
    with pytest.raises(AssertionError):  # other filter settings -> another cache entry
        LmdbDataset(root, LabelFilter(LOWER, max_length=2), cache_dir=cache)


def test_dataloader_with_two_workers(tmp_path):
    labels = [f'w{i}' for i in range(40)]
    root = write_lmdb(tmp_path / 'set', labels)
    ds = LmdbDataset(root, LabelFilter(LOWER), transform=Preprocess((16, 32)), cache_dir=None)
    _ = ds[0]  # open the environment in the parent first: workers must not reuse it after fork
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_images_labels)
    seen = []
    for images, batch_labels in loader:
        assert images.shape[1:] == (3, 16, 32)
        seen += batch_labels
    assert seen == labels


def test_find_lmdb_dirs_and_both_layouts(tmp_path):
    for sub in ['train/real/a', 'train/real/b/c', 'val/v', 'test/IIIT5k', 'test/SVT']:
        write_lmdb(tmp_path / 'parseq' / sub, ['abc'])
    for sub in ['training/MJ/x', 'training/ST/y', 'evaluation/IIIT5k_3000', 'evaluation/CUTE80']:
        write_lmdb(tmp_path / 'mgp' / sub, ['abc'])
    assert [p.name for p in find_lmdb_dirs(tmp_path / 'parseq' / 'train')] == ['a', 'c']
    benchmarks = {'IIIT5k_3000': ['IIIT5k_3000', 'IIIT5k'], 'SVT': ['SVT'], 'CUTE80': ['CUTE80']}
    common = dict(
        benchmarks=benchmarks,
        test_roots=['test', 'evaluation'],
        preprocess={'img_size': [16, 32]},
        batch_size=4,
        num_workers=0,
        cache_dir=None,
    )
    parseq = SceneTextDataModule(
        str(tmp_path / 'parseq'), train=[{'name': 'real', 'paths': ['train/real']}], val=['val', 'evaluation'], **common
    )
    assert len(parseq.train_dataset) == 2 and len(parseq.val_dataset) == 1
    found, missing = parseq.find_benchmarks(['IIIT5k_3000', 'SVT', 'CUTE80'])
    assert sorted(found) == ['IIIT5k_3000', 'SVT'] and missing == ['CUTE80']
    mgp = SceneTextDataModule(
        str(tmp_path / 'mgp'),
        train=[
            {'name': 'MJ', 'paths': ['train/synth/MJ', 'training/MJ'], 'weight': 0.5},
            {'name': 'ST', 'paths': ['train/synth/ST', 'training/ST'], 'weight': 0.5},
        ],
        val=['val', 'evaluation'],
        **common,
    )
    assert len(mgp.train_dataset) == 2 and len(mgp.val_dataset) == 2
    found, missing = mgp.find_benchmarks(['IIIT5k_3000', 'SVT', 'CUTE80'])
    assert sorted(found) == ['CUTE80', 'IIIT5k_3000'] and missing == ['SVT']
    images, labels = next(iter(mgp.train_dataloader()))
    assert images.shape == (2, 3, 16, 32) and labels == ['abc', 'abc']
    with pytest.raises(FileNotFoundError, match='training source .*real.*data/README.md'):
        _ = SceneTextDataModule(
            str(tmp_path / 'mgp'), train=[{'name': 'real', 'paths': ['train/real']}], **common
        ).train_dataset


def test_ratio_sampler_mixes_sources_at_their_weights():
    sampler = RatioSampler([1000, 10], [0.5, 0.5], num_samples=400, seed=1)
    picks = torch.tensor(list(sampler))
    assert len(picks) == 400
    assert int((picks >= 1000).sum()) == 200  # the small source is repeated to fill its half
    assert int((picks < 1000).sum()) == 200 and len(set(picks[picks < 1000].tolist())) == 200
    sampler.set_epoch(1)
    assert list(sampler) != picks.tolist()


def test_preprocess_modes():
    img = Image.new('RGB', (64, 16), (255, 0, 0))
    x = Preprocess((32, 128))(img)
    assert x.shape == (3, 32, 128) and torch.allclose(x[0], torch.ones(32, 128)) and x[1].min() == -1
    padded = Preprocess((32, 128), resize='keep_ratio', normalization='zero_one')(img)
    assert padded[0].min() == 1  # 64x16 scales to exactly 128x32: no padding
    narrow = Preprocess((32, 128), resize='keep_ratio', normalization='zero_one')(Image.new('RGB', (16, 16), 'white'))
    assert narrow[:, :, :32].min() == 1 and narrow[:, :, 32:].max() == 0
    with pytest.raises(ValueError, match='valid'):
        Preprocess((32, 128), normalization='bogus')


@pytest.mark.parametrize('normalization', ['minus_one_one', 'zero_one', 'imagenet'])
def test_preprocess_lookup_table_equals_arithmetic(normalization):
    from strhub.data.preprocess import NORMALIZATIONS

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8))
    pre = Preprocess((32, 128), normalization=normalization)
    resized = torch.from_numpy(np.array(pre.resize_image(img))).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS[normalization])
    out = pre(img)
    assert out.is_contiguous() and out.dtype == torch.float32
    torch.testing.assert_close(out, (resized - mean) / std, atol=1e-6, rtol=0)


@pytest.mark.parametrize('name', ['iiit5k_train', 'svt_train', 'ic15_train'])
def test_real_crops_folder_to_lmdb_to_dataset(shared_dir, tmp_path, name):
    """Every real crop set goes folder -> LMDB -> LmdbDataset with labels intact and images decodable."""
    from strhub.data.create import create_lmdb, read_tsv_annotations

    source = shared_dir / 'data' / 'real' / name
    expected = [line.split('\t', 1)[1] for line in (source / 'labels.tsv').read_text(encoding='utf-8').splitlines()]
    summary = create_lmdb(read_tsv_annotations(source / 'labels.tsv', source / 'images'), tmp_path / name)
    assert summary.written == len(expected)
    raw = LmdbDataset(tmp_path / name, label_filter=None, cache_dir=None)
    assert raw.labels == expected  # stored exactly as annotated
    filtered = LmdbDataset(tmp_path / name, LabelFilter(FULL), transform=Preprocess((32, 128)), cache_dir=None)
    label_filter = LabelFilter(FULL)
    assert filtered.labels == [y for y in (label_filter(x)[0] for x in expected) if y is not None]
    for i in range(0, len(filtered), max(1, len(filtered) // 50)):
        image, label = filtered[i]
        assert image.shape == (3, 32, 128) and -1 <= image.min() and image.max() <= 1 and label
    assert filtered.num_skipped == len(expected) - len(filtered)
