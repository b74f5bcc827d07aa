"""TrOCR: published sizes, parity with Hugging Face TrOCR (ViT/DeiT encoders, every decoder flag), checkpoint import
(Hugging Face and unilm layouts), tokenizers from local files, greedy/beam generation with a cache, training from
scratch and fine-tuning from imported weights, and the scripts (test.py, read.py, bench.py)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from omegaconf import OmegaConf

from strhub.config import compose_config, model_config
from strhub.models.loading import build_system, count_parameters, load, load_pretrained_weights
from strhub.models.registry import importer
from strhub.models.trocr import TrOCR, beam_search, greedy_search
from strhub.models.trocr.generation import COMPACT_FRACTION
from strhub.models.trocr.tokenizer import SubwordTokenizer, TokenizerConfig, load_subword_backend
from strhub.training import train
from tests.conftest import REPO_ROOT, training_losses

transformers = pytest.importorskip('transformers')

VOCAB = 48  # tiny random vocabularies: <s>=0, <pad>=1, </s>=2 as in the published ones
IMG, PATCH = (16, 32), (8, 8)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (a second one mostly waits, and spins on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass(frozen=True)
class Case:
    """A tiny Hugging Face TrOCR and the arch flags that describe it."""

    name: str
    deit: bool
    qkv_bias: bool
    hf_decoder: dict = field(default_factory=dict)
    arch: dict = field(default_factory=dict)
    seed: int = 0


CASES = [
    # trocr-base / trocr-large: ViT without qkv biases, learned positions, embedding LayerNorm, tied, GELU.
    Case('vit-learned-tied-gelu', deit=False, qkv_bias=False, seed=2),
    # trocr-small: DeiT (distillation token, qkv biases), scaled embeddings, untied, ReLU.
    Case(
        'deit-scaled-untied-relu',
        deit=True,
        qkv_bias=True,
        hf_decoder=dict(activation_function='relu', scale_embedding=True, tie_word_embeddings=False),
        arch=dict(activation='relu', scale_embedding=True, tie_embeddings=False),
        seed=2,
    ),
    # trocr-large-printed / stage 1: sinusoidal positions, no embedding LayerNorm, scaled, untied, ReLU.
    Case(
        'vit-sinusoidal-nonorm-untied-relu',
        deit=False,
        qkv_bias=True,
        hf_decoder=dict(
            activation_function='relu',
            scale_embedding=True,
            tie_word_embeddings=False,
            use_learned_position_embeddings=False,
            layernorm_embedding=False,
        ),
        arch=dict(
            activation='relu', scale_embedding=True, tie_embeddings=False, learned_positions=False, embed_norm=False
        ),
        seed=3,
    ),
]
TINY_ARCH = dict(
    patch_size=list(PATCH),
    enc_embed_dim=32,
    enc_depth=2,
    enc_num_heads=2,
    enc_mlp_ratio=2,
    dec_embed_dim=24,
    dec_depth=2,
    dec_num_heads=2,
    dec_ffn_dim=48,
    max_positions=20,
    vocab_size=VOCAB,
)


def hf_model(case: Case):
    """A tiny random VisionEncoderDecoderModel. Weights are redrawn wider than the Hugging Face initialisation so
    that outputs depend on the image, and the EOS row of the output projection is enlarged so that some sequences end
    early and others do not."""
    torch.manual_seed(case.seed)
    enc = dict(
        image_size=list(IMG),
        patch_size=list(PATCH),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        qkv_bias=case.qkv_bias,
    )
    encoder = (
        transformers.DeiTModel(transformers.DeiTConfig(**enc))
        if case.deit
        else transformers.ViTModel(transformers.ViTConfig(**enc))
    )
    decoder_config = transformers.TrOCRConfig(
        vocab_size=VOCAB,
        d_model=24,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=48,
        cross_attention_hidden_size=32,
        max_position_embeddings=20,
        **case.hf_decoder,
    )
    model = transformers.VisionEncoderDecoderModel(
        encoder=encoder, decoder=transformers.TrOCRForCausalLM(decoder_config)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or name.endswith(('token', 'position_embeddings')):
                p.normal_(0, 0.3)
        model.decoder.output_projection.weight[2] *= 3
    return model.eval()


def our_model(case: Case, max_length: int = 12) -> TrOCR:
    arch = {**TINY_ARCH, 'enc_qkv_bias': case.qkv_bias, 'enc_distilled': case.deit, **case.arch}
    return TrOCR(max_length=max_length, img_size=IMG, **arch).eval()


def load_hf_state(model: TrOCR, state: dict) -> None:
    imported = importer('trocr_hf')(state)
    model.load_state_dict({k.removeprefix('model.'): v for k, v in imported.items()}, strict=True)


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *IMG, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module', params=CASES, ids=[c.name for c in CASES])
def pair(request):
    case = request.param
    hf = hf_model(case)
    ours = our_model(case)
    load_hf_state(ours, hf.state_dict())
    return case, hf, ours


# -- sizes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name, millions',
    [('trocr-small', 62), ('trocr-base', 334), ('trocr-large', 558), ('trocr-large-printed', 608)],
)
def test_published_sizes(name, millions):
    with torch.device('meta'):  # the weights are never needed, only their shapes
        system = build_system(model_config(name))
    assert count_parameters(system.model) == pytest.approx(millions * 1e6, rel=0.01)
    assert tuple(system.hparams.img_size) == (384, 384)
    assert system.model.encoder.patch_embed.num_patches == 24 * 24


def test_published_configs_differ_in_the_published_flags():
    small, large_printed = model_config('trocr-small'), model_config('trocr-large-printed')
    assert small['arch']['enc_distilled'] and small['arch']['enc_qkv_bias'] and small['arch']['vocab_size'] == 64044
    assert not large_printed['arch']['learned_positions'] and not large_printed['arch']['embed_norm']
    assert model_config('trocr-base')['arch']['tie_embeddings'] and not small['arch']['tie_embeddings']


# -- parity with Hugging Face --------------------------------------------------------------------------------------


def test_encoder_and_teacher_forced_logits_match_hugging_face(pair):
    case, hf, ours = pair
    x = images()
    tokens = torch.randint(3, VOCAB, (6, 9), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 2  # the decoder start
    with torch.no_grad():
        expected_memory = hf.encoder(pixel_values=x).last_hidden_state
        memory = ours.encode(x)
        expected = hf(pixel_values=x, decoder_input_ids=tokens).logits
        logits = ours.decode(tokens, memory)
    assert memory.shape == expected_memory.shape == (6, 8 + (2 if case.deit else 1), 32)
    torch.testing.assert_close(memory, expected_memory, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_greedy_generation_matches_hugging_face_generate(pair):
    case, hf, ours = pair
    x = images(8, seed=3)
    with torch.no_grad():
        expected = hf.generate(pixel_values=x, max_new_tokens=ours.max_length + 1, do_sample=False, num_beams=1)
        generated = ours.generate(x)
    # Hugging Face returns the decoder start first, and padding after each sequence's EOS.
    assert torch.equal(generated.tokens, expected[:, 1:])
    ended = (generated.tokens == 2).any(1)
    assert ended.any() and not ended.all()  # the case exercises stopping per sequence


def test_hugging_face_files_import_through_pretrained(pair, tmp_path):
    """The published files' key layout (what save_pretrained writes) goes through ``pretrained=<file>``."""
    case, hf, ours = pair
    hf.save_pretrained(tmp_path)
    overrides = [f'model.arch.{k}={json.dumps(v)}' for k, v in {**TINY_ARCH, **case.arch}.items()]
    overrides += [
        f'model.img_size={list(IMG)}',
        f'model.arch.enc_qkv_bias={str(case.qkv_bias).lower()}',
        f'model.arch.enc_distilled={str(case.deit).lower()}',
        'model.max_label_length=11',
    ]
    system = build_system(model_config('trocr-base', overrides))
    load_pretrained_weights(system, tmp_path / 'model.safetensors')
    for key, value in ours.state_dict().items():
        assert torch.equal(system.model.state_dict()[key], value), key


