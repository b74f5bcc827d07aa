"""MGP-STR: published sizes and recipe, Hugging Face parity, original-layout import, the three granularities of
tokenizers, fusion, training, per-head evaluation and attention maps."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
import statistics
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from strhub.config import compose_config, model_config
from strhub.data.augment import build_augmentation
from strhub.models import registry
from strhub.models.loading import build_system, count_parameters, load, load_pretrained_weights
from strhub.models.mgpstr import HEADS, MGPSTR
from strhub.models.mgpstr.convert import convert_checkpoint, save_checkpoint
from strhub.models.mgpstr.published import HF_LAYOUT, ORIGINAL_LAYOUT
from strhub.models.mgpstr.system import MGPSTRSystem, fuse_predictions
from strhub.models.mgpstr.tokenizer import (
    CharSlotTokenizer,
    SubwordTokenizer,
    SubwordVocabSpec,
    build_subword_tokenizer,
)
from tests.conftest import REPO_ROOT, training_losses

CHARSET = string.digits + string.ascii_lowercase
GPT2_MERGES = [('h', 'e'), ('l', 'l'), ('o', 'r'), ('he', 'll'), ('t', 'h'), ('i', 'n'), ('in', 'g'), ('e', 'r')]
BERT_WORDS = ['hello', 'the', 'world', 'ring', 'text', 'go']
BERT_SUFFIXES = ['##ing', '##er', '##lo', '##ld']
LABELS = ['hello', 'thing', 'world', 'x', 'shelling', 'a1b2', 'interhello', 'zz9']


# -- tiny published-format vocabularies ---------------------------------------------------------------------------


def gpt2_byte_symbols() -> list[str]:
    """GPT-2's 256 byte symbols in its vocabulary order: printable Latin-1 first (so '!' = 0, '"' = 1, '#' = 2)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


@pytest.fixture(scope='module')
def vocabs(tmp_path_factory) -> SimpleNamespace:
    return make_vocabs(tmp_path_factory.mktemp('vocab'))


def make_vocabs(root: Path) -> SimpleNamespace:
    """Tiny vocabularies in the published file formats under ``root``: GPT-2 (byte symbols + a few merges), BERT
    uncased ([SEP] = 102 as in the real one, which the Hugging Face processor relies on) and the character
    vocab.json."""
    gpt2, bert, char = root / 'gpt2', root / 'bert', root / 'char'
    for d in (gpt2, bert, char):
        d.mkdir()
    bpe = {s: i for i, s in enumerate(gpt2_byte_symbols())}
    for a, b in GPT2_MERGES:
        bpe[a + b] = len(bpe)
    (gpt2 / 'vocab.json').write_text(json.dumps(bpe, ensure_ascii=False), encoding='utf-8')
    (gpt2 / 'merges.txt').write_text('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in GPT2_MERGES))
    wp = ['[PAD]'] + [f'[unused{i}]' for i in range(99)] + ['[UNK]', '[CLS]', '[SEP]', '[MASK]']
    wp += list(CHARSET) + ['##' + c for c in CHARSET] + BERT_WORDS + BERT_SUFFIXES
    (bert / 'vocab.txt').write_text('\n'.join(wp) + '\n')
    (char / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(['[GO]', '[s]', *CHARSET])}))
    return SimpleNamespace(
        gpt2=gpt2, bert=bert, char=char, bpe_vocab=bpe, wp_vocab={t: i for i, t in enumerate(wp)}, bpe_size=len(bpe)
    )


def vocab_overrides(v: SimpleNamespace) -> list[str]:
    return [
        f"model.bpe.files=['{v.gpt2 / 'vocab.json'}','{v.gpt2 / 'merges.txt'}']",
        f'model.bpe.size={len(v.bpe_vocab)}',
        f"model.wordpiece.files=['{v.bert / 'vocab.txt'}']",
        f'model.wordpiece.size={len(v.wp_vocab)}',
    ]


TINY_ARCH = [
    'model.arch.embed_dim=32',
    'model.arch.depth=2',
    'model.arch.num_heads=2',
    'model.arch.mlp_ratio=2',
    'model.arch.norm_eps=1e-5',  # the Hugging Face port's LayerNorm epsilon
]


