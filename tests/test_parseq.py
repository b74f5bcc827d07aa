"""PARSeq: published layout, parity with the reference outputs, cached decoding, and the PLM objective."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from strhub.data.tokenizer import CharTokenizer
from strhub.models.parseq import PARSeq, generate_permutations, permutation_masks, plm_loss
from tests.conftest import read_layout

CHARSET_94 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'
NUM_TOKENS_94 = len(CHARSET_94) + 3

# The published configurations (experiment configs of the reference release), with their published sizes.
PUBLISHED = {
    'parseq': (dict(), 23.8),
    'parseq_tiny': (dict(embed_dim=192, enc_num_heads=3, dec_num_heads=6), 6.0),
    'parseq_patch16_224': (dict(img_size=(224, 224), patch_size=(16, 16)), 24.1),
}
TINY = dict(img_size=(8, 16), patch_size=(4, 4), embed_dim=32, enc_num_heads=2, enc_depth=1, dec_num_heads=2)


def tiny_model(seed: int = 0, num_tokens: int = 13, max_label_length: int = 8, **kwargs) -> PARSeq:
    torch.manual_seed(seed)
    return PARSeq(num_tokens, max_label_length, **{**TINY, **kwargs}).eval()


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_size(name):
    overrides, size_m = PUBLISHED[name]
    model = PARSeq(NUM_TOKENS_94, 25, **overrides)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == size_m


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_layout_loads_strictly(name, shared_dir):
    layout = read_layout(shared_dir / 'reference' / 'keys' / f'{name}.tsv')
    model = PARSeq(NUM_TOKENS_94, 25, **PUBLISHED[name][0])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    release = {key: torch.randn(shape) for key, shape in layout.items()}
    model.load_state_dict(release, strict=True)
    assert torch.equal(model.head.weight, release['head.weight'])


def load_golden(shared_dir, name: str) -> tuple[PARSeq, dict]:
    golden = torch.load(shared_dir / 'reference' / 'golden' / f'{name}.pt', weights_only=True)
    cfg = golden['config']
    sizes = ('img_size', 'patch_size', 'embed_dim', 'enc_num_heads', 'enc_mlp_ratio', 'enc_depth', 'dec_num_heads')
    sizes += ('dec_mlp_ratio', 'dec_depth', 'dropout', 'decode_ar', 'refine_iters')
    model = PARSeq(len(CharTokenizer(cfg['charset_train'])), cfg['max_label_length'], **{k: cfg[k] for k in sizes})
    state = {k: v.float() if v.is_floating_point() else v for k, v in golden['state_dict'].items()}
    model.load_state_dict(state, strict=True)
    return model.eval(), golden


@pytest.mark.parametrize('use_cache', [True, False])
@pytest.mark.parametrize('name', ['parseq', 'parseq-dec2'])
def test_golden_parity(shared_dir, name, use_cache):
    model, golden = load_golden(shared_dir, name)
    model.use_cache = use_cache
    with torch.no_grad():
        for decode_ar, refine_iters in itertools.product((0, 1), (0, 1, 2)):
            model.decode_ar, model.refine_iters = bool(decode_ar), refine_iters
            logits = model(golden['images'])
            expected = golden['outputs'][f'logits_ar{decode_ar}_refine{refine_iters}']
            assert logits.shape == expected.shape
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
            assert torch.equal(logits.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize('name', ['parseq', 'parseq-dec2'])
def test_golden_validation_path(shared_dir, name):
    model, golden = load_golden(shared_dir, name)
    tokenizer = CharTokenizer(golden['config']['charset_train'])
    targets = tokenizer.encode(golden['labels'])[:, 1:]
    with torch.no_grad():
        logits = model(golden['images'], targets.shape[1] - 1)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=tokenizer.pad_id)
    out = golden['outputs']
    torch.testing.assert_close(logits, out['val_logits'], atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, out['val_loss'], atol=1e-4, rtol=0)
    assert (targets != tokenizer.pad_id).sum() == out['val_loss_numel']


def model_that_stops_early(dec_depth: int) -> PARSeq:
    """A tiny model whose EOS bias is raised until greedy decoding of the test batch ends early, with sequences
    ending at different steps (so the early stop and the length of its output are exercised)."""
    model = tiny_model(seed=2, dec_depth=dec_depth, refine_iters=0)
    images = torch.randn(3, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    for bias in torch.linspace(0.0, 0.5, 51):
        with torch.no_grad():
            model.head.bias[model.eos_id] = bias
            is_eos = model(images).argmax(-1) == model.eos_id
        first_eos = is_eos.to(torch.uint8).argmax(1)
        if is_eos.any(1).all() and first_eos.max() > 0 and first_eos.unique().numel() > 1:
            return model
    raise AssertionError('no EOS bias made the test model stop early')


@pytest.mark.parametrize('dec_depth', [1, 2])
@pytest.mark.parametrize('batch_size', [1, 3])
def test_cached_decoding_equals_reference_algorithm(dec_depth, batch_size):
    model = tiny_model(seed=1, dec_depth=dec_depth)
    images = torch.randn(batch_size, 3, 8, 16)
    with torch.no_grad():
        for decode_ar, refine_iters, max_length in itertools.product((True, False), (0, 1, 2), (None, 5)):
            model.decode_ar, model.refine_iters = decode_ar, refine_iters
            model.use_cache = False
            expected = model(images, max_length)
            model.use_cache = True
            torch.testing.assert_close(model(images, max_length), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('eos_check_interval', [None, 3])
@pytest.mark.parametrize('dec_depth', [1, 2])
def test_early_stop_matches_reference_length(dec_depth, eos_check_interval):
    model = model_that_stops_early(dec_depth)
    model.eos_check_interval = eos_check_interval
    images = torch.randn(3, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for refine_iters in (0, 1):
            model.refine_iters = refine_iters
            model.use_cache = False
            expected = model(images)
            model.use_cache = True
            logits = model(images)
            if refine_iters == 0:
                assert expected.shape[1] < model.max_label_length + 1, 'the reference did not stop early'
            assert logits.shape == expected.shape
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_given_max_length_decodes_every_position_and_is_clipped():
    model = model_that_stops_early(dec_depth=1)
    images = torch.randn(3, 3, 8, 16)
    with torch.no_grad():
        assert model(images, 4).shape == (3, 5, 11)
        assert model(images, 100).shape == (3, model.max_label_length + 1, 11)


def test_bad_inputs_have_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r'expected images of shape \(N, 3, 8, 16\)'):
        model(torch.randn(1, 3, 32, 128))
    tgt = torch.zeros(1, 3, dtype=torch.long)
    float_mask = torch.zeros(3, 3).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), float('-inf'))
    with pytest.raises(TypeError, match='must be a bool tensor'):
        model.decode(tgt, torch.randn(1, 8, 32), float_mask)
    with pytest.raises(ValueError, match='not a multiple of patch_size'):
        PARSeq(13, 8, img_size=(10, 16), patch_size=(4, 4))


def test_canonical_permutation_masks_are_causal():
    content_mask, query_mask = permutation_masks(torch.arange(6))
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    # Context position i sees 0..i; the query predicting position i + 1 also sees 0..i.
    assert torch.equal(content_mask, causal)
    assert torch.equal(query_mask, causal)


def test_permutation_masks_follow_the_order():
    perm = torch.tensor([0, 3, 1, 4, 2, 5])
    content_mask, query_mask = permutation_masks(perm)
    order = perm.tolist()
    for i, j in itertools.product(range(5), range(5)):
        assert content_mask[i, j] == (order.index(j) > order.index(i))
        assert query_mask[i, j] == (order.index(j) >= order.index(i + 1))


def test_permutations_canonical_first_reverse_second_then_mirrored_pairs():
    tgt = torch.zeros(2, 12, dtype=torch.long)  # 10 characters
    perms = generate_permutations(tgt, 6, True, True, torch.Generator().manual_seed(0))
    assert perms.shape == (6, 12)
    assert torch.equal(perms[0], torch.arange(12))
    # Second: EOS right after BOS, then the characters right to left.
    assert perms[1].tolist() == [0, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert torch.equal(perms[3, 1:-1], perms[2, 1:-1].flip(0))
    assert torch.equal(perms[5, 1:-1], perms[4, 1:-1].flip(0))
    assert (perms[:, 0] == 0).all() and (perms[2:, -1] == 11).all()
    for p in perms:
        assert sorted(p.tolist()) == list(range(12))


@pytest.mark.parametrize('num_chars', [2, 3, 4])
def test_short_labels_enumerate_distinct_orders(num_chars):
    tgt = torch.zeros(1, num_chars + 2, dtype=torch.long)
    for seed in range(5):
        perms = generate_permutations(tgt, 6, True, True, torch.Generator().manual_seed(seed))
        expected_count = min(6, math.factorial(num_chars))
        assert len(perms) == expected_count
        assert len({tuple(p.tolist()) for p in perms}) == expected_count, 'an order was drawn twice'
        assert torch.equal(perms[0], torch.arange(num_chars + 2))


def test_single_character_labels_have_one_order():
    assert generate_permutations(torch.zeros(4, 3, dtype=torch.long), 6, True, True).tolist() == [[0, 1, 2]]


def test_permutations_without_forward_order():
    # The left-to-right order is then not forced first (it may still be drawn).
    for num_chars in (3, 10):
        tgt = torch.zeros(1, num_chars + 2, dtype=torch.long)
        perms = generate_permutations(tgt, 6, False, True, torch.Generator().manual_seed(0))
        assert len(perms) == 6
        assert not torch.equal(perms[0], torch.arange(num_chars + 2))


def per_order_loss(model: PARSeq, images, tgt, perms) -> torch.Tensor:
    """The objective as published: one decoder pass per order, EOS dropped from the targets after two orders."""
    memory = model.encode(images)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    padding = (tgt_in == model.pad_id) | (tgt_in == model.eos_id)
    total, count = 0.0, 0
    for i, perm in enumerate(perms):
        content_mask, query_mask = permutation_masks(perm)
        logits = model.head(model.decode(tgt_in, memory, content_mask, padding, tgt_query_mask=query_mask))
        n = int((tgt_out != model.pad_id).sum())
        total = total + n * F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=model.pad_id)
        count += n
        if i == 1:
            tgt_out = tgt_out.masked_fill(tgt_out == model.eos_id, model.pad_id)
    return total / count


@pytest.mark.parametrize('dec_depth', [1, 2])
def test_plm_loss_equals_per_order_decoding(dec_depth):
    charset = 'abcdefghij'
    tokenizer = CharTokenizer(charset)
    model = tiny_model(num_tokens=len(tokenizer), dec_depth=dec_depth)
    tgt = tokenizer.encode(['abcdefg', 'hij', 'aaaaaab'])
    images = torch.randn(3, 3, 8, 16)
    perms = generate_permutations(tgt, 6, True, True, torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss, numel = plm_loss(model, images, tgt, 6, True, True, torch.Generator().manual_seed(3))
        expected = per_order_loss(model, images, tgt, perms)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    # Two orders train EOS (3 labels) and every order trains every character (17).
    assert numel == 6 * 17 + 2 * 3


@pytest.mark.parametrize('dec_depth', [1, 2])
def test_plm_loss_gradients_equal_per_order_decoding(dec_depth):
    # What one training step optimises: for the same batch and orders, in training mode (dropout off, so that both
    # compute the same function), the batched loss gives the same gradient to every parameter as the published
    # one-pass-per-order loop.
    tokenizer = CharTokenizer('abcdefghij')
    tgt = tokenizer.encode(['abcdefg', 'hij', 'aaaaaab', 'j'])
    images = torch.randn(4, 3, 8, 16, generator=torch.Generator().manual_seed(1))
    perms = generate_permutations(tgt, 6, True, True, torch.Generator().manual_seed(5))
    grads = []
    for batched in (True, False):
        model = tiny_model(num_tokens=len(tokenizer), dec_depth=dec_depth, dropout=0.0).train()
        if batched:
            loss, _ = plm_loss(model, images, tgt, 6, True, True, torch.Generator().manual_seed(5))
        else:
            loss = per_order_loss(model, images, tgt, perms)
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_plm_loss_decreases_when_overfitting():
    tokenizer = CharTokenizer('0123456789abcdefghijklmnopqrstuvwxyz')
    model = tiny_model(num_tokens=len(tokenizer), dropout=0.0).train()
    images = torch.randn(4, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    tgt = tokenizer.encode(['hello', 'w0rld', 'a', 'salmon'])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss, _ = plm_loss(model, images, tgt, 6, True, True, generator)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
