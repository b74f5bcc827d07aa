"""Training augmentation: the policy switch, per-op contracts, seeding, worker independence and config errors."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from strhub.data.augment import (
    AUGMENT_OPS,
    AugmentConfig,
    AugmentOp,
    AugmentPipeline,
    ExtraOpConfig,
    RandomOps,
    build_augmentation,
    get_op,
)


def word_crop(width: int = 96, height: int = 32) -> Image.Image:
    """A colourful, mid-contrast text crop: every op has something to change."""
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    background = 60 + 140 * np.concatenate([x * np.ones_like(y), y * np.ones_like(x), (1 - x) * y], axis=2)
    image = Image.fromarray(background.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.text((6, 8), 'Hello', fill=(30, 20, 90))
    draw.line((0, height - 3, width, height - 3), fill=(220, 40, 40), width=2)
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.mark.parametrize('cfg', [None, {'enabled': False}, AugmentConfig(enabled=False)])
def test_disabled_builds_nothing(cfg):
    assert build_augmentation(cfg) is None


@pytest.mark.parametrize('name', sorted(AUGMENT_OPS))
@pytest.mark.parametrize('size', [(96, 32), (13, 41)])
def test_op_keeps_size_and_returns_rgb(name, size):
    image = word_crop(*size)
    for magnitude in (0, 5, 10):
        out = AugmentOp(name, magnitude)(image, random.Random(magnitude))
        assert out.mode == 'RGB'
        assert out.size == image.size


@pytest.mark.parametrize('name', sorted(AUGMENT_OPS))
def test_op_changes_image_at_positive_magnitude(name):
    image = word_crop()
    for magnitude in (3, 10):
        out = AugmentOp(name, magnitude)(image, random.Random(0))
        assert not np.array_equal(pixels(out), pixels(image)), f'{name} at magnitude {magnitude} changed nothing'


def test_stronger_magnitude_changes_more():
    image = word_crop()
    for name in ('gaussian_blur', 'gaussian_noise', 'jpeg', 'rotate'):
        weak = AugmentOp(name, 2)(image, random.Random(0))
        strong = AugmentOp(name, 10)(image, random.Random(0))
        error = [np.abs(pixels(out).astype(int) - pixels(image)).mean() for out in (weak, strong)]
        assert error[1] > error[0], name


def test_policy_converts_to_rgb_and_keeps_size():
    augment = build_augmentation(AugmentConfig())
    grey = word_crop(70, 20).convert('L')
    out = augment(grey)
    assert out.mode == 'RGB' and out.size == (70, 20)


def test_same_seed_same_output_different_seed_different_output():
    augment = build_augmentation({'num_ops': 3, 'op_probability': 1.0})
    image = word_crop()
    random.seed(123)
    first = pixels(augment(image))
    random.seed(123)
    assert np.array_equal(pixels(augment(image)), first)
    assert np.array_equal(pixels(augment(image, random.Random(7))), pixels(augment(image, random.Random(7))))
    others = [pixels(augment(image, random.Random(seed))) for seed in range(5)]
    assert any(not np.array_equal(other, first) for other in others)


def test_unknown_op_name_lists_valid_ones():
    with pytest.raises(KeyError, match='valid ops: .*gaussian_blur.*motion_blur'):
        get_op('blurr')
    with pytest.raises(KeyError, match="unknown augmentation op 'warp'.*curve"):
        AugmentConfig(ops=['rotate', 'warp'])
    with pytest.raises(KeyError, match="unknown augmentation op 'sparkle'"):
        build_augmentation({'extra_ops': {'sparkle': 0.5}})


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"unknown augmentation setting\(s\) \['num_layers'\].*num_ops"):
        build_augmentation({'num_layers': 2})
    with pytest.raises(ValueError, match='magnitude=12'):
        AugmentConfig(magnitude=12)
    with pytest.raises(ValueError, match='num_ops=5'):
        AugmentConfig(ops=['rotate'], num_ops=5)
    with pytest.raises(ValueError, match="extra op 'jpeg' probability"):
        AugmentConfig(extra_ops={'jpeg': 1.5})
    with pytest.raises(ValueError, match="extra op 'curve' magnitude"):
        AugmentConfig(extra_ops={'curve': {'probability': 0.5, 'magnitude': 11}})
    with pytest.raises(ValueError, match='op_probability'):
        AugmentConfig(op_probability=-0.1)


def test_extra_op_settings_from_mapping_or_probability():
    cfg = AugmentConfig.from_dict({'extra_ops': {'jpeg': 0.3, 'curve': {'probability': 1.0, 'magnitude': 2}}})
    assert cfg.extra_ops == {'jpeg': ExtraOpConfig(0.3), 'curve': ExtraOpConfig(1.0, 2)}
    augment = build_augmentation(cfg)
    curve_stage = augment.stages[-1]
    assert (curve_stage.name, curve_stage.magnitude, curve_stage.probability) == ('curve', 2, 1.0)
    jpeg_stage = augment.stages[-2]
    assert (jpeg_stage.name, jpeg_stage.magnitude) == ('jpeg', cfg.magnitude)


def test_probability_zero_leaves_image_intact():
    image = word_crop()
    assert AugmentOp('invert', 5, probability=0.0)(image) is image
    assert RandomOps([AugmentOp('invert', 5)], num_ops=1, probability=0.0)(image) is image
    inverted = RandomOps([AugmentOp('invert', 5)], num_ops=1)(image)
    assert np.array_equal(pixels(inverted), 255 - pixels(image))


def test_grouped_policy_applies_one_op_per_chosen_group():
    # MGP-STR style: choose groups, then one op inside each group; invert twice would cancel, so each group
    # holds a single distinguishable op and we count which ones ran.
    image = Image.new('RGB', (8, 4), (100, 100, 100))
    groups = [RandomOps([AugmentOp('brightness', 10)], 1), RandomOps([AugmentOp('invert', 0)], 1)]
    policy = AugmentPipeline([RandomOps(groups, num_ops=1)])
    outcomes = {tuple(pixels(policy(image, random.Random(seed)))[0, 0]) for seed in range(20)}
    assert (155, 155, 155) in outcomes  # invert only
    assert any(value not in ((155, 155, 155), (100, 100, 100)) for value in outcomes)  # brightness only
    assert (100, 100, 100) not in outcomes


def test_pickled_policy_behaves_identically():
    augment = build_augmentation({'op_probability': 1.0, 'extra_ops': {'curve': 1.0, 'gaussian_noise': 1.0}})
    restored = pickle.loads(pickle.dumps(augment))
    image = word_crop()
    assert np.array_equal(pixels(restored(image, random.Random(5))), pixels(augment(image, random.Random(5))))


class _SameImageDataset(Dataset):
    def __init__(self, augment):
        self.augment = augment
        self.image = word_crop(32, 16)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        return info.id, torch.from_numpy(pixels(self.augment(self.image)).copy())


def test_dataloader_workers_draw_different_augmentations():
    augment = build_augmentation({'op_probability': 1.0, 'extra_ops': {'gaussian_noise': 1.0}})
    loader = DataLoader(
        _SameImageDataset(augment), batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    by_worker = {}
    for worker_id, image in loader:
        by_worker.setdefault(int(worker_id), []).append(image[0])
    assert set(by_worker) == {0, 1}
    assert not torch.equal(by_worker[0][0], by_worker[1][0])