def tiny_hf_model(v: SimpleNamespace):
    from transformers import MgpstrConfig, MgpstrForSceneTextRecognition

    torch.manual_seed(0)
    config = MgpstrConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2.0,
        num_character_labels=2 + len(CHARSET),
        num_bpe_labels=len(v.bpe_vocab),
        num_wordpiece_labels=len(v.wp_vocab),
    )
    return MgpstrForSceneTextRecognition(config).eval()


def steer_heads(hf, v: SimpleNamespace, images: torch.Tensor) -> None:
    """Makes a random model read varied words from ``images``: sharper A3 selections, head logits centred and scaled
    to a unit-ish spread, no start/padding/[unused]/partial-byte tokens (whose published decoding keeps their
    names or mangles bytes), and a bonus for the end token so that some reads end and others do not."""
    allowed = {
        'char': [1, *range(2, 2 + len(CHARSET))],
        'bpe': [2] + [v.bpe_vocab[t] for t in [*CHARSET, *(a + b for a, b in GPT2_MERGES)]],
        'wp': [v.wp_vocab[t] for t in v.wp_vocab if not t.startswith('[')] + [v.wp_vocab['[SEP]']],
    }
    ends = {'char': 1, 'bpe': 2, 'wp': v.wp_vocab['[SEP]']}
    with torch.no_grad():
        tokens = hf.mgp_str(images)[0]
        for name, ids in allowed.items():
            a3, head = getattr(hf, f'{name}_a3_module'), getattr(hf, f'{name}_head')
            a3.tokenLearner[1].weight.mul_(30)
            logits = head(a3(tokens)[0]) - head.bias
            scale = 2 / logits.std(dim=(0, 1)).mean()
            head.weight.mul_(scale)
            head.bias.copy_(-logits.mean(dim=(0, 1)) * scale)
            blocked = torch.ones_like(head.bias, dtype=torch.bool)
            blocked[ids] = False
            head.bias[blocked] -= 50.0
            head.bias[ends[name]] += 2.0


def hf_processor(v: SimpleNamespace):
    """Hugging Face's MgpstrProcessor with the tiny vocabularies. Its public name needs sentencepiece and its
    constructor downloads the GPT-2 and BERT tokenizers; batch_decode only needs the three tokenizers."""
    from transformers import BertTokenizer, GPT2Tokenizer, MgpstrTokenizer
    from transformers.models.mgp_str.processing_mgp_str import MgpstrProcessor

    processor = MgpstrProcessor.__new__(MgpstrProcessor)
    processor.char_tokenizer = MgpstrTokenizer(vocab_file=str(v.char / 'vocab.json'))
    processor.bpe_tokenizer = GPT2Tokenizer.from_pretrained(str(v.gpt2))
    processor.wp_tokenizer = BertTokenizer.from_pretrained(str(v.bert))
    return processor


def tiny_system(v: SimpleNamespace) -> MGPSTRSystem:
    return build_system(model_config('mgp-str', TINY_ARCH + vocab_overrides(v))).eval()


# -- sizes and recipe ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name, millions', [('mgp-str-tiny', 21), ('mgp-str-small', 53), ('mgp-str', 148), ('mgp-str-large', 386)]
)
def test_published_sizes(name, millions):
    cfg = model_config(name)
    assert cfg['charset_train'] == CHARSET and (cfg['bpe']['size'], cfg['wordpiece']['size']) == (50257, 30522)
    num_classes = {'char': len(CharSlotTokenizer(CHARSET)), 'bpe': 50257, 'wordpiece': 30522}
    with torch.device('meta'):
        model = MGPSTR(num_classes, cfg['max_label_length'], cfg['img_size'], **cfg['arch'])
    assert count_parameters(model) == pytest.approx(millions * 1e6, rel=0.01)
    # 32x128 input, 4x4 patches: 256 patch tokens and the class token; 27 slots per A3 module.
    assert model.pos_embed.shape[1] == 257 and model.num_slots == 27


