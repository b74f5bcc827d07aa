"""Models by their Hugging Face Hub names, offline: tiny random transformers models saved with ``save_pretrained``
(weights, config, tokenizer and processor files) load from their directory and, by Hub id, from a pre-populated
huggingface_hub cache with HF_HUB_OFFLINE=1, and read what the transformers model reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from strhub.models import registry
from strhub.models.huggingface import HubError, hub_model, is_hub_spec
from strhub.models.loading import load, save_checkpoint
from tests.conftest import REPO_ROOT, short_training_overrides

transformers = pytest.importorskip('transformers')

COMMIT = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache, used offline (as in CI: no network)."""
    from huggingface_hub import constants

    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return cache


def put_in_cache(cache: Path, repo: str, files: Path | dict[str, Path], revision: str = 'main') -> None:
    """Places files in the huggingface_hub cache layout, as a download of ``repo`` at ``revision`` leaves them."""
    root = cache / f'models--{repo.replace("/", "--")}'
    snapshot = root / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    items = {p.name: p for p in files.iterdir()} if isinstance(files, Path) else files
    for name, path in items.items():
        shutil.copy(path, snapshot / name)
    (root / 'refs').mkdir(exist_ok=True)
    (root / 'refs' / revision).write_text(COMMIT)


def assert_same_pixels(ours: torch.Tensor, theirs: torch.Tensor, scale: float = 1.0) -> None:
    """Preprocessing as the repository's image processor does it: resampling implementations differ by at most one
    grey level at a few pixels (``scale``: the normalisation's 1 / std)."""
    assert ours.shape == theirs.shape
    difference = (ours - theirs).abs()
    assert difference.max() <= scale / 255 + 1e-5 and difference.mean() < scale * 1e-3, difference.max()