def to_unilm(state: dict) -> dict:
    """The original unilm (fairseq + timm) layout, made from a Hugging Face state dict by the inverse renaming and
    fusing query/key/value into timm's ``qkv``."""
    out = {}
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith('decoder.model.decoder.'):
            out['decoder.' + key.removeprefix('decoder.model.decoder.')] = value
        elif key == 'decoder.output_projection.weight':
            out[key] = value
        elif key.startswith('encoder.layers.'):
            _, _, i, rest = key.split('.', 3)
            renamed = {
                'attention.o_proj': 'attn.proj',
                'layernorm_before': 'norm1',
                'layernorm_after': 'norm2',
                'mlp.fc1': 'mlp.fc1',
                'mlp.fc2': 'mlp.fc2',
            }
            module, kind = rest.rsplit('.', 1)
            if module in renamed:
                out[f'encoder.deit.blocks.{i}.{renamed[module]}.{kind}'] = value
            else:
                blocks.setdefault(f'encoder.deit.blocks.{i}.attn.qkv.{kind}', {})[module[-6]] = value
        elif not key.startswith('encoder.pooler'):
            names = {
                'encoder.embeddings.cls_token': 'cls_token',
                'encoder.embeddings.distillation_token': 'dist_token',
                'encoder.embeddings.position_embeddings': 'pos_embed',
                'encoder.embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
                'encoder.embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
                'encoder.layernorm.weight': 'norm.weight',
                'encoder.layernorm.bias': 'norm.bias',
            }
            out[f'encoder.deit.{names[key]}'] = value
    for key, parts in blocks.items():
        out[key] = torch.cat([parts['q'], parts['k'], parts['v']])
    out['decoder.version'] = torch.tensor([3.0])
    out['encoder.deit.head.weight'] = torch.zeros(10, 32)
    return out


