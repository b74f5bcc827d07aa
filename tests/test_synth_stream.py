"""On-the-fly synthetic training data: determinism, epochs, mixing with LMDB sources, DataLoader workers."""

from collections import Counter

import pytest
import torch

from strhub.data.module import SceneTextDataModule
from strhub.data.sampling import RatioSampler
from strhub.data.synth.stream import STREAM_SIZE, build_stream
from tests.conftest import make_word_lmdb

# Plain-looking, short samples: fast to render.
FAST = {'random_ratio': 1.0, 'random_length': [2, 5], 'render': {'noise_prob': 0.0, 'jpeg_prob': 0.0}}


def datamodule(root, train, **kwargs) -> SceneTextDataModule:
    return SceneTextDataModule(
        root_dir=str(root),
        train=train,
        val=['val'],
        charset_train='abcdef',
        charset_test='abcdef',
        max_label_length=8,
        augment=None,
        batch_size=8,
        cache_dir=None,
        **kwargs,
    )


def test_sample_depends_only_on_seed_and_index():
    a = build_stream({**FAST, 'seed': 3}, 'abcdef', 8)
    b = build_stream({**FAST, 'seed': 3}, 'abcdef', 8)
    c = build_stream({**FAST, 'seed': 4}, 'abcdef', 8)
    for i in (0, 7, 12345):
        (img_a, label_a), (img_b, label_b) = a[i], b[i]
        assert label_a == label_b and img_a.tobytes() == img_b.tobytes()
    assert [c[i][1] for i in range(20)] != [a[i][1] for i in range(20)]
    assert len(a) == STREAM_SIZE
    with pytest.raises(IndexError):
        a[STREAM_SIZE]


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ValueError, match='valid:.*random_ratio'):
        build_stream({'ratio': 0.5}, 'abc', 8)
    with pytest.raises(ValueError, match='unknown render option.*valid:.*blur_prob'):
        build_stream({'render': {'blurr_prob': 0.5}}, 'abc', 8)


def test_stream_needs_an_epoch_size(tmp_path):
    dm = datamodule(tmp_path, [{'name': 'synth', 'kind': 'synthetic', 'options': FAST}])
    with pytest.raises(ValueError, match='samples_per_epoch'):
        dm.train_dataloader()


def test_epochs_draw_new_samples_and_repeat_on_resume():
    sampler = RatioSampler([STREAM_SIZE], [1.0], num_samples=50, streams=[True])
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50, 100))
    resumed = RatioSampler([STREAM_SIZE], [1.0], num_samples=50, streams=[True])
    resumed.set_epoch(1)
    assert list(resumed) == second


def test_mixes_with_lmdb_at_the_ratio_and_works_with_two_workers(tmp_path):
    # The LMDB words use only 'ab', the stream's words only 'cdef', so each sample's source shows.
    make_word_lmdb(tmp_path / 'real', 10, alphabet='ab')
    stream = {**FAST, 'random_ratio': 0.0, 'words': ['cdef', 'fed', 'dc'], 'case_weights': [1, 0, 0]}
    dm = datamodule(
        tmp_path,
        [
            {'name': 'synth', 'kind': 'synthetic', 'weight': 0.8, 'options': stream},
            {'name': 'real', 'paths': ['real'], 'weight': 0.2},
        ],
        samples_per_epoch=40,
        num_workers=2,
    )
    loader = dm.train_dataloader()
    batches = list(loader)
    labels = [label for _, batch_labels in batches for label in batch_labels]
    sources = Counter('real' if set(label) <= set('ab') else 'synth' for label in labels)
    assert sources == {'synth': 32, 'real': 8}
    assert all(images.shape == (len(lab), 3, 32, 128) for images, lab in batches)

    # Same seed, no workers: the same samples in the same order (worker count does not matter).
    dm.num_workers = 0
    again = [label for _, batch_labels in dm.train_dataloader() for label in batch_labels]
    assert again == labels
    images_0 = next(iter(dm.train_dataloader()))[0]
    assert torch.equal(images_0, batches[0][0])


def test_synthetic_validation_split(tmp_path):
    dm = datamodule(
        tmp_path,
        [{'name': 'synth', 'kind': 'synthetic', 'options': FAST}],
        samples_per_epoch=16,
        val_synthetic={'size': 12, **FAST},
    )
    val = dm.val_dataset
    assert len(val) == 12
    train_labels = [dm.train_dataset[i][1] for i in range(12)]
    assert [val[i][1] for i in range(12)] != train_labels  # its own seed
