"""ACDS-STR: core-area mask rasterisation, per-character boxes through the data layer, the guided model's output
contract, sizes, bad input, and short training runs with and without boxes."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from strhub.config import compose_config, model_config
from strhub.data.augment import DEFAULT_EXTRA_OPS, DEFAULT_POOL_OPS
from strhub.data.boxes import GEOMETRIC_OPS, align_boxes, without_geometric_ops
from strhub.data.charsets import STANDARD_CHARSETS
from strhub.data.labels import LabelFilter
from strhub.data.lmdb_dataset import LmdbDataset
from strhub.data.lmdb_writer import LmdbWriter, boxes_key
from strhub.data.module import SceneTextDataModule
from strhub.data.preprocess import Preprocess
from strhub.data.synth import generate_lmdb
from strhub.models.acdsstr import ACDSSTR, core_area_masks
from strhub.models.loading import build_system, count_parameters, load
from strhub.training import train
from tests.conftest import short_training_overrides
from tests.test_lmdb_dataset import png_bytes

LOWER = STANDARD_CHARSETS['36_lowercase']
# Small enough for a training step in a few hundredths of a second on a CPU.
TINY = [
    'charset=36_lowercase',
    'model.max_label_length=8',
    'model.batch_size=16',
    'model.img_size=[16,64]',
    'model.arch.embed_dim=32',
    'model.arch.depth=2',
    'model.arch.guide_block=0',
    'model.arch.num_heads=2',
    'model.arch.mlp_ratio=2',
    'model.arch.resnet_channels=32',
    'model.optimizer.name=adamw',
    '~model.optimizer.rho',
    'model.lr=3e-3',
    'model.scheduler.name=constant',
]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These models are tiny: per-op overhead dominates, and on a busy 2-core machine a second intra-op thread makes
    a training step several times slower (measured 0.25 s vs 2 s), so run this module's tests on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_boxes(actual, expected, atol: float = 1e-4) -> None:
    assert actual is not None, 'no boxes'
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


def tiny_model(**kwargs) -> ACDSSTR:
    torch.manual_seed(0)
    args = dict(img_size=(16, 32), embed_dim=16, depth=3, num_heads=2, mlp_ratio=2.0, guide_block=1)
    return ACDSSTR(11, 6, resnet_channels=16, **{**args, **kwargs}).eval()


# -- core-area masks ------------------------------------------------------------------------------------------------


def test_core_area_mask_pixels_of_known_boxes():
    boxes = [
        [
            [8.0, 4.0, 24.0, 28.0],  # 16x24 -> core x [12, 20), y [10, 22)
            [50.0, 10.2, 50.4, 12.2],  # core x [50.1, 50.3) holds no pixel centre: the pixel holding its centre
            [120.0, 0.0, 136.0, 8.0],  # half outside: core x [124, 132) clipped to the image, y [2, 6)
        ],
        None,
    ]
    masks, has_boxes = core_area_masks(boxes, (32, 128), shrink=0.5)
    expected = torch.zeros(32, 128)
    expected[10:22, 12:20] = 1
    expected[11, 50] = 1
    expected[2:6, 124:128] = 1
    assert masks.shape == (2, 1, 32, 128) and masks.dtype == torch.float32
    assert torch.equal(masks[0, 0], expected)
    assert has_boxes.tolist() == [True, False]
    assert not masks[1].any()
    # shrink=1 keeps the whole box: pixel centres 8.5 .. 23.5 and 4.5 .. 27.5
    full, _ = core_area_masks([[[8.0, 4.0, 24.0, 28.0]]], (32, 128), shrink=1.0)
    assert full.sum() == 16 * 24 and full[0, 0, 4:28, 8:24].all()


def test_boxes_are_scaled_with_the_resize_before_rasterising():
    # A 256x64 stored image is stretched to 128x32: everything halves.
    stretch = Preprocess((32, 128))
    assert stretch.map_boxes([[16, 8, 48, 56]], (256, 64)) == [[8.0, 4.0, 24.0, 28.0]]
    # keep_ratio: a 100x50 image is scaled by min(32/50, 128/100) = 0.64 into the top-left corner.
    keep = Preprocess((32, 128), resize='keep_ratio')
    assert keep.content_size(100, 50) == (64, 32)
    assert_boxes(keep.map_boxes([[10, 5, 50, 45]], (100, 50)), [[6.4, 3.2, 32.0, 28.8]])
    # Boxes beyond the image are clipped to the model input.
    assert stretch.map_boxes([[-4, -2, 300, 80]], (256, 64)) == [[0.0, 0.0, 128.0, 32.0]]
    with pytest.raises(ValueError, match='cannot follow a rotation'):
        Preprocess((32, 128), rotation=90).map_boxes([[0, 0, 1, 1]], (10, 10))
    with pytest.raises(ValueError, match=r'shrink must be in \(0, 1\]'):
        core_area_masks([[[0, 0, 1, 1]]], (4, 4), shrink=0)


# -- boxes through the data layer -----------------------------------------------------------------------------------


def box_lmdb(path: Path) -> Path:
    """Stored label -> boxes: uppercase and a removed hyphen, a ligature that expands, no boxes, plain."""
    with LmdbWriter(path) as writer:
        writer.add(png_bytes(80, 32), 'Ab-c', [[0, 0, 10, 32], [10, 2, 20, 30], [20, 0, 25, 32], [25, 4, 40, 28]])
        writer.add(png_bytes(40, 16), 'ﬁx', [[0, 0, 10, 16], [10, 0, 20, 16]])
        writer.add(png_bytes(40, 16), 'nobox')
        writer.add(png_bytes(40, 16), 'ok', [[1, 1, 9, 15], [11, 1, 19, 15]])
    return path


def test_boxes_follow_label_filtering_through_the_dataset(tmp_path, caplog):
    root = box_lmdb(tmp_path / 'set')
    label_filter = LabelFilter(LOWER)
    plain = LmdbDataset(root, label_filter, cache_dir=None)
    assert [len(plain[i]) for i in range(len(plain))] == [2, 2, 2, 2]  # default samples: (image, label)
    with caplog.at_level(logging.WARNING):
        ds = LmdbDataset(root, label_filter, return_boxes=True, cache_dir=None)
        samples = [ds[i] for i in range(len(ds))]
    assert [s[1] for s in samples] == ['abc', 'fix', 'nobox', 'ok']
    # The hyphen's box is dropped with the hyphen; the case fold keeps the others in place.
    assert samples[0][2] == [[0, 0, 10, 32], [10, 2, 20, 30], [25, 4, 40, 28]]
    assert samples[1][2] is None  # 'ﬁ' -> 'fi': one box for two characters cannot be split
    assert samples[2][2] is None
    assert samples[3][2] == [[1, 1, 9, 15], [11, 1, 19, 15]]
    assert sum(ds.boxes_dropped.values()) == 1 and 'boxes-000000002' in caplog.text
    # Mapped to the model input (80x32 -> 128x32 stretch: x scaled by 1.6) when a box transform is given.
    mapped = LmdbDataset(
        root, label_filter, return_boxes=True, box_transform=Preprocess((32, 128)).map_boxes, cache_dir=None
    )
    assert_boxes(mapped[0][2], [[0, 0, 16, 32], [16, 2, 32, 30], [40, 4, 64, 28]])


def test_malformed_boxes_are_dropped_not_fatal(tmp_path):
    import lmdb

    root = box_lmdb(tmp_path / 'set')
    env = lmdb.open(str(root), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(boxes_key(4), b'[[1, 1, 9, 15]]')  # one box for two characters
    env.close()
    ds = LmdbDataset(root, LabelFilter(LOWER), return_boxes=True, cache_dir=None)
    assert ds[3][1] == 'ok' and ds[3][2] is None
    assert list(ds.boxes_dropped) == ['malformed (not one [x0, y0, x1, y1] per stored label character)']


def test_align_boxes_rules():
    boxes = [[0, 0, 1, 1], [1, 0, 2, 1], [2, 0, 3, 1]]
    assert align_boxes('a b', 'ab', boxes, LabelFilter(LOWER)) == [boxes[0], boxes[2]]  # whitespace removed
    assert align_boxes('café', 'cafe', boxes + [[3, 0, 4, 1]], LabelFilter(LOWER)) is not None  # é folded to e
    assert align_boxes('abc', 'abc', boxes[:2], LabelFilter(LOWER)) is None  # box count differs from the label
    assert align_boxes('abc', 'abc', boxes, None) == boxes


def test_data_module_batches_boxes_in_input_pixels_without_geometric_augmentation(tmp_path):
    box_lmdb(tmp_path / 'data' / 'train' / 'generated')
    common = dict(
        root_dir=str(tmp_path / 'data'),
        train=[{'name': 'generated', 'paths': ['train/generated']}],
        charset_train='36_lowercase',
        preprocess={'img_size': [32, 128]},
        batch_size=4,
        num_workers=0,
        cache_dir=None,
    )
    images, labels = next(iter(SceneTextDataModule(**common).train_dataloader()))  # default: two columns
    assert images.shape == (4, 3, 32, 128) and len(labels) == 4
    module = SceneTextDataModule(**common, return_boxes=True, augment={'enabled': True})
    ops = module.train_dataset.datasets[0].datasets[0].transform.augment.stages
    assert not GEOMETRIC_OPS & {op.name for stage in ops for op in getattr(stage, 'ops', [stage])}
    images, labels, boxes = next(iter(module._loader(module.train_dataset)))  # fixed order
    assert labels == ['abc', 'fix', 'nobox', 'ok']
    assert_boxes(boxes[0], [[0, 0, 16, 32], [16, 2, 32, 30], [40, 4, 64, 28]])
    assert boxes[1] is None and boxes[2] is None
    assert_boxes(boxes[3], [[3.2, 2, 28.8, 30], [35.2, 2, 60.8, 30]])  # 40x16 -> 128x32


def test_without_geometric_ops_keeps_the_photometric_policy():
    cfg = without_geometric_ops({'enabled': True})
    assert set(cfg.ops) == set(DEFAULT_POOL_OPS) - GEOMETRIC_OPS and cfg.num_ops == 3
    assert set(cfg.extra_ops) == set(DEFAULT_EXTRA_OPS) - GEOMETRIC_OPS
    only_geometric = without_geometric_ops({'ops': ['rotate', 'shear_x'], 'num_ops': 2, 'extra_ops': {}})
    assert only_geometric.ops == () and only_geometric.num_ops == 0
    assert without_geometric_ops(None) is None


def test_synthetic_engine_boxes_reach_the_model_input(tmp_path):
    root = generate_lmdb(tmp_path / 'synth', 12, LOWER, seed=5)
    ds = LmdbDataset(root, LabelFilter(LOWER), return_boxes=True, cache_dir=None)
    stored = LmdbDataset(
        root, LabelFilter(LOWER), return_boxes=True, box_transform=Preprocess((32, 128)).map_boxes, cache_dir=None
    )
    for i in range(len(ds)):
        image, label, boxes = ds[i]
        assert boxes is not None and len(boxes) == len(label)
        assert all(0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height for x0, y0, x1, y1 in boxes)
        # Left to right, as the label is read.
        assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)
        sx = 128 / image.width
        assert_boxes(stored[i][2], [[x0 * sx, y0, x1 * sx, y1] for x0, y0, x1, y1 in boxes])


# -- the model ------------------------------------------------------------------------------------------------------


def test_output_length_follows_max_length_and_shorter_outputs_are_prefixes():
    model = tiny_model()
    images = torch.randn(3, 3, 16, 32)
    with torch.no_grad():
        out = model.forward_all(images)
        assert out.logits.shape == (3, 8, 11)  # max_label_length + 2 slots, as MGP-STR's 27 for 25
        assert out.mask_logits.shape == (3, 1, 16, 32)
        full = model(images)
        torch.testing.assert_close(full, out.logits[:, 1:], atol=1e-6, rtol=0)  # slot 0 ([GO]) is not read
        assert model(images, 100).shape == full.shape
        for max_length in (0, 2, 5):
            torch.testing.assert_close(model(images, max_length), full[:, : max_length + 1], atol=1e-6, rtol=0)


def test_predicted_mask_guides_the_attention_only_when_guidance_is_on():
    images = torch.randn(2, 3, 16, 32)
    for guide_block, influences in ((1, True), (2, True), (None, False)):
        model = tiny_model(guide_block=guide_block)
        model.stem.mask_head.zero_grad()
        model.forward_all(images).logits.square().sum().backward()
        grad = model.stem.mask_head[1].weight.grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) == influences, guide_block


def test_guided_branch_reuses_the_encoder_blocks():
    guided, plain = tiny_model(), tiny_model(guide_block=None)
    d = 16
    # Only the gate (2d x d), the guidance norm (2d) and the class token's mask logit are added.
    assert count_parameters(guided) - count_parameters(plain) == 2 * d * d + 2 * d + 1
    patch = tiny_model(guide_block=None, stem='patch')
    assert patch.forward_all(torch.randn(1, 3, 16, 32)).mask_logits is None


def test_published_sizes():
    sizes = {}
    for name in ('acds-str-base', 'acds-str-small'):
        with torch.device('meta'):
            system = build_system(model_config(name, ['charset=94_full']))
        sizes[name] = round(count_parameters(system.model) / 1e6, 1)
        assert system.model.decoder.token_mix[1].out_channels == 27  # MGP-STR's 27 character slots
        assert system.model.blocks[0].attn.qkv.in_features == 768
    assert sizes == {'acds-str-base': 89.4, 'acds-str-small': 61.0}  # with the 94-character charset


def test_bad_inputs_have_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r'expected images of shape \(N, 3, 16, 32\)'):
        model(torch.randn(1, 3, 32, 128))
    with pytest.raises(ValueError, match='multiples of 4'):
        tiny_model(img_size=(18, 32))
    with pytest.raises(ValueError, match=r'guide_block 3 is not a block index of a depth-3 encoder'):
        tiny_model(guide_block=3)
    with pytest.raises(ValueError, match='attention guidance needs the predicted core-area mask'):
        tiny_model(stem='patch')
    with pytest.raises(ValueError, match="unknown stem 'vit'"):
        tiny_model(stem='vit', guide_block=None)
    with pytest.raises(ValueError, match='divisible by decoder_groups'):
        tiny_model(embed_dim=12, num_heads=2)
    with pytest.raises(ValueError, match=r"unknown model.arch key\(s\) \['patch_size'\]"):
        build_system(model_config('acds-str-small', [*TINY, '+model.arch.patch_size=4']))
    with pytest.raises(ValueError, match=r'mask_shrink is the core size'):
        build_system(model_config('acds-str-small', [*TINY, 'model.mask_shrink=1.5']))


def test_mask_loss_weights_core_pixels_by_the_background_ratio():
    system = build_system(model_config('acds-str-small', TINY))
    masks = torch.zeros(1, 1, 4, 4)
    masks[..., :1, :1] = 1  # 1 core pixel, 15 background pixels
    logits = torch.zeros(1, 1, 4, 4)
    # At logit 0 every pixel costs log 2; the core pixel counts 15 times.
    assert system.mask_loss(logits, masks).item() == pytest.approx((15 + 15) * 0.6931472 / 16, rel=1e-6)
    system.mask_pos_weight = 2.0
    assert system.mask_loss(logits, masks).item() == pytest.approx((2 + 15) * 0.6931472 / 16, rel=1e-6)


# -- training -------------------------------------------------------------------------------------------------------


class MetricRecorder(pl.Callback):
    """The per-step training losses: total, recognition and (when used) mask."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.steps.append({k: float(metrics[k]) for k in ('loss', 'loss_char', 'loss_mask') if k in metrics})