def test_unilm_layout_imports_to_the_same_weights(pair):
    case, hf, ours = pair
    unilm = to_unilm(hf.state_dict())
    assert any(k.endswith('attn.qkv.weight') for k in unilm) and not any('q_proj' in k for k in unilm if 'deit' in k)
    if case.hf_decoder.get('tie_word_embeddings', True):
        unilm.pop('decoder.output_projection.weight', None)  # tied checkpoints may omit it
    fresh = our_model(case)
    state = build_system_state(fresh, {'model': unilm})
    for key, value in ours.state_dict().items():
        assert torch.equal(state[key], value), key


def build_system_state(model: TrOCR, checkpoint: dict) -> dict:
    from strhub.models.trocr.system import TrOCRSystem

    imported = TrOCRSystem.import_foreign_state(checkpoint)
    model.load_state_dict({k.removeprefix('model.'): v for k, v in imported.items()}, strict=True)
    return model.state_dict()


def test_foreign_keys_are_named_in_the_error():
    state = hf_model(CASES[0]).state_dict()
    state['decoder.model.decoder.layers.0.adapter.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'no counterpart in our model .*adapter\.weight'):
        importer('trocr_hf')(state)
    state = hf_model(CASES[0]).state_dict()
    state['enc_to_dec_proj.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='cross_attention_hidden_size'):
        importer('trocr_hf')(state)


# -- generation ----------------------------------------------------------------------------------------------------


def test_cached_greedy_decoding_equals_teacher_forcing_on_its_tokens(pair):
    _, _, ours = pair
    x = images()
    with torch.no_grad():
        memory = ours.encode(x)
        out = greedy_search(ours, ours.decoder.project_memory(memory), 13, stop_early=False, return_logits=True)
        start = torch.full((6, 1), ours.decoder_start_id)
        # The tokens fed back: each step's argmax, and padding after a sequence's EOS.
        inputs = torch.cat([start, out.tokens[:, :-1]], dim=1)
        reference = ours.decode(inputs, memory)
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
    ended = (out.tokens == ours.eos_id).int().cumsum(1) - (out.tokens == ours.eos_id).int() > 0
    assert torch.equal(out.logits.argmax(-1)[~ended], out.tokens[~ended])
    assert out.logits.shape == (6, 13, VOCAB)


def test_each_sequence_stops_at_its_first_eos(pair):
    _, _, ours = pair
    x = images(8, seed=3)
    with torch.no_grad():
        free = ours.generate(x)
        fixed = ours.generate(x, max_length=4)
        logits = ours(x, max_length=4)
    assert fixed.tokens.shape == (8, 5) and logits.shape == (8, 5, VOCAB)
    for row, log_probs in zip(free.tokens, free.token_log_probs):
        eos = (row == ours.eos_id).nonzero()
        if len(eos):
            end = int(eos[0]) + 1
            assert (row[end:] == ours.pad_id).all() and (log_probs[end:] == 0).all()
            assert (log_probs[:end] < 0).all()
    # Ended sequences leave the batch as decoding goes on: the rest decode as they would in it.
    with torch.no_grad():
        whole = greedy_search(ours, ours.decoder.project_memory(ours.encode(x)), 13, stop_early=False)
    length = free.tokens.shape[1]
    first_eos = torch.where((whole.tokens == ours.eos_id).any(1), (whole.tokens == ours.eos_id).int().argmax(1), 99)
    running_after = [int((first_eos > i).sum()) for i in range(length - 1)]
    assert any(0 < n <= (1 - COMPACT_FRACTION) * 8 for n in running_after)  # some rows left the batch early
    assert torch.equal(free.tokens, whole.tokens[:, :length])
    torch.testing.assert_close(free.token_log_probs, whole.token_log_probs[:, :length], atol=1e-5, rtol=0)
    # Decoding stops as soon as every sequence has ended.
    ended = (free.tokens == ours.eos_id).any(1)
    with torch.no_grad():
        subset = ours.generate(x[ended])
    ends = (subset.tokens == ours.eos_id).int().argmax(1) + 1
    assert subset.tokens.shape[1] == int(ends.max()) < ours.max_length + 1
    assert torch.equal(subset.tokens, free.tokens[ended, : subset.tokens.shape[1]])


def test_beam_search_of_width_one_is_greedy(pair):
    _, _, ours = pair
    with torch.no_grad():
        memory_kv = ours.decoder.project_memory(ours.encode(images(8, seed=3)))
        greedy = greedy_search(ours, memory_kv, 13, stop_early=True)
        beam = beam_search(ours, memory_kv, 13, beam_size=1, length_penalty=0.0)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.token_log_probs, greedy.token_log_probs, atol=1e-5, rtol=0)


def sequence_log_prob(model: TrOCR, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log-probability of each generated sequence up to and including its first EOS."""
    start = torch.full((tokens.shape[0], 1), model.decoder_start_id)
    log_probs = model.decode(torch.cat([start, tokens[:, :-1]], 1), model.encode(x)).log_softmax(-1)
    picked = log_probs.gather(2, tokens[..., None])[..., 0]
    after_eos = (tokens == model.eos_id).int().cumsum(1) - (tokens == model.eos_id).int() > 0
    return picked.masked_fill(after_eos, 0.0).sum(1)


def test_beam_search_is_no_worse_than_greedy_in_log_probability(pair):
    _, _, ours = pair
    x = images(8, seed=3)
    with torch.no_grad():
        greedy = ours.generate(x)
        beam = ours.generate(x, beam_size=4, length_penalty=0.0)
        rescored = sequence_log_prob(ours, x, beam.tokens)
        greedy_scores = sequence_log_prob(ours, x, greedy.tokens)
    # The cache reordering between steps is right: the beam's own scores are the model's.
    torch.testing.assert_close(beam.token_log_probs.sum(1), rescored, atol=1e-4, rtol=0)
    torch.testing.assert_close(greedy.token_log_probs.sum(1), greedy_scores, atol=1e-4, rtol=0)
    assert (rescored >= greedy_scores - 1e-4).all()
    assert (rescored > greedy_scores + 1e-3).any()  # and it finds better sequences somewhere


def test_length_penalty_and_beam_size_are_runtime_options(pair):
    _, _, ours = pair
    x = images(4, seed=3)
    ours.beam_size, ours.length_penalty = 3, 2.0
    try:
        with torch.no_grad():
            by_attribute = ours.generate(x)
            logits = ours(x, max_length=6)
        explicit = ours.generate(x, beam_size=3, length_penalty=2.0)
    finally:
        ours.beam_size, ours.length_penalty = 1, 1.0
    assert torch.equal(by_attribute.tokens, explicit.tokens)
    assert logits.shape == (4, 7, VOCAB)
    with pytest.raises(ValueError, match='beam_size must be >= 1'):
        ours.generate(x, beam_size=0)


# -- tokenizers ----------------------------------------------------------------------------------------------------

SPECIALS = ['<s>', '<pad>', '</s>', '<unk>']


@pytest.fixture(scope='module')
def bpe_files(tmp_path_factory):
    return make_bpe_files(tmp_path_factory.mktemp('bpe'))


def make_bpe_files(directory):
    """A tiny RoBERTa-style byte-level BPE vocabulary in ``directory``: specials, the 256 byte symbols and a few
    merges."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [('h', 'e'), ('l', 'l'), ('he', 'll'), ('Ġ', 'w'), ('o', 'r'), ('Ġw', 'or'), ('a', 'b')]
    vocab = {t: i for i, t in enumerate(SPECIALS + alphabet + [a + b for a, b in merges])}
    (directory / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
    lines = ['#version: 0.2'] + [f'{a} {b}' for a, b in merges]
    (directory / 'merges.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return directory, vocab, merges


LABELS = ['hello', 'Hello world!', 'ab12', 'x']


def test_roberta_bpe_files_encode_like_transformers(bpe_files):
    directory, vocab, merges = bpe_files
    ours = TokenizerConfig(kind='subword', path=str(directory)).build('', 'test')
    reference = transformers.RobertaTokenizer(vocab=vocab, merges=list(merges))
    encoded = ours.encode(LABELS)
    for row, label in zip(encoded, LABELS):
        expected = reference(label)['input_ids']  # <s> tokens </s>
        assert row[0] == 2 and row[1 : len(expected) + 1].tolist() == expected
        assert (row[len(expected) + 1 :] == ours.pad_id).all()
    assert encoded[0, 2:4].tolist() == [vocab['hell'], vocab['o']]  # the merges apply
    # Decoding skips BOS, stops at EOS and keeps the probabilities up to and including it.
    tokens = encoded[:, 1:]
    probs = torch.rand(tokens.shape)
    texts, confidences = ours.decode_tokens(tokens, probs)
    assert texts == LABELS
    lengths = [len(reference(label)['input_ids']) for label in LABELS]
    assert [len(c) for c in confidences] == lengths
    torch.testing.assert_close(confidences[1], probs[1, : lengths[1]])
    # The vocab.json itself works as the path too.
    by_file = TokenizerConfig(kind='subword', path=str(directory / 'vocab.json')).build('', 'test')
    assert torch.equal(by_file.encode(LABELS), encoded)


def test_sentencepiece_derived_tokenizer_json_encodes_like_transformers(tmp_path):
    pieces = [(t, 0.0) for t in SPECIALS] + [
        ('▁', -2.0), ('▁hello', -1.0), ('▁world', -1.5), ('h', -3.0), ('e', -3.0), ('l', -3.0), ('o', -3.0),
        ('w', -3.0), ('r', -3.0), ('d', -3.0), ('!', -3.0), ('a', -3.0), ('b', -3.0), ('1', -3.0), ('2', -3.0),
        ('x', -3.0), ('H', -3.0),
    ]  # fmt: skip
    reference = transformers.XLMRobertaTokenizer(vocab=pieces)
    path = tmp_path / 'tokenizer.json'
    reference.backend_tokenizer.save(str(path))
    ours = TokenizerConfig(kind='subword', path=str(path)).build('', 'test')
    encoded = ours.encode(LABELS)
    for row, label in zip(encoded, LABELS):
        expected = reference(label)['input_ids']
        assert row[1 : len(expected) + 1].tolist() == expected
    assert encoded[0, 2].item() == 5  # '▁hello' is one piece
    texts, _ = ours.decode_tokens(encoded[:, 1:], torch.ones(encoded[:, 1:].shape))
    assert texts == LABELS


def test_tokenizer_errors_say_what_to_fix(bpe_files, tmp_path):
    directory, vocab, _ = bpe_files
    with pytest.raises(FileNotFoundError, match='set model.tokenizer.path'):
        load_subword_backend(tmp_path / 'nowhere')
    lone = tmp_path / 'lone'
    lone.mkdir()
    (lone / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
    with pytest.raises(FileNotFoundError, match='needs the merges.txt'):
        load_subword_backend(lone)
    (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}', encoding='utf-8')
    with pytest.raises(ValueError, match='is not a tokenizers tokenizer.json'):
        load_subword_backend(tmp_path / 'bad.json')
    with pytest.raises(ValueError, match="no bos token '<bos>'"):
        TokenizerConfig(kind='subword', path=str(directory), bos_token='<bos>').build('', 'test')
    with pytest.raises(ValueError, match="unknown model.tokenizer.kind 'wordpiece'"):
        TokenizerConfig(kind='wordpiece').build('', 'test')
    # A model config without tokenizer files builds (benchmarks, sizes) but cannot convert text.
    system = build_system(model_config('trocr-base', tiny_subword_overrides()))
    with pytest.raises(ValueError, match='no tokenizer files are set.*model.tokenizer.path'):
        system.tokenizer.encode(['abc'])
    # The vocabulary must fit the output layer, and special ids must agree with the model's.
    with pytest.raises(ValueError, match=r'tokenizer has \d+ tokens but model.arch.vocab_size is 48'):
        build_system(model_config('trocr-base', tiny_subword_overrides(f'model.tokenizer.path={directory}')))
    overrides = tiny_subword_overrides(f'model.tokenizer.path={directory}', 'model.arch.vocab_size=300')
    with pytest.raises(ValueError, match='special token ids of the tokenizer'):
        build_system(model_config('trocr-base', overrides + ['model.arch.pad_id=3']))


def tiny_subword_overrides(*extra: str) -> list[str]:
    """trocr-base at tiny sizes (32x32 input), keeping its sub-word tokenizer settings."""
    arch = {**TINY_ARCH, 'patch_size': [16, 8]}
    return [f'model.arch.{k}={json.dumps(v)}' for k, v in arch.items()] + [
        'model.img_size=[32,32]',
        'model.max_label_length=8',
        *extra,
    ]


def test_checkpoint_hyperparameters_carry_the_vocabulary(bpe_files):
    directory, _, _ = bpe_files
    overrides = tiny_subword_overrides(f'model.tokenizer.path={directory}', 'model.arch.vocab_size=300')
    system = build_system(model_config('trocr-base', overrides))
    assert isinstance(system.tokenizer, SubwordTokenizer)
    spec = system.hparams.tokenizer
    assert spec['path'] == str(directory) and json.loads(spec['json'])['model']['type'] == 'BPE'
    # Rebuilt from the hyperparameters alone (as load() does), with the files gone.
    rebuilt = type(system)(**{**system.hparams, 'tokenizer': {**spec, 'path': '/nonexistent'}})
    assert torch.equal(rebuilt.tokenizer.encode(LABELS), system.tokenizer.encode(LABELS))
    # The default decoding length covers the longest label: BOS plus one token per (ASCII) character.
    assert system.model.max_length == 1 + 8


# -- systems, training, scripts ------------------------------------------------------------------------------------

# Small enough to train a few dozen steps on a CPU in seconds (cf. TINY_VITSTR): one 16x4 patch per image column.
TINY_TROCR = [
    '+experiment=trocr-str-tiny',
    'charset=36_lowercase',
    'model.max_label_length=8',
    'model.batch_size=16',
    'model.img_size=[16,64]',
    'model.arch.patch_size=[16,4]',
    'model.arch.enc_embed_dim=48',
    'model.arch.enc_depth=2',
    'model.arch.enc_num_heads=2',
    'model.arch.enc_mlp_ratio=2',
    'model.arch.dec_embed_dim=48',
    'model.arch.dec_depth=1',
    'model.arch.dec_num_heads=2',
    'model.arch.dec_ffn_dim=96',
    'model.arch.max_positions=16',
    'model.arch.dropout=0.0',
    'model.label_smoothing=0.0',
    'model.lr=6e-3',
    'model.scale_lr=false',
    'model.scheduler.name=constant',
]


def test_str_tiny_recipe():
    cfg = model_config('trocr-str-tiny')
    assert cfg['img_size'] == [32, 128] and cfg['arch']['patch_size'] == [4, 8]
    system = build_system(cfg)
    assert system.model.vocab_size == 94 + 3 and system.model.max_length == 25
    assert system.model.decoder_start_id == system.tokenizer.bos_id and system.model.eos_id == 0
    assert 3e6 < count_parameters(system.model) < 6e6
    labels = ['Hello', 'a1']
    tokens = system.tokenizer.encode(labels)
    assert tokens[:, 0].tolist() == [system.tokenizer.bos_id] * 2 and tokens[1, 3] == system.tokenizer.eos_id


def tiny_system(*extra: str):
    return build_system(OmegaConf.to_container(compose_config([*TINY_TROCR, *extra]).model, resolve=True))


def test_bad_configuration_has_clear_errors():
    with pytest.raises(ValueError, match=r'model.arch sets \[.vocab_size.\].*follow from the charset'):
        tiny_system('model.arch.vocab_size=100')
    with pytest.raises(ValueError, match=r"unknown model.tokenizer key\(s\) \['vocab'\]"):
        tiny_system('+model.tokenizer.vocab=x')
    with pytest.raises(ValueError, match='cannot freeze 3 encoder blocks: the encoder has 2'):
        tiny_system('model.freeze_encoder_blocks=3')
    with pytest.raises(ValueError, match='needs 9 decoder positions but max_positions is 8'):
        tiny_system('model.arch.max_positions=8')
    with pytest.raises(ValueError, match='not a multiple of patch_size'):
        tiny_system('model.arch.patch_size=[5,4]')
    with pytest.raises(ValueError, match=r'unknown activation .swish.'):
        tiny_system('model.arch.activation=swish')
    with pytest.raises(ValueError, match=r'label_smoothing must be in \[0, 1\)'):
        tiny_system('model.label_smoothing=1.0')
    model = tiny_system().model
    with pytest.raises(ValueError, match=r'expected images of shape \(N, 3, 16, 64\)'):
        model(torch.zeros(1, 3, 32, 128))


def test_training_loss_is_teacher_forced_cross_entropy_with_label_smoothing():
    system = tiny_system('model.label_smoothing=0.2')
    x, labels = torch.randn(3, 3, 16, 64), ['abc', 'a', 'hello']
    tokens = system.tokenizer.encode(labels)  # [B] characters [E] [P]...
    assert tokens[:, 0].tolist() == [system.tokenizer.bos_id] * 3 and tokens.shape == (3, 7)
    system.eval()  # no dropout: the two computations see the same network
    logits = system.model.decode(tokens[:, :-1], system.model.encode(x))
    targets = tokens[:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(end_dim=1), targets.flatten(), ignore_index=system.tokenizer.pad_id, label_smoothing=0.2
    )
    torch.testing.assert_close(system.training_loss(x, labels), expected)
    unsmoothed = torch.nn.functional.cross_entropy(
        logits.flatten(end_dim=1), targets.flatten(), ignore_index=system.tokenizer.pad_id
    )
    assert not torch.isclose(expected, unsmoothed)


def test_freezing_the_first_encoder_blocks():
    system = tiny_system('model.arch.enc_depth=3', 'model.freeze_encoder_blocks=2')
    frozen = {n for n, p in system.model.named_parameters() if not p.requires_grad}
    assert {'encoder.cls_token', 'encoder.pos_embed', 'encoder.patch_embed.proj.weight'} <= frozen
    prefixes = ('encoder.blocks.0.', 'encoder.blocks.1.', 'encoder.patch', 'encoder.cls', 'encoder.pos')
    assert all(n.startswith(prefixes) for n in frozen)
    assert not any(n.startswith('encoder.blocks.2.') for n in frozen)
    trainable = {id(p) for g in system.param_groups(0.0) for p in g['params']}
    assert not any(id(p) in trainable for n, p in system.model.named_parameters() if n in frozen)


@pytest.fixture(scope='module')
def trained(word_data, tmp_path_factory):
    run = tmp_path_factory.mktemp('trocr_run')
    losses = training_losses(TINY_TROCR, word_data, run, steps=30)
    return losses, run / 'checkpoints' / 'last.ckpt'


def test_training_from_scratch_lowers_the_loss(trained):
    losses, _ = trained
    assert len(losses) == 30
    # From ln(39) (uniform over the 36 characters and 3 specials) to well below half of it, still falling.
    assert losses[0] == pytest.approx(3.66, abs=0.1)
    assert statistics.mean(losses[-5:]) < 0.5 * losses[0] and statistics.mean(losses[-5:]) < min(losses[:10]), losses


def run_script(name: str, argv: list[str]) -> int:
    """Calls a top-level script's main() in-process (as tests/test_end_to_end.py does)."""
    spec = importlib.util.spec_from_file_location(f'strhub_script_{name}', REPO_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_checkpoint_goes_through_test_and_read_scripts(trained, word_data, tmp_path, capsys):
    _, ckpt = trained
    system = load(ckpt, beam_size=2)
    assert system.model.beam_size == 2 and system.hparams.name == 'trocr-str-tiny'
    args = [str(ckpt), '--data_root', str(word_data), '--num_workers', '0', '--device', 'cpu']
    assert run_script('test', [*args, '--results', str(tmp_path / 'r.json'), 'beam_size:int=2']) == 0
    table = capsys.readouterr().out
    assert '| IIIT5k' in table and '| Combined' in table
    assert json.loads((tmp_path / 'r.json').read_text())['results']['IIIT5k']['num_samples'] == 16
    from PIL import Image

    paths = []
    for i, color in enumerate(['white', 'gray']):
        paths.append(str(tmp_path / f'img{i}.png'))
        Image.new('RGB', (100, 32), color).save(paths[-1])
    assert run_script('read', [str(ckpt), '--images', *paths, '--device', 'cpu', 'beam_size:int=3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(p + ': ') and line.endswith(')') for line, p in zip(lines, paths))


def test_bench_script(tmp_path):
    overrides = [o for o in TINY_TROCR if not o.startswith(('data.', 'trainer.'))]
    options = ['device=cpu', 'threads=1', 'batch_sizes=[1,2]', 'min_run_time=0.02', f'output_dir={tmp_path}']
    cmd = [sys.executable, str(REPO_ROOT / 'bench.py'), *overrides, *options, f'+json={tmp_path / "bench.json"}']
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / 'bench.json').read_text())
    assert report['model'] == 'trocr-str-tiny' and [r['batch_size'] for r in report['latency']] == [1, 2]
    assert report['compute'][0]['module'] == 'total' and report['compute'][0]['gflops'] > 0


def test_fine_tuning_from_hugging_face_weights_with_a_frozen_encoder(bpe_files, word_data, tmp_path):
    """./train.py +experiment=trocr-base pretrained=<model.safetensors> model.tokenizer.path=<dir>, tiny."""
    directory, _, _ = bpe_files
    case = CASES[0]
    hf = hf_model(case)
    ours = our_model(case)
    load_hf_state(ours, hf.state_dict())
    hf.save_pretrained(tmp_path / 'hf')
    overrides = [f'model.arch.{k}={json.dumps(v)}' for k, v in TINY_ARCH.items()] + [
        '+experiment=trocr-base',
        f'model.img_size={list(IMG)}',
        'model.max_label_length=8',
        f'model.tokenizer.path={directory}',
        'model.arch.vocab_size=300',  # the tiny BPE has 267 tokens; the head is re-initialised for it
        'model.freeze_encoder_blocks=1',
        'model.batch_size=8',
        'model.lr=1e-3',
        f'pretrained={tmp_path / "hf" / "model.safetensors"}',
        'dataset=generated',
        f'data.root_dir={word_data}',
        'data.num_workers=0',
        'data.augment.enabled=false',
        'trainer.max_steps=2',
        'trainer.max_epochs=-1',
        '+trainer.limit_train_batches=2',
        'trainer.num_sanity_val_steps=0',
        'trainer.limit_val_batches=0',
        '+trainer.enable_progress_bar=false',
    ]
    system, _ = train(compose_config(overrides), tmp_path / 'run')
    state = system.model.state_dict()
    before = ours.state_dict()
    # The imported encoder: frozen parts unchanged, the rest trained; the vocabulary-sized tensors re-initialised.
    assert torch.equal(state['encoder.blocks.0.attn.qkv.weight'], before['encoder.blocks.0.attn.qkv.weight'])
    assert torch.equal(state['encoder.pos_embed'], before['encoder.pos_embed'])
    assert not torch.equal(state['encoder.blocks.1.attn.qkv.weight'], before['encoder.blocks.1.attn.qkv.weight'])
    assert state['decoder.embed_tokens.weight'].shape == (300, 24)
    # The checkpoint carries the vocabulary: it reads images without the tokenizer files.
    loaded = load(tmp_path / 'run' / 'checkpoints' / 'last.ckpt')
    assert isinstance(loaded.tokenizer, SubwordTokenizer) and loaded.hparams.tokenizer['json']
    texts, probs = loaded.predict(images(3))
    assert len(texts) == 3 and all(isinstance(t, str) and 0 < len(p) <= 10 for t, p in zip(texts, probs))