def test_published_recipe_and_framework_default():
    cfg = compose_config(['+experiment=mgp-str'])
    assert cfg.trainer.gradient_clip_val == 5
    assert (cfg.model.optimizer.name, cfg.model.lr, cfg.model.scale_lr) == ('adadelta', 1.0, False)
    assert cfg.model.scheduler.name == 'cosine_warm_restarts'
    assert cfg.model.preprocess.normalization == 'zero_one'
    # 3 of 8 groups, one op each, half of the images intact.
    augment = build_augmentation(dict(cfg.data.augment))
    (stage,) = augment.stages
    assert (stage.num_ops, stage.probability, len(stage.ops)) == (3, 0.5, 8)
    assert all(group.num_ops == 1 for group in stage.ops)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 128, 3), dtype=np.uint8))
    intact = sum(augment(image, random.Random(seed)) is image for seed in range(200))
    assert 70 < intact < 130
    for name, optimizer, scheduler in (
        ('mgp-str', torch.optim.Adadelta, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts),
        ('model=mgp-str', torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR),  # the framework's default
    ):
        overrides = [name if '=' in name else f'+experiment={name}'] + [
            'model.arch.embed_dim=16',
            'model.arch.depth=1',
            'model.arch.num_heads=2',
            'model.bpe.size=64',
            'model.wordpiece.size=64',
        ]
        system = build_system(OmegaConf.to_container(compose_config(overrides).model, resolve=True))
        system._trainer = SimpleNamespace(
            estimated_stepping_batches=100, num_devices=1, num_nodes=1, accumulate_grad_batches=1
        )
        config = system.configure_optimizers()
        assert type(config['optimizer']) is optimizer and type(config['lr_scheduler']['scheduler']) is scheduler


# -- checkpoint layouts -------------------------------------------------------------------------------------------