def random_image(seed: int, size: tuple[int, int] = (90, 30)) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def run_script(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, 'HF_HUB_CACHE': str(cache), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


# -- MGP-STR ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def mgpstr_repo(tmp_path_factory):
    """A tiny MgpstrForSceneTextRecognition saved as on the Hub, with the GPT-2 / BERT vocabularies its processor
    fetches from their own repositories."""
    from transformers import ViTImageProcessor

    from tests.test_mgpstr import make_vocabs, steer_heads, tiny_hf_model

    v = make_vocabs(tmp_path_factory.mktemp('vocab'))
    hf = tiny_hf_model(v)
    steer_heads(hf, v, torch.rand(16, 3, 32, 128, generator=torch.Generator().manual_seed(1)))
    directory = tmp_path_factory.mktemp('repos') / 'mgp-str-tiny'
    hf.save_pretrained(directory)
    shutil.copy(v.char / 'vocab.json', directory / 'vocab.json')
    ViTImageProcessor(size={'height': 32, 'width': 128}, do_normalize=False, resample=3).save_pretrained(directory)
    return directory, hf, v


def test_mgpstr_repository_reads_like_transformers(mgpstr_repo, hub_cache):
    from tests.test_mgpstr import hf_processor

    directory, hf, v = mgpstr_repo
    put_in_cache(hub_cache, 'openai-community/gpt2', v.gpt2)
    put_in_cache(hub_cache, 'google-bert/bert-base-uncased', v.bert)
    put_in_cache(hub_cache, 'acme/mgp-str-tiny', directory)
    processor = transformers.ViTImageProcessor.from_pretrained(directory)
    images = [random_image(i) for i in range(8)]
    pixels = processor(images, return_tensors='pt').pixel_values
    with torch.no_grad():
        ref = hf(pixels).logits
    expected = hf_processor(v).batch_decode(ref)['generated_text']
    for spec in (str(directory), 'acme/mgp-str-tiny'):
        system = load(spec)
        assert system.hparams.name == 'mgp-str-tiny'
        # Preprocessing from preprocessor_config.json: the same input tensor as the image processor's.
        ours = torch.stack([system.preprocessing(img) for img in images])
        assert_same_pixels(ours, pixels)
        with torch.no_grad():
            heads = system.model.forward_heads(pixels).logits
        for i, head in enumerate(('char', 'bpe', 'wordpiece')):
            torch.testing.assert_close(heads[head], ref[i], atol=1e-4, rtol=0)
        texts = system.predict(pixels)[0]
        # The processor drops the last character of a read without an end token; compare the reads that end.
        ended = [i for i, t in enumerate(expected) if t == texts[i] or t == texts[i][:-1]]
        assert len(ended) == len(texts), (texts, expected)


def test_mgpstr_by_name_through_the_scripts(mgpstr_repo, hub_cache, tmp_path, word_data):
    directory, _, v = mgpstr_repo
    put_in_cache(hub_cache, 'openai-community/gpt2', v.gpt2)
    put_in_cache(hub_cache, 'google-bert/bert-base-uncased', v.bert)
    put_in_cache(hub_cache, 'acme/mgp-str-tiny', directory)
    image = tmp_path / 'word.png'
    random_image(3).save(image)
    name = 'pretrained=acme/mgp-str-tiny'
    read = run_script(['read.py', name, '--images', str(image), '--device', 'cpu'], hub_cache)
    assert read.returncode == 0 and 'word.png' in read.stdout, read.stderr
    test = run_script(['test.py', name, '--data_root', str(word_data), '--device', 'cpu'], hub_cache)
    assert test.returncode == 0 and 'IIIT5k' in test.stdout, test.stderr
    bench = run_script(
        ['bench.py', name, 'device=cpu', 'batch_sizes=[1]', 'min_run_time=0.05', 'compute=false'], hub_cache
    )
    assert bench.returncode == 0 and '## mgp-str-tiny on cpu' in bench.stdout, bench.stderr
    export = run_script(['tools/export.py', name, '--out', str(tmp_path / 'm.onnx')], hub_cache)
    assert export.returncode != 0 and 'fuses three heads' in export.stderr, export.stderr
    # Fine-tuning by name: the architecture, vocabularies and preprocessing come from the repository.
    train = run_script(
        [
            'train.py',
            name,
            *short_training_overrides(word_data, 2),
            'model.batch_size=4',
            f'hydra.run.dir={tmp_path / "run"}',
        ],
        hub_cache,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    tuned = load(tmp_path / 'run')
    assert tuned.hparams.name == 'mgp-str-tiny' and tuned.hparams.arch['embed_dim'] == 32
    assert tuned.hparams.batch_size == 4  # the command line's model.* overrides still apply


# -- TrOCR --------------------------------------------------------------------------------------------------------


def tiny_trocr(vocab_size: int, deit: bool, probe: torch.Tensor, seed: int = 0):
    """A tiny random VisionEncoderDecoderModel (ViT or DeiT encoder), redrawn wider than its initialisation so that
    outputs depend on the image, with an EOS bonus so that some reads of the ``probe`` images end early."""
    torch.manual_seed(seed)
    enc = dict(
        image_size=[16, 32],
        patch_size=[8, 8],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        qkv_bias=deit,
    )
    encoder = (
        transformers.DeiTModel(transformers.DeiTConfig(**enc))
        if deit
        else transformers.ViTModel(transformers.ViTConfig(**enc))
    )
    decoder = transformers.TrOCRForCausalLM(
        transformers.TrOCRConfig(
            vocab_size=vocab_size,
            d_model=24,
            decoder_layers=2,
            decoder_attention_heads=2,
            decoder_ffn_dim=48,
            cross_attention_hidden_size=32,
            max_position_embeddings=64,  # the default max_length (25 characters, up to 2 pieces each) fits
            **(dict(activation_function='relu', scale_embedding=True, tie_word_embeddings=False) if deit else {}),
        )
    )
    model = transformers.VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    model.config.decoder_start_token_id, model.config.pad_token_id = 2, 1
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or name.endswith(('token', 'position_embeddings')):
                p.normal_(0, 0.3)
        # Scale the EOS row until some reads of the test images end early and others run to the length limit.
        eos = model.decoder.output_projection.weight[2].clone()
        for scale in (1, 2, 3, 4, 6, 8, 12, 16, 0.5, 0.25):
            model.decoder.output_projection.weight[2] = eos * scale
            ended = (model.generate(pixel_values=probe, max_new_tokens=12, do_sample=False)[:, 1:] == 2).any(1)
            if ended.any() and not ended.all():
                break
    return model.eval()


@pytest.fixture(scope='module')
def sentencepiece_file(tmp_path_factory) -> Path:
    """A tiny sentencepiece unigram model, as trocr-small's sentencepiece.bpe.model (made by sentencepiece itself)."""
    spm = pytest.importorskip('sentencepiece')
    directory = tmp_path_factory.mktemp('spm')
    words = ['hello', 'world', 'shelling', 'thing', 'other', 'brother', 'low', 'lower', 'newest', 'wide', 'Hello']
    text = directory / 'text.txt'
    text.write_text('\n'.join(' '.join(words[i:] + words[:i]) for i in range(len(words))) + '\n')
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(directory / 'sp'), vocab_size=28, model_type='unigram', minloglevel=2
    )
    path = directory / 'sentencepiece.bpe.model'
    (directory / 'sp.model').rename(path)
    return path


@pytest.fixture(scope='module')
def trocr_repos(tmp_path_factory, sentencepiece_file):
    """Two tiny TrOCR repositories: ViT + RoBERTa BPE (vocab.json + merges.txt, as trocr-base) and DeiT + a
    sentencepiece model (as trocr-small), each with the processor files save_pretrained writes."""
    from tests.test_trocr import make_bpe_files

    bpe_dir, vocab, merges = make_bpe_files(tmp_path_factory.mktemp('bpe'))
    root = tmp_path_factory.mktemp('trocr')
    repos = {}
    bpe_tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=list(merges))
    sp_tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(sentencepiece_file.parent)
    for name, deit, tokenizer, files in (
        ('trocr-vit-bpe', False, bpe_tokenizer, [bpe_dir / 'vocab.json', bpe_dir / 'merges.txt']),
        ('trocr-deit-spm', True, sp_tokenizer, [sentencepiece_file]),
    ):
        directory = root / name
        model = tiny_trocr(len(tokenizer), deit, trocr_pixels())
        model.save_pretrained(directory)
        for f in files:
            shutil.copy(f, directory / f.name)
        transformers.ViTImageProcessor(size={'height': 16, 'width': 32}, resample=2).save_pretrained(directory)
        repos[name] = (directory, model, tokenizer)
    return repos


