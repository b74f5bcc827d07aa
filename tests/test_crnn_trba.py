"""CRNN, TRBA and TRBC: published sizes and layouts, parity with the reference outputs, greedy attention decoding,
CTC / attention decoding of hand-made outputs, and short training runs."""

from __future__ import annotations

import pytest
import torch

from strhub.config import model_config
from strhub.data.tokenizer import CharTokenizer, CTCTokenizer
from strhub.models import registry
from strhub.models.crnn import CRNN
from strhub.models.loading import build_system, count_parameters, set_runtime_options
from strhub.models.trba import TRBA, TRBC, GridGenerator
from tests.conftest import load_golden, read_layout, training_losses

# Model name -> published size in millions of parameters (94-character charset), rounded as published.
PUBLISHED_SIZES = {'crnn': (8.36, 2), 'trba': (49.8, 1), 'trbc': (48.9, 1)}
# Reference config keys that are architecture arguments of our models (the rest are system arguments).
ARCH_KEYS = ('hidden_size', 'leaky_relu', 'num_fiducial', 'output_channel')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """On a small shared CPU, several threads per process oversubscribe it: a tiny TRBC training step took ~0.3 s
    with one thread and several seconds with two under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def published_system(name: str):
    return build_system(model_config(name, ['charset=94_full']))


@pytest.mark.parametrize('name', PUBLISHED_SIZES)
def test_published_size(name):
    size_m, digits = PUBLISHED_SIZES[name]
    assert round(count_parameters(published_system(name).model) / 1e6, digits) == size_m


@pytest.mark.parametrize('name', PUBLISHED_SIZES)
def test_published_layout_loads_strictly(name, shared_dir):
    layout = read_layout(shared_dir / 'reference' / 'keys' / f'{name}.tsv')
    system = published_system(name)
    assert {k: tuple(v.shape) for k, v in system.state_dict().items()} == layout
    torch.manual_seed(0)
    release = {key: torch.randn(shape) if shape else torch.tensor(7) for key, shape in layout.items()}
    system.load_state_dict(registry.importer('strhub_system')(release), strict=True)
    for key, value in system.state_dict().items():
        assert torch.equal(value, release[key].to(value.dtype)), key


def golden_system(shared_dir, name: str):
    """Our system built with the reference config of the golden file, holding its weights, in eval mode."""
    golden = load_golden(shared_dir, name)
    ref = golden['config']
    cfg = model_config(name, ['charset=94_full'])
    cfg['arch'].update({k: ref[k] for k in ARCH_KEYS if k in ref})
    cfg.update({k: ref[k] for k in ('charset_train', 'charset_test', 'max_label_length', 'img_size')})
    system = build_system(cfg)
    system.load_state_dict(golden['state_dict'], strict=True)
    return system.eval(), golden


@pytest.mark.parametrize('name', PUBLISHED_SIZES)
def test_golden_parity(shared_dir, name):
    system, golden = golden_system(shared_dir, name)
    out = golden['outputs']
    with torch.no_grad():
        logits = system(golden['images'])
        val_logits, val_loss, numel = system.forward_logits_loss(golden['images'], golden['labels'])
    for actual, expected in ((logits, out['logits']), (val_logits, out['val_logits'])):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
        assert torch.equal(actual.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(val_loss, out['val_loss'], atol=1e-4, rtol=0)
    assert numel == int(out['val_loss_numel'])


def test_golden_trba_validation_decodes_greedily_for_the_longest_label(shared_dir):
    system, golden = golden_system(shared_dir, 'trba')
    with torch.no_grad():
        full = system(golden['images'])
    # 'W0rld!' and 'SALMON' have 6 characters: 7 greedy steps, the same as the first 7 of unbounded decoding.
    assert golden['outputs']['val_logits'].shape[1] == 7
    torch.testing.assert_close(full[:, :7], golden['outputs']['val_logits'], atol=1e-4, rtol=0)


def test_tps_buffers_are_the_published_ones(shared_dir):
    """The precomputed TPS matrices equal the (fp16-stored) published buffers up to fp16 rounding."""
    state = load_golden(shared_dir, 'trba')['state_dict']
    grid = GridGenerator(20, (32, 128))
    for name in ('inv_delta_C', 'P_hat'):
        expected = state[f'model.Transformation.GridGenerator.{name}']
        torch.testing.assert_close(getattr(grid, name).half().float(), expected, atol=0, rtol=1e-3)


def test_initial_rectification_is_the_same_for_every_image():
    """With the published initialisation the localisation head ignores its input, so the TPS starts as a fixed warp."""
    model = TRBC(num_classes=5, img_size=(32, 32), num_fiducial=4, output_channel=16, hidden_size=8).eval()
    images = torch.randn(2, 3, 32, 32)
    points = model.Transformation.LocalizationNetwork(images)
    assert torch.equal(points[0], points[1])
    torch.testing.assert_close(points[0], torch.tensor([[-1.0, 0.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 0.0]]))


# -- TRBA greedy decoding --------------------------------------------------------------------------------------------

TINY_ARCH_OVERRIDES = ['model.arch.hidden_size=32', 'model.arch.output_channel=32', 'model.arch.num_fiducial=4']
TINY_TRBA = dict(img_size=(32, 32), num_fiducial=4, output_channel=16, hidden_size=16, char_embed_dim=8)


def tiny_trba(seed: int = 0, max_label_length: int = 8) -> TRBA:
    torch.manual_seed(seed)
    return TRBA(num_classes=13, max_label_length=max_label_length, bos_id=11, eos_id=0, **TINY_TRBA).eval()


def trba_that_stops_early() -> tuple[TRBA, torch.Tensor]:
    """A tiny TRBA whose EOS bias is raised until greedy decoding of the test batch ends before the last step, with
    sequences ending at different steps.

    The published initialisation (std 0.02) makes a fresh model's output nearly independent of the image and the
    previous token, so the sequence model and decoder get larger random weights first.
    """
    model = tiny_trba(seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*model.SequenceModeling.parameters(), *model.Prediction.parameters()]:
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    images = torch.randn(4, 3, 32, 32, generator=generator)
    for bias in torch.linspace(0.0, 2.0, 81):
        with torch.no_grad():
            model.Prediction.generator.bias[model.eos_id] = bias
            is_eos = model(images, model.max_label_length).argmax(-1) == model.eos_id
        first_eos = is_eos.to(torch.uint8).argmax(1)
        if is_eos.any(1).all() and 0 < first_eos.max() < model.max_label_length and first_eos.unique().numel() > 1:
            return model, images
    raise AssertionError('no EOS bias made the test model stop early')


@pytest.mark.parametrize('eos_check_interval', [None, 1, 3, 100])
def test_trba_stops_at_eos_without_max_length(eos_check_interval):
    model, images = trba_that_stops_early()
    model.eos_check_interval = eos_check_interval
    with torch.no_grad():
        full = model(images, model.max_label_length)
        early = model(images)
    assert full.shape[1] == model.max_label_length + 1
    first_eos = (full.argmax(-1) == model.eos_id).to(torch.uint8).argmax(1)
    # One past the latest first EOS, whatever the check interval: the strings and confidences are those of `full`.
    assert early.shape[1] == int(first_eos.max()) + 1 < full.shape[1]
    torch.testing.assert_close(early, full[:, : early.shape[1]], atol=0, rtol=0)


def test_trba_decodes_every_step_while_a_sequence_is_unfinished():
    model, images = trba_that_stops_early()
    with torch.no_grad():
        model.Prediction.generator.bias[model.eos_id] = -100.0  # no sequence ever ends
        assert model(images).shape == (4, model.max_label_length + 1, 13)


def test_eos_check_interval_is_a_runtime_option():
    system = build_system(model_config('trba', ['charset=36_lowercase', *TINY_ARCH_OVERRIDES]))
    set_runtime_options(system, {'eos_check_interval': 2})
    assert system.model.eos_check_interval == 2
    with pytest.raises(AttributeError, match='no runtime option'):
        set_runtime_options(system, {'refine_iters': 1})


def test_trba_max_length_is_clipped():
    model = tiny_trba()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(images, 3).shape == (2, 4, 13)
        assert model(images, 100).shape == (2, model.max_label_length + 1, 13)
        assert model(images, 0).shape == (2, 1, 13)


def test_teacher_forcing_on_greedy_tokens_reproduces_greedy_decoding():
    """Training feeds position i the token of position i - 1 (BOS first); fed its own greedy predictions, the
    teacher-forced path must give the greedy logits."""
    model = tiny_trba(seed=1)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        greedy = model(images, 6)
        bos = torch.full((3, 1), model.bos_id, dtype=torch.long)
        inputs = torch.cat([bos, greedy.argmax(-1)[:, :-1]], dim=1)
        forced = model.forward_teacher_forced(images, inputs)
    torch.testing.assert_close(forced, greedy, atol=1e-5, rtol=0)


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match='height from 32 to 47'):
        CRNN(num_classes=5, img_size=(64, 128))
    with pytest.raises(ValueError, match='num_fiducial must be even'):
        TRBC(num_classes=5, num_fiducial=5, output_channel=16, hidden_size=8)
    with pytest.raises(ValueError, match='height of at least 32'):
        TRBC(num_classes=5, img_size=(16, 64), output_channel=16, hidden_size=8)
    with pytest.raises(ValueError, match=r'expected images of shape \(N, 3, H, W\)'):
        tiny_trba()(torch.randn(1, 1, 32, 32))
    cfg = model_config('trbc', ['+model.arch.char_embed_dim=16'])
    with pytest.raises(ValueError, match=r"unknown model.arch key\(s\) \['char_embed_dim'\] for TRBC"):
        build_system(cfg)


# -- Decoding hand-made outputs ----------------------------------------------------------------------------------------


def distinct_probs(ids: list[int], num_classes: int, top: list[float]) -> torch.Tensor:
    """(L, C) probabilities whose argmax at step i is ids[i] with probability top[i]."""
    probs = torch.empty(len(ids), num_classes)
    for row, (i, p) in enumerate(zip(ids, top)):
        probs[row] = (1 - p) / (num_classes - 1)
        probs[row, i] = p
    return probs


def test_ctc_decoding_of_handmade_outputs():
    tok = CTCTokenizer('abc')  # blank=0, a=1, b=2, c=3
    top = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    frames = [
        [0, 0, 1, 1, 0, 1, 2, 0, 0],  # leading and trailing blanks; 'a' repeated across a blank is kept twice
        [3, 3, 3, 3, 3, 3, 3, 3, 3],  # one character held over every frame
        [0, 0, 0, 0, 0, 0, 0, 0, 0],  # all blank
        [2, 0, 2, 2, 0, 0, 3, 0, 1],
    ]
    probs = torch.stack([distinct_probs(f, 4, top) for f in frames])
    texts, confidences = tok.decode(probs)
    assert texts == ['aab', 'c', '', 'bbca']
    # Every frame is part of the CTC path, so each one's probability counts towards the confidence.
    for conf in confidences:
        torch.testing.assert_close(conf, torch.tensor(top), atol=0, rtol=0)


def test_attention_decoding_of_handmade_outputs():
    tok = CharTokenizer('abc')  # [E]=0, a=1, b=2, c=3, [B]=4, [P]=5: TRBA's head predicts all six
    top = [0.5, 0.6, 0.7, 0.8, 0.9]
    steps = [
        [0, 1, 2, 3, 0],  # EOS first: empty string, the EOS probability is the confidence
        [1, 2, 0, 3, 3],  # EOS in the middle: cut there, EOS probability included
        [3, 1, 1, 2, 2],  # no EOS: every step kept
    ]
    probs = torch.stack([distinct_probs(s, 6, top) for s in steps])
    texts, confidences = tok.decode(probs)
    assert texts == ['', 'ab', 'caabb']
    expected = [top[:1], top[:3], top]
    for conf, exp in zip(confidences, expected):
        torch.testing.assert_close(conf, torch.tensor(exp), atol=0, rtol=0)


# -- Training ---------------------------------------------------------------------------------------------------------

TRAIN_COMMON = [
    'charset=36_lowercase',
    'model.max_label_length=8',
    'model.batch_size=16',
    'model.img_size=[32,32]',
    'model.lr=3e-3',
    'model.scale_lr=false',
    'model.scheduler.name=constant',
]
TINY_TRAINING = {
    'crnn': ['+experiment=crnn', 'model.arch.hidden_size=32', 'model.arch.cnn_channels=[8,16,32,32,32,32,32]'],
    'trba': ['+experiment=trba', *TINY_ARCH_OVERRIDES],
    'trbc': ['+experiment=trbc', *TINY_ARCH_OVERRIDES],
}


@pytest.mark.parametrize('name', TINY_TRAINING)
def test_short_training_lowers_the_loss(name, word_data, tmp_path):
    losses = training_losses(TINY_TRAINING[name] + TRAIN_COMMON, word_data, tmp_path, steps=30)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # Observed ratios: ~0.3 for the CTC models, ~0.55 for TRBA (uniform over its 39 classes at first); a loss whose
    # gradients do not reach the weights stays near 1.
    assert last < 0.7 * first, losses