def test_hugging_face_parity(vocabs):
    hf = tiny_hf_model(vocabs)
    torch.manual_seed(1)
    images = torch.rand(16, 3, 32, 128)
    system = tiny_system(vocabs)
    # The random model as initialised, then steered to read varied words (see steer_heads).
    for steered in (False, True):
        if steered:
            steer_heads(hf, vocabs, images)
        state = hf.state_dict()
        assert registry.detect_layout(state) == HF_LAYOUT
        system.load_state_dict(registry.importer(HF_LAYOUT)(state), strict=True)
        with torch.no_grad():
            ref = hf(images, output_a3_attentions=True)
            ours = system.model.forward_heads(images)
            char_logits = system(images)
        for i, head in enumerate(HEADS):
            assert ours.logits[head].shape == ref.logits[i].shape and ref.logits[i].shape[1] == 27
            torch.testing.assert_close(ours.logits[head], ref.logits[i], atol=1e-4, rtol=0)
            torch.testing.assert_close(ours.attentions[head], ref.a3_attentions[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(char_logits, ref.logits[0], atol=1e-4, rtol=0)  # forward() is the character head

    expected = hf_processor(vocabs).batch_decode(ref.logits)
    heads = system.predict_heads(images)
    assert system.predict(images)[0] == heads['fused'][0]
    end_ids = {'char': 1, 'bpe': 2, 'wordpiece': vocabs.wp_vocab['[SEP]']}
    ended = {h: (ours.logits[h].argmax(-1)[:, 1:] == end_ids[h]).any(1).tolist() for h in HEADS}
    scores = {h: [float(p.prod()) for p in heads[h][1]] for h in HEADS}

    def published(head: str, i: int, text: str) -> str:
        # The processor drops the last character of a read that has no end token (whose confidence is 0 in both).
        return text if ended[head][i] else text[:-1]

    for head, key in (('char', 'char_preds'), ('bpe', 'bpe_preds'), ('wordpiece', 'wp_preds')):
        assert expected[key] == [published(head, i, t) for i, t in enumerate(heads[head][0])], head
        assert all(s == 0.0 for s, e in zip(scores[head], ended[head]) if not e)
    winners = [max(HEADS, key=lambda h: (scores[h][i], -HEADS.index(h))) for i in range(len(images))]
    assert expected['generated_text'] == [published(w, i, heads[w][0][i]) for i, w in enumerate(winners)]
    assert heads['fused'][0] == [heads[w][0][i] for i, w in enumerate(winners)]
    fused_scores = [float(p.prod()) for p in heads['fused'][1]]
    assert [float(s) for s in expected['scores']] == pytest.approx(fused_scores, rel=1e-4, abs=1e-7)
    # Not vacuous: reads with and without an end token, words of several lengths, more than one winning head.
    assert 0 < sum(sum(e) for e in ended.values()) < 3 * len(images)
    assert len({len(t) for t in heads['fused'][0]}) >= 3 and len(set(winners)) >= 2, (heads['fused'][0], winners)


def to_original_layout(hf_state: dict) -> dict:
    """The authors' release layout of a Hugging Face state dict: a timm ViT with token learners, saved from
    DataParallel, with the (unused) final norm and ImageNet head of the timm model."""
    out = {}
    for key, value in hf_state.items():
        key = key.replace('mgp_str.embeddings.proj.', 'patch_embed.proj.').replace('mgp_str.embeddings.', '')
        key = re.sub(r'^(char|bpe|wp)_a3_module\.', r'\1_tokenLearner.', key.replace('mgp_str.encoder.', ''))
        out[f'module.mgp_str.{key}'] = value
    dim = hf_state['mgp_str.embeddings.cls_token'].shape[-1]
    out.update({
        'module.mgp_str.norm.weight': torch.ones(dim),
        'module.mgp_str.norm.bias': torch.zeros(dim),
        'module.mgp_str.head.weight': torch.zeros(38, dim),
        'module.mgp_str.head.bias': torch.zeros(38),
    })  # fmt: skip
    return out


def test_original_layout_imports_like_hugging_face(vocabs, tmp_path):
    state = tiny_hf_model(vocabs).state_dict()
    original = to_original_layout(state)
    assert 'module.mgp_str.char_tokenLearner.tokenLearner.0.weight' in original
    assert registry.detect_layout(original) == ORIGINAL_LAYOUT
    from_hf, from_original = registry.importer(HF_LAYOUT)(state), registry.importer(ORIGINAL_LAYOUT)(original)
    assert from_hf.keys() == from_original.keys()
    assert all(torch.equal(from_hf[k], from_original[k]) for k in from_hf)
    assert tuple(from_hf['model.a3.wordpiece.select.0.weight'].shape) == (32, 4)  # (out, in / 8 groups)

    # pretrained=<release file> recognises the layout.
    system = tiny_system(vocabs)
    torch.save(original, tmp_path / 'mgp_str_release.pth')
    load_pretrained_weights(system, tmp_path / 'mgp_str_release.pth')
    assert all(torch.equal(system.state_dict()[k], v) for k, v in from_hf.items())

    # Converting the release file with local vocabularies gives a checkpoint that loads without them.
    local = tmp_path / 'vocab'
    shutil.copytree(vocabs.gpt2, local / 'gpt2')
    shutil.copytree(vocabs.bert, local / 'bert')
    converted = convert_checkpoint(
        tmp_path / 'mgp_str_release.pth',
        overrides=TINY_ARCH + vocab_overrides(vocabs),
        gpt2_files=[local / 'gpt2' / 'vocab.json', local / 'gpt2' / 'merges.txt'],
        bert_vocab=local / 'bert' / 'vocab.txt',
    )
    save_checkpoint(converted, tmp_path / 'converted.ckpt')
    shutil.rmtree(local)
    restored = load(tmp_path / 'converted.ckpt')
    images = torch.rand(4, 3, 32, 128)
    for head, (texts, probs) in restored.predict_heads(images).items():
        assert texts == converted.predict_heads(images)[head][0]
        assert all(torch.equal(p, q) for p, q in zip(probs, converted.predict_heads(images)[head][1]))
    assert restored.subword_tokenizer('bpe').token_ids('hello') == [len(gpt2_byte_symbols()) + 3, ord('o') - 33]


def test_foreign_checkpoints_have_clear_errors(vocabs, tmp_path):
    state = tiny_hf_model(vocabs).state_dict()
    path = tmp_path / 'other.pt'
    torch.save({'model.encoder.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"do not belong to the mgpstr_hf MGP-STR layout \(e.g. \['decoder.w'\]\)"):
        registry.importer(HF_LAYOUT)({**state, 'decoder.w': torch.zeros(1)})
    assert registry.detect_layout({'model.encoder.weight': torch.zeros(1)}) is None
    with pytest.raises(ValueError, match='not an MGP-STR checkpoint of a known layout'):
        convert_checkpoint(path, overrides=TINY_ARCH + vocab_overrides(vocabs))
    with pytest.raises(ValueError, match="model configuration 'vitstr' is not an MGP-STR configuration"):
        convert_checkpoint('unused.pth', config='vitstr')


# -- tokenizers ---------------------------------------------------------------------------------------------------


def test_label_layout_is_the_published_one(vocabs):
    from transformers import BertTokenizer, GPT2Tokenizer

    char = CharSlotTokenizer(CHARSET)
    assert char.encode(['a1'], length=6).tolist() == [[0, 12, 3, 1, 0, 0]]  # [GO] a 1 [s] [GO] [GO]
    gpt2 = SubwordTokenizer.from_gpt2_files(vocabs.gpt2 / 'vocab.json', vocabs.gpt2 / 'merges.txt')
    bert = SubwordTokenizer.from_bert_vocab(vocabs.bert / 'vocab.txt')
    ref_gpt2 = GPT2Tokenizer.from_pretrained(str(vocabs.gpt2))
    ref_bert = BertTokenizer.from_pretrained(str(vocabs.bert))
    bpe_targets = gpt2.encode(LABELS, length=27)
    wp_targets = bert.encode(LABELS, length=27)
    wp_expected = ref_bert(LABELS, padding='max_length', max_length=27, truncation=True)['input_ids']
    for i, label in enumerate(LABELS):
        # Original MGP-STR: [1] + GPT-2 ids + [2], padded with 0; BERT [CLS] ... [SEP] [PAD]...
        ids = [1, *ref_gpt2(label)['input_ids'], 2]
        assert bpe_targets[i].tolist() == ids + [0] * (27 - len(ids)), label
        assert wp_targets[i].tolist() == wp_expected[i], label
    assert len(gpt2.token_ids('hello')) == 2 and len(bert.token_ids('shelling')) == 6  # sub-words, not characters


def one_hot_probs(targets: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets, size).float()


def test_tokenizer_round_trips(vocabs):
    labels = ['hello', 'thing', 'a1b2', 'zz9', 'q']
    trained_on = ['hello', 'help', 'world', 'wordy', 'shell'] * 4
    tokenizers = {
        'char': CharSlotTokenizer(CHARSET),
        'gpt2': SubwordTokenizer.from_gpt2_files(vocabs.gpt2 / 'vocab.json', vocabs.gpt2 / 'merges.txt'),
        'bert': SubwordTokenizer.from_bert_vocab(vocabs.bert / 'vocab.txt'),
        'bpe': SubwordTokenizer.train_bpe(trained_on, 64, CHARSET),
        'wordpiece': SubwordTokenizer.train_wordpiece(trained_on, 100, CHARSET),
    }
    for name, tok in tokenizers.items():
        targets = tok.encode(labels)
        texts, probs = tok.decode(one_hot_probs(targets, tok.vocab_size))
        assert texts == labels, name
        assert [p.tolist() for p in probs] == [[1.0] * (len(tok.token_ids(t)) + 1) for t in labels], name
        if isinstance(tok, SubwordTokenizer):
            restored = SubwordTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
            assert [restored.token_ids(t) for t in labels] == [tok.token_ids(t) for t in labels], name
    # Learnt vocabularies merge frequent pieces; unseen words still encode without unknowns.
    assert len(tokenizers['bpe'].token_ids('hello')) == 1 and len(tokenizers['wordpiece'].token_ids('hello')) == 1
    assert tokenizers['wordpiece'].tokenizer.token_to_id('[UNK]') not in tokenizers['wordpiece'].token_ids('qzx')
    assert tokenizers['bpe'].vocab_size <= 64 and tokenizers['wordpiece'].vocab_size <= 100


def test_vocabulary_errors_name_the_fix(vocabs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'GPT-2 vocab.json not found at .*model.bpe.files.*source=train'):
        SubwordTokenizer.from_gpt2_files(tmp_path / 'vocab.json', tmp_path / 'merges.txt')
    spec = SubwordVocabSpec(source='files', size=30522, files=[str(vocabs.bert / 'vocab.txt')])
    with pytest.raises(ValueError, match=rf'has {len(vocabs.wp_vocab)} tokens .* set model.wordpiece.size='):
        build_subword_tokenizer('wordpiece', spec, CHARSET)
    with pytest.raises(ValueError, match='use a size of at least 40'):
        SubwordTokenizer.train_bpe(['abc'], 30, CHARSET)
    with pytest.raises(RuntimeError, match='has not been trained yet'):
        build_subword_tokenizer('bpe', SubwordVocabSpec(source='train', size=64), CHARSET)
    with pytest.raises(ValueError, match=r"unknown model.bpe key\(s\) \['vocab'\]"):
        SubwordVocabSpec.from_mapping({'vocab': 'x.json', 'size': 10}, 'bpe')
    (tmp_path / 'vocab.txt').write_text('a\nb\n')
    with pytest.raises(ValueError, match=r"has no \['\[PAD\]', .*is it a BERT WordPiece vocab.txt"):
        SubwordTokenizer.from_bert_vocab(tmp_path / 'vocab.txt')


# -- fusion -------------------------------------------------------------------------------------------------------


def hand_made_logits(reads: list[list[tuple[int, float]]], size: int, end_id: int) -> torch.Tensor:
    """Logits whose softmax reads, per image, the given (id, probability) after a start slot; other slots read the
    end token with probability 0.9, and the rest of the mass is spread evenly."""
    logits = torch.empty(len(reads), 27, size)
    for i, read in enumerate(reads):
        slots = [(end_id, 0.9)] + read + [(end_id, 0.9)] * (26 - len(read))
        for s, (token, p) in enumerate(slots):
            probs = torch.full((size,), (1 - p) / (size - 1))
            probs[token] = p
            logits[i, s] = probs.log()
    return logits


def test_fusion_on_hand_made_logits(vocabs):
    system = tiny_system(vocabs)
    c = lambda t: CHARSET.index(t) + 2  # noqa: E731 - character id
    b = vocabs.bpe_vocab.__getitem__
    w = vocabs.wp_vocab.__getitem__
    sep = w('[SEP]')
    char = hand_made_logits(
        [
            [(c('h'), 0.9), (c('e'), 0.5), (c('l'), 0.9), (c('l'), 0.9), (c('o'), 0.9), (1, 0.9)],  # weak 'e'
            [(c('t'), 0.8), (c('h'), 0.8), (c('e'), 0.8), (1, 0.8)],
            [(c('g'), 0.6), (c('o'), 0.6), (1, 0.6)],
            [(c('x'), 0.9), (c('x'), 0.9)] * 13,  # no end token: confidence 0
        ],
        38,
        1,
    )
    bpe = hand_made_logits(
        [
            [(b('hell'), 0.9), (b('o'), 0.9), (2, 0.9)],  # BPE wins image 0
            [(b('th'), 0.6), (b('e'), 0.6), (2, 0.6)],
            [(b('g'), 0.55), (b('o'), 0.55), (2, 0.55)],  # the character head wins image 2
            [(b('x'), 0.5), (2, 0.5)],
        ],
        vocabs.bpe_size,
        2,
    )
    wp = hand_made_logits(
        [
            [(w('hello'), 0.5), (sep, 0.5)],
            [(w('the'), 0.99), (sep, 0.99)],  # WordPiece wins image 1
            [(w('go'), 0.4), (sep, 0.4)],
            [(w('x'), 0.2), (w('##x'), 0.2), (sep, 0.2)],
        ],
        len(vocabs.wp_vocab),
        sep,
    )
    decoded = system.decode_heads({'char': char, 'bpe': bpe, 'wordpiece': wp})
    assert decoded['char'][0] == ['hello', 'the', 'go', 'x' * 26]
    assert decoded['bpe'][0] == ['hello', 'the', 'go', 'x']
    assert decoded['wordpiece'][0] == ['hello', 'the', 'go', 'xx']
    assert float(decoded['char'][1][3].prod()) == 0.0
    assert decoded['fused'][0] == ['hello', 'the', 'go', 'x']
    confidences = [float(p.prod()) for p in decoded['fused'][1]]
    assert confidences == pytest.approx([0.9**3, 0.99**2, 0.6**3, 0.5**2], rel=1e-4)
    # Hugging Face's processor fuses the same way (it drops the last character of a read without an end token).
    expected = hf_processor(vocabs).batch_decode((char, bpe, wp))
    assert expected['generated_text'] == decoded['fused'][0]
    assert [float(score) for score in expected['scores']] == pytest.approx(confidences, rel=1e-4)
    assert expected['char_preds'][:3] == decoded['char'][0][:3] and expected['char_preds'][3] == 'x' * 25
    # Ties go to the first head, as published.
    assert fuse_predictions([(['a'], [torch.tensor([0.5])]), (['b'], [torch.tensor([0.5])])])[0] == ['a']


# -- training and the scripts -------------------------------------------------------------------------------------

# Small enough to train a few dozen steps on a CPU in seconds; the sub-word vocabularies are learnt from the labels.
TINY_MGPSTR = [
    '+experiment=mgp-str',
    'model.max_label_length=8',
    'model.batch_size=16',
    'model.img_size=[16,64]',
    'model.arch.patch_size=[16,4]',
    'model.arch.embed_dim=32',
    'model.arch.depth=1',
    'model.arch.num_heads=2',
    'model.arch.mlp_ratio=2',
    'model.bpe.source=train',
    'model.bpe.size=64',
    'model.wordpiece.source=train',
    'model.wordpiece.size=96',
    # The framework's default optimiser (the published Adadelta needs far more steps).
    'model.optimizer.name=adamw',
    '~model.optimizer.rho',
    '~model.optimizer.eps',
    'model.lr=1e-2',
    'model.scheduler.name=constant',
]


@pytest.fixture(scope='module')
def trained(word_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('mgpstr_run')
    losses = training_losses(TINY_MGPSTR, word_data, run_dir, steps=40)
    return SimpleNamespace(losses=losses, checkpoint=run_dir / 'checkpoints' / 'last.ckpt')


def test_training_lowers_the_loss(trained):
    losses = trained.losses
    assert len(losses) == 40
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    assert last < 0.6 * first, losses


def run_script(name: str, argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location(f'strhub_script_{name}', REPO_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_checkpoint_carries_learnt_vocabularies_and_test_reports_every_head(trained, word_data, tmp_path, capsys):
    data = torch.load(trained.checkpoint, map_location='cpu', weights_only=True)
    for head in ('bpe', 'wordpiece'):
        assert data['hyper_parameters'][head]['serialized']['kind'] == head
    system = load(trained.checkpoint)
    assert system.subword_tokenizer('bpe').vocab_size <= 64

    results = tmp_path / 'results.json'
    argv = [str(trained.checkpoint), '--data_root', str(word_data), '--num_workers', '0', '--device', 'cpu']
    assert run_script('test', argv + ['--results', str(results)]) == 0
    out = capsys.readouterr().out
    assert '| char accuracy | bpe accuracy | wordpiece accuracy | fused accuracy |' in out
    saved = json.loads(results.read_text())
    assert set(saved['heads']) == {'char', 'bpe', 'wordpiece', 'fused'}
    assert saved['heads']['fused']['IIIT5k'] == saved['results']['IIIT5k']


def test_read_saves_attention_maps(trained, word_data, tmp_path, capsys):
    images = []
    for i, colour in enumerate(('white', 'yellow')):
        path = tmp_path / f'word{i}.png'
        Image.new('RGB', (100, 32), colour).save(path)
        images.append(str(path))
    out_dir = tmp_path / 'attention'
    argv = [str(trained.checkpoint), '--images', *images, '--attention', str(out_dir), '--device', 'cpu']
    assert run_script('read', argv) == 0
    assert '6 attention map(s) saved' in capsys.readouterr().out
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted(f'word{i}_{head}.png' for i in range(2) for head in HEADS)
    with Image.open(out_dir / 'word0_char.png') as png:
        assert png.format == 'PNG' and png.width > 200

    vitstr = build_system(model_config('vitstr', ['model.arch.depth=1']))
    from strhub.reading import save_attention_maps

    with pytest.raises(ValueError, match='ViTSTRSystem has no attention maps to save'):
        save_attention_maps(vitstr, images, out_dir)