LABELS = ['hello', 'Hello world', 'lower', 'x']


def trocr_images() -> list[Image.Image]:
    return [random_image(i, (64, 24)) for i in range(6)]


def trocr_pixels() -> torch.Tensor:
    processor = transformers.ViTImageProcessor(size={'height': 16, 'width': 32}, resample=2)
    return processor(trocr_images(), return_tensors='pt').pixel_values


def test_sentencepiece_model_encodes_like_transformers(trocr_repos):
    from strhub.models.trocr.tokenizer import SubwordTokenizer, sentencepiece_backend

    directory, _, reference = trocr_repos['trocr-deit-spm']
    ours = SubwordTokenizer(sentencepiece_backend(directory / 'sentencepiece.bpe.model'))
    assert len(ours) == len(reference)
    encoded = ours.encode(LABELS)
    for row, label in zip(encoded, LABELS):
        expected = reference(label)['input_ids']  # <s> pieces </s>
        assert row[1 : len(expected) + 1].tolist() == expected, label
    # 'x' is not in the tiny vocabulary: both make it <unk> (id 3), which decodes to nothing.
    assert encoded[3, 1:3].tolist() == [5, 3] or 3 in encoded[3].tolist()
    assert ours.decode_tokens(encoded[:, 1:], torch.ones(encoded[:, 1:].shape))[0] == [*LABELS[:3], '']
    with pytest.raises(ValueError, match='not a sentencepiece model'):
        bad = directory.parent / 'bad.model'
        bad.write_bytes(b'\xff\xff\xff')
        sentencepiece_backend(bad)


@pytest.mark.parametrize('name', ['trocr-vit-bpe', 'trocr-deit-spm'])
def test_trocr_repository_reads_like_transformers(trocr_repos, hub_cache, name):
    directory, hf, tokenizer = trocr_repos[name]
    put_in_cache(hub_cache, f'acme/{name}', directory, revision='v1')
    processor = transformers.ViTImageProcessor.from_pretrained(directory)
    images = trocr_images()
    pixels = processor(images, return_tensors='pt').pixel_values
    with torch.no_grad():
        generated = hf.generate(pixel_values=pixels, max_new_tokens=12, do_sample=False, num_beams=1)
        labels = generated[:, 1:]
        ref_logits = hf(pixel_values=pixels, decoder_input_ids=generated[:, :-1]).logits
    expected = tokenizer.batch_decode(generated, skip_special_tokens=True)
    for spec in (str(directory), f'acme/{name}@v1'):
        system = load(spec, max_length=11)
        assert_same_pixels(torch.stack([system.preprocessing(i) for i in images]), pixels, scale=2.0)
        with torch.no_grad():
            ours = system.model.generate(pixels)
            logits = system.model.decode(generated[:, :-1], system.model.encode(pixels))
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
        assert torch.equal(ours.tokens, labels)
        assert system.predict(pixels)[0] == expected
    ended = (labels == 2).any(1)
    assert ended.any() and not ended.all()  # some reads end early, others run to the length limit