def train_steps(overrides: list[str], data_root: Path, run_dir: Path, steps: int) -> list[dict[str, float]]:
    """``steps`` training steps on one repeated batch of ``data_root`` through :func:`strhub.training.train`."""
    cfg = compose_config([*overrides, *short_training_overrides(data_root, steps), 'trainer.log_every_n_steps=1'])
    recorder = MetricRecorder()
    train(cfg, run_dir, callbacks=[recorder])
    return recorder.steps


@pytest.fixture(scope='module')
def boxed_data(tmp_path_factory) -> Path:
    """A data root with train/generated and val/generated LMDBs of the synthetic engine (with boxes)."""
    root = tmp_path_factory.mktemp('boxed')
    generate_lmdb(root / 'train' / 'generated', 48, LOWER, seed=0)
    generate_lmdb(root / 'val' / 'generated', 8, LOWER, seed=1)
    return root


def mean(steps: list[dict[str, float]], key: str, part: slice) -> float:
    return statistics.mean(s[key] for s in steps[part])


@pytest.mark.parametrize('experiment', ['acds-str-base', 'acds-str-small'])
def test_training_with_boxes_lowers_both_losses(experiment, boxed_data, tmp_path, caplog):
    overrides = [f'+experiment={experiment}', *TINY]
    if experiment == 'acds-str-small':
        overrides += ['model.arch.depth=3', 'model.arch.guide_block=1']
    with caplog.at_level(logging.WARNING):
        steps = train_steps(overrides, boxed_data, tmp_path, steps=30)
    assert len(steps) == 30
    assert all('loss_mask' in s for s in steps), 'the boxes did not reach the mask loss'
    for s in steps:
        assert s['loss'] == pytest.approx(s['loss_char'] + 0.5 * s['loss_mask'], rel=1e-5)
    early, late = slice(0, 5), slice(-5, None)
    # Measured: about 0.1 x the initial loss (0.25 x for the mask loss) after 30 steps; the bounds leave margin.
    assert mean(steps, 'loss', late) < 0.3 * mean(steps, 'loss', early), steps
    assert mean(steps, 'loss_mask', late) < 0.5 * mean(steps, 'loss_mask', early), steps
    assert 'no per-character boxes' not in caplog.text
    # The checkpoint carries its config: it loads by path into the architecture it was trained with.
    trained = load(tmp_path / 'checkpoints' / 'last.ckpt')
    assert trained.model.guide_block == (0 if experiment == 'acds-str-base' else 1)
    assert trained.hparams.name == experiment


def test_training_without_boxes_falls_back_to_the_recognition_loss(word_data, tmp_path, caplog):
    # word_data (tests/conftest.py) has no boxes-%09d keys.
    with caplog.at_level(logging.WARNING):
        steps = train_steps(['+experiment=acds-str-small', *TINY], word_data, tmp_path, steps=30)
    assert not any('loss_mask' in s for s in steps)
    assert all(s['loss'] == s['loss_char'] for s in steps)
    assert mean(steps, 'loss', slice(-5, None)) < 0.3 * mean(steps, 'loss', slice(0, 5)), steps
    notices = [r for r in caplog.records if 'no per-character boxes' in r.getMessage()]
    assert len(notices) == 1 and 'data.return_boxes=true' in notices[0].getMessage()