def test_trocr_checkpoint_made_from_a_repository_loads_offline(trocr_repos, hub_cache, tmp_path):
    from strhub.models.trocr.convert import main as convert_main

    directory, _, _ = trocr_repos['trocr-deit-spm']
    put_in_cache(hub_cache, 'acme/trocr-deit-spm', directory)
    out = tmp_path / 'trocr.ckpt'
    assert convert_main(['acme/trocr-deit-spm', str(out)]) == 0
    restored, original = load(out), load('acme/trocr-deit-spm')
    x = torch.randn(3, 3, 16, 32)
    assert restored.predict(x)[0] == original.predict(x)[0]
    assert restored.hparams.tokenizer['json']  # the vocabulary travels in the checkpoint


# -- GOT-OCR2 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def got_repo(tmp_path_factory):
    """A tiny GotOcr2ForConditionalGeneration with a character-level tokenizer.json holding GOT's special tokens."""
    from transformers import GotOcr2ImageProcessor

    from strhub.models.gotocr2.tokenizer import character_tokenizer
    from tests.test_gotocr2 import tiny_hf_model

    tokenizer = character_tokenizer('abcdefghijklmnopqrstuvwxyz0123456789')
    model = tiny_hf_model(tokenizer.get_vocab_size(), tokenizer.token_to_id('<imgpad>'))
    directory = tmp_path_factory.mktemp('got') / 'got-ocr2-tiny'
    model.save_pretrained(directory)
    tokenizer.save(str(directory / 'tokenizer.json'))
    GotOcr2ImageProcessor(size={'height': 64, 'width': 64}).save_pretrained(directory)
    return directory, model


def test_got_ocr2_repository_generates_like_transformers(got_repo, hub_cache):
    directory, hf = got_repo
    put_in_cache(hub_cache, 'acme/got-ocr2-tiny', directory)
    processor = transformers.GotOcr2ImageProcessor.from_pretrained(directory)
    images = [random_image(i, (64, 64)) for i in range(2)]
    pixels = processor(images, return_tensors='pt').pixel_values
    for spec in (str(directory), 'acme/got-ocr2-tiny'):
        system = load(spec)
        assert_same_pixels(torch.stack([system.preprocessing(i) for i in images]), pixels, scale=1 / 0.2613)
        prompt = system.model.prompt_ids[None].expand(2, -1)
        with torch.no_grad():
            expected = hf.generate(
                input_ids=prompt, pixel_values=pixels, max_new_tokens=6, do_sample=False, eos_token_id=None
            )[:, prompt.shape[1] :]
            ours = system.model.generate(pixels, stop_ids=[]).ids
            torch.testing.assert_close(
                system.model.teacher_forced_logits(pixels, prompt, prompt_length=prompt.shape[1]),
                hf(input_ids=prompt, pixel_values=pixels).logits[:, prompt.shape[1] - 1 :],
                atol=1e-4,
                rtol=0,
            )
        assert torch.equal(ours[:, : expected.shape[1]], expected)


# -- names, errors, the registry ----------------------------------------------------------------------------------


def test_names_and_errors(hub_cache, tmp_path, got_repo):
    assert is_hub_spec('alibaba-damo/mgp-str-base') and is_hub_spec('microsoft/trocr-base-str@main')
    assert not is_hub_spec('parseq') and not is_hub_spec('outputs/last.ckpt') and not is_hub_spec('file:///x/y')
    with pytest.raises(HubError, match=r'acme/missing is not in the Hugging Face cache .* HF_HUB_OFFLINE is set'):
        load('acme/missing')
    directory, _ = got_repo
    put_in_cache(hub_cache, 'acme/got-ocr2-tiny', directory)
    with pytest.raises(HubError, match='acme/got-ocr2-tiny@v9 is not in the Hugging Face cache'):
        load('acme/got-ocr2-tiny@v9')
    # A repository of another architecture names the supported ones.
    other = tmp_path / 'bert'
    other.mkdir()
    (other / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(HubError, match=r"model_type 'bert' is not supported; .*got_ocr2, mgp-str, vision-encoder"):
        hub_model(other)
    # A file the repository lacks.
    broken = tmp_path / 'got-no-tokenizer'
    shutil.copytree(directory, broken)
    (broken / 'tokenizer.json').unlink()
    with pytest.raises(HubError, match='has no tokenizer.json'):
        load(broken)
    no_weights = tmp_path / 'got-no-weights'
    shutil.copytree(directory, no_weights)
    (no_weights / 'model.safetensors').unlink()
    with pytest.raises(HubError, match='no model.safetensors or pytorch_model.bin'):
        load(no_weights)
    # Every script prints the one line.
    for script in (
        ['read.py', 'pretrained=acme/missing', '--images', str(tmp_path)],
        ['tools/export.py', 'pretrained=acme/missing', '--out', str(tmp_path / 'm.onnx')],
        ['bench.py', 'pretrained=acme/missing'],
        ['train.py', 'pretrained=acme/missing', f'hydra.run.dir={tmp_path / "run"}'],
    ):
        done = run_script(script, hub_cache)
        assert done.returncode == 2, (script, done.stderr[-2000:])
        assert done.stderr.count('error: acme/missing is not in the Hugging Face cache') == 1, script
        assert 'Traceback' not in done.stderr, script


def test_one_registry_for_foreign_weights():
    """Every package declares its layouts (with detectors), release names and Hub architectures; nothing central."""
    layouts = registry.layouts()
    assert {'mgpstr_hf', 'mgpstr_original', 'trocr_hf', 'trocr_unilm', 'got_ocr2_hf', 'parseq_release'} <= set(layouts)
    assert {layouts[n].package for n in ('mgpstr_hf', 'trocr_hf', 'got_ocr2_hf')} == {
        'strhub.models.mgpstr',
        'strhub.models.trocr',
        'strhub.models.gotocr2',
    }
    assert set(registry.hub_architectures()) == {'mgp-str', 'vision-encoder-decoder/trocr', 'got_ocr2'}
    names = registry.published_hub_names()
    assert {'alibaba-damo/mgp-str-base', 'microsoft/trocr-large-str', 'stepfun-ai/GOT-OCR-2.0-hf'} <= set(names)
    assert {'parseq', 'parseq-tiny', 'abinet', 'trba', 'vitstr', 'crnn'} <= set(registry.releases())


def test_saved_checkpoint_of_a_repository(got_repo, tmp_path):
    directory, _ = got_repo
    system = load(directory)
    save_checkpoint(system, tmp_path / 'got.ckpt')
    restored = load(tmp_path / 'got.ckpt')
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(restored.model.generate(x).ids, system.model.generate(x).ids)


def test_fine_tuning_keeps_the_runs_training_settings(mgpstr_repo, hub_cache):
    from strhub.config import model_config
    from strhub.models.loading import pretrained_model_config

    directory, _, v = mgpstr_repo
    put_in_cache(hub_cache, 'openai-community/gpt2', v.gpt2)
    put_in_cache(hub_cache, 'google-bert/bert-base-uncased', v.bert)
    # An experiment of the same family: the repository fixes the architecture, the experiment keeps its settings.
    own = model_config('mgp-str-small', ['model.lr=0.25', 'model.arch.embed_dim=384'])
    merged = pretrained_model_config(directory, own)
    assert merged['lr'] == 0.25 and merged['optimizer'] == own['optimizer']
    assert (
        merged['arch']['embed_dim'] == 32 and merged['bpe']['size'] == v.bpe_size and merged['name'] == 'mgp-str-tiny'
    )
    # Another family (the default model config): the repository's family defaults come too.
    other = pretrained_model_config(directory, model_config('parseq-tiny'))
    assert other['_target_'] == own['_target_'] and other['arch']['embed_dim'] == 32
    assert pretrained_model_config('parseq') is None  # release names load into the run's own model config
