"""GOT-OCR2: parity with Hugging Face's implementation at a tiny random config (vision features, teacher-forced
logits, greedy ids), checkpoint layouts, prompt template, crop tiling, and a short fine-tuning run through the
framework's train / test / read / bench paths."""

from __future__ import annotations

import copy
import re
import statistics

import pytest
import torch
from PIL import Image

from strhub.config import model_config
from strhub.models import registry
from strhub.models.gotocr2 import GotOcr2
from strhub.models.gotocr2.prompts import (
    build_prompt,
    choose_grid,
    crop_tiles,
    normalize_box,
    plan_tiling,
)
from strhub.models.gotocr2.published import import_state
from strhub.models.gotocr2.tokenizer import GotOcr2Tokenizer, character_tokenizer
from strhub.models.loading import build_system, count_parameters
from tests.conftest import training_losses

transformers = pytest.importorskip('transformers')

VOCAB, IMAGE_TOKEN = 120, 119
TINY_OURS = dict(
    img_size=(64, 64),
    patch_size=4,
    vision_width=32,
    vision_depth=2,
    vision_heads=2,
    vision_mlp_dim=64,
    vision_out_channels=16,
    window=4,
    global_layers=(1,),
    text_width=64,
    text_depth=2,
    text_heads=4,
    text_kv_heads=2,
    text_mlp_dim=128,
    rope_theta=10000.0,
)


def tiny_hf_model(vocab: int = VOCAB, image_token: int = IMAGE_TOKEN):
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    config = GotOcr2Config(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            output_channels=16,
            image_size=64,
            patch_size=4,
            window_size=4,
            global_attn_indexes=[1],
        ),
        text_config=dict(
            model_type='qwen2',
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=10000.0,
            tie_word_embeddings=True,
        ),
        image_token_index=image_token,
        image_seq_length=16,
    )
    torch.manual_seed(0)
    model = GotOcr2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Non-trivial values everywhere (the default init zeroes the position tables).
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05)
            if 'norm' in name and name.endswith('weight'):
                p.add_(1.0)
    return model


@pytest.fixture(scope='module')
def pair():
    hf = tiny_hf_model()
    ours = GotOcr2(VOCAB, 8, image_token_id=IMAGE_TOKEN, stop_ids=(), **TINY_OURS).eval()
    state = import_state(hf.state_dict())
    ours.load_state_dict({k.removeprefix('model.'): v for k, v in state.items()}, strict=True)
    return hf, ours


def prompt_ids(batch: int = 2, text: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    head = torch.randint(0, 100, (batch, text), generator=gen)
    tail = torch.randint(0, 100, (batch, 3), generator=gen)
    return torch.cat([head, torch.full((batch, 16), IMAGE_TOKEN), tail], dim=1)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(2))


# -- parity ----------------------------------------------------------------------------------------------------


def test_vision_features_match_transformers(pair):
    hf, ours = pair
    x = images()
    with torch.no_grad():
        ref = hf.model.get_image_features(pixel_values=x)
        torch.testing.assert_close(ours.vision_tower(x), ref.last_hidden_state, atol=1e-5, rtol=0)
        features = ours.image_features(x)
        assert features.shape == (2, 16, 64)
        torch.testing.assert_close(features, ref.pooler_output, atol=1e-5, rtol=0)


def test_teacher_forced_logits_match_transformers(pair):
    hf, ours = pair
    ids = torch.cat([prompt_ids(), torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(3))], 1)
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=images()).logits
        logits = ours.teacher_forced_logits(images(), ids)
        assert logits.shape == expected.shape == (2, ids.shape[1], VOCAB)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
        # Projecting only the answer positions gives the same numbers.
        tail = ours.teacher_forced_logits(images(), ids, prompt_length=24)
        torch.testing.assert_close(tail, expected[:, 23:], atol=1e-4, rtol=0)


def test_greedy_ids_match_generate(pair):
    hf, ours = pair
    prompt = prompt_ids()
    with torch.no_grad():
        ref = hf.generate(
            input_ids=prompt, pixel_values=images(), max_new_tokens=10, do_sample=False, eos_token_id=None
        )[:, prompt.shape[1] :]
    out = ours.generate(images(), prompt, max_new_tokens=10, return_logits=True)
    assert torch.equal(out.ids, ref)
    assert torch.equal(out.logits.argmax(-1), out.ids)
    torch.testing.assert_close(out.probs, out.logits.softmax(-1).amax(-1))
    # Stop ids: each row ends at its first stop id; generation ends when every row has stopped.
    stop = int(ref[0, 3])
    first_stop = [int((row == stop).nonzero()[0]) if (row == stop).any() else 10 for row in ref]
    stopped = ours.generate(images(), prompt, max_new_tokens=10, stop_ids=[stop])
    assert stopped.ids.shape[1] == min(10, max(first_stop) + 1)
    assert torch.equal(stopped.ids, ref[:, : stopped.ids.shape[1]])
    with torch.no_grad():
        ref_stopped = hf.generate(
            input_ids=prompt, pixel_values=images(), max_new_tokens=10, do_sample=False, eos_token_id=stop
        )[:, prompt.shape[1] :]
    assert torch.equal(stopped.ids[0, : first_stop[0] + 1], ref_stopped[0, : first_stop[0] + 1])


def test_checkpoint_layouts_import_to_the_same_weights(pair):
    hf, _ = pair
    current = hf.state_dict()
    assert 'lm_head.weight' in current and any(k.startswith('model.language_model.') for k in current)
    legacy = {}
    for key, value in current.items():
        key = re.sub(r'^model\.language_model\.', 'language_model.model.', key)
        key = re.sub(r'^model\.(vision_tower|multi_modal_projector)\.', r'\1.', key)
        legacy[key.replace('lm_head.', 'language_model.lm_head.')] = value
    # The original release's names (as in transformers' conversion script, run backwards).
    original = {}
    backwards = [
        (r'^model\.vision_tower\.patch_embed\.projection\.', 'model.vision_tower_high.patch_embed.proj.'),
        (r'^model\.vision_tower\.pos_embed', 'model.vision_tower_high.pos_embed'),
        (r'^model\.vision_tower\.layers\.(\d+)\.layer_norm(\d)\.', r'model.vision_tower_high.blocks.\1.norm\2.'),
        (r'^model\.vision_tower\.layers\.(\d+)\.', r'model.vision_tower_high.blocks.\1.'),
        (r'^model\.vision_tower\.neck\.conv1\.', 'model.vision_tower_high.neck.0.'),
        (r'^model\.vision_tower\.neck\.layer_norm1\.', 'model.vision_tower_high.neck.1.'),
        (r'^model\.vision_tower\.neck\.conv2\.', 'model.vision_tower_high.neck.2.'),
        (r'^model\.vision_tower\.neck\.layer_norm2\.', 'model.vision_tower_high.neck.3.'),
        (r'^model\.multi_modal_projector\.conv_upsampler1\.', 'model.vision_tower_high.net_2.'),
        (r'^model\.multi_modal_projector\.conv_upsampler2\.', 'model.vision_tower_high.net_3.'),
        (r'^model\.multi_modal_projector\.multimodal_projector\.', 'model.mm_projector_vary.'),
        (r'^model\.language_model\.', 'model.'),
    ]
    for key, value in current.items():
        for pattern, replacement in backwards:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        original[key] = value
    assert (
        'model.vision_tower_high.blocks.0.norm1.weight' in original and 'model.layers.0.mlp.up_proj.weight' in original
    )
    expected = import_state(current)
    assert [registry.detect_layout(s) for s in (current, legacy, original)] == [
        'got_ocr2_hf',
        'got_ocr2_hf_legacy',
        'got_ocr2_original',
    ]
    for layout, state in (('got_ocr2_hf_legacy', legacy), ('got_ocr2_original', original)):
        imported = registry.importer(layout)(state)
        assert imported.keys() == expected.keys()
        assert all(torch.equal(imported[k], expected[k]) for k in expected)
    assert registry.detect_layout({'model.head.weight': torch.zeros(1)}) is None
    with pytest.raises(ValueError, match='not a GOT-OCR2 checkpoint'):
        import_state({'model.head.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match=r"do not belong to the legacy Hugging Face layout.*'extra.weight'"):
        registry.importer('got_ocr2_hf_legacy')({**legacy, 'extra.weight': torch.zeros(1)})


def test_published_size_matches_transformers():
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    cfg = model_config('got-ocr2', ['charset=94_full'])
    arch = dict(cfg['arch'])
    with torch.device('meta'):
        ours = GotOcr2(arch.pop('vocab_size'), 25, cfg['img_size'], **arch)
        ref = GotOcr2ForConditionalGeneration(GotOcr2Config())
    assert ours.num_image_tokens == 256
    # The head is tied to the embedding: count unique tensors on the reference side.
    ref_params = sum(p.numel() for p in {id(p): p for p in ref.parameters()}.values())
    assert count_parameters(ours) == ref_params == 560_528_640
    ref_shapes = {k: tuple(v.shape) for k, v in import_state(ref.state_dict()).items()}
    assert {f'model.{k}': tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes


# -- prompts and tiling ------------------------------------------------------------------------------------------


def hf_processor(tmp_path, tile: int = 64):
    from transformers import GotOcr2ImageProcessor, GotOcr2Processor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=character_tokenizer('abc'), eos_token='<|endoftext|>')
    image_processor = GotOcr2ImageProcessor(size={'height': tile, 'width': tile})
    return GotOcr2Processor(image_processor=image_processor, tokenizer=tok), GotOcr2Tokenizer(tok.backend_tokenizer)


@pytest.mark.parametrize(
    ('kwargs', 'query'),
    [
        ({}, ' OCR: '),
        ({'format': True}, ' OCR with format: '),
        ({'box': [10, 20, 50, 40]}, '[50, 200, 250, 400] OCR: '),
        ({'color': 'red'}, '[red]  OCR: '),
        ({'crop_to_patches': True, 'max_patches': 6}, ' OCR upon the patch reference: '),
    ],
)
def test_prompts_match_the_published_template(tmp_path, kwargs, query):
    processor, tokenizer = hf_processor(tmp_path)
    image = Image.new('RGB', (200, 100), 'white')
    # The processor scales a box in place: hand it a copy.
    copied = {k: list(v) if k == 'box' else v for k, v in kwargs.items()}
    ref = processor(image, return_tensors='pt', num_image_tokens=16, **copied)
    crops = ref['pixel_values'].shape[0]
    box = normalize_box(kwargs['box'], image.size) if 'box' in kwargs else None
    text = build_prompt(16, crops, box, kwargs.get('color'), kwargs.get('format', False))
    assert query in text
    assert text.startswith('<|im_start|>system\nYou should follow the instructions carefully and explain your')
    assert text.endswith(f'<imgpad></img>\n{query}<|im_end|><|im_start|>assistant\n')
    assert text.count('<imgpad>') == 16 * crops
    assert tokenizer.text_ids(text) == ref['input_ids'][0].tolist()


def test_prompt_errors_are_clear():
    with pytest.raises(ValueError, match='not one the model was trained with'):
        build_prompt(16, color='purple')
    with pytest.raises(ValueError, match='x1 < x2'):
        normalize_box([10, 10, 5, 20], (100, 100))
    with pytest.raises(ValueError, match=r'\[1\] <imgpad> slot\(s\) per row but 1 image\(s\) of 16 tokens'):
        GotOcr2(VOCAB, 4, image_token_id=IMAGE_TOKEN, **TINY_OURS).set_prompt([1, IMAGE_TOKEN, 2])


def test_crop_tiling_geometry(tmp_path):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    for size in [(200, 100), (100, 300), (64, 64), (1000, 90), (130, 129), (640, 480)]:
        for lo, hi in [(1, 6), (1, 12), (2, 4)]:
            assert choose_grid(size, (64, 64), lo, hi) == get_optimal_tiled_canvas(size[::-1], (64, 64), lo, hi)
    tiling = plan_tiling((200, 100), (64, 64), 1, 6)
    assert (tiling.columns, tiling.rows, tiling.num_crops) == (2, 1, 3)
    assert tiling.boxes == [(0, 0, 64, 64), (64, 0, 128, 64)]
    assert plan_tiling((64, 64), (64, 64)).num_crops == 1  # one tile: no thumbnail
    tall = plan_tiling((100, 300), (32, 48), 1, 6)
    assert (tall.columns, tall.rows) == (1, 3) and tall.boxes[-1] == (0, 64, 48, 96)
    # Left half black, right half white: the tiles are the two halves, the thumbnail the whole image.
    image = Image.new('RGB', (200, 100), 'white')
    image.paste((0, 0, 0), (0, 0, 100, 100))
    tiles = crop_tiles(image, tiling)
    assert [t.size for t in tiles] == [(64, 64)] * 3
    means = [sum(t.convert('L').tobytes()) / 64 / 64 for t in tiles]
    assert means[0] < 5 and means[1] > 250 and 120 < means[2] < 135
    processor, _ = hf_processor(tmp_path)
    ref = processor(image, return_tensors='pt', num_image_tokens=16, crop_to_patches=True, max_patches=6)
    assert ref['pixel_values'].shape[0] == tiling.num_crops


# -- the framework paths --------------------------------------------------------------------------------------

TINY = ['+experiment=got-ocr2-tiny', 'charset=36_lowercase', 'model.max_label_length=8']


def test_tiny_system_builds_prompt_and_checks_config():
    system = build_system(model_config('got-ocr2-tiny', ['charset=36_lowercase']))
    tok = system.tokenizer
    assert system.model.num_image_tokens == 16
    ids = system.model.prompt_ids.tolist()
    assert ids.count(tok.image_token_id) == 16
    assert tok.tokenizer.decode(ids, skip_special_tokens=False) == build_prompt(16)
    targets = tok.encode(['ab', 'c'])
    assert targets.tolist() == [tok.text_ids('ab') + [tok.eos_id], tok.text_ids('c') + [tok.eos_id, -100]]
    with pytest.raises(ValueError, match=r'model.arch.img_size is set from the model config'):
        build_system(model_config('got-ocr2-tiny', ['charset=36_lowercase', '+model.arch.img_size=[8,8]']))
    with pytest.raises(ValueError, match='smaller than the tokenizer'):
        build_system(model_config('got-ocr2-tiny', ['charset=36_lowercase', 'model.arch.vocab_size=10']))
    with pytest.raises(FileNotFoundError, match='set model.tokenizer'):
        build_system(model_config('got-ocr2-tiny', ['charset=36_lowercase', 'model.tokenizer=/nonexistent.json']))


def test_fine_tuning_lowers_the_loss_and_runs_through_the_scripts(word_data, tmp_path, capsys):
    import read
    import test as test_script
    from strhub.benchmark import compute_table, latency_sweep
    from strhub.models.gotocr2.reading import read_image
    from strhub.models.loading import load

    losses = training_losses(TINY + ['model.freeze_vision=true'], word_data, tmp_path, steps=30)
    assert len(losses) == 30
    assert statistics.mean(losses[-5:]) < 0.5 * statistics.mean(losses[:5]), losses
    ckpt = tmp_path / 'checkpoints' / 'last.ckpt'
    system = load(ckpt)
    assert not any(p.requires_grad for p in system.model.vision_tower.parameters())

    args = [str(ckpt), '--test_dirs', str(word_data / 'test'), '--num_workers', '0', '--device', 'cpu']
    assert test_script.main(args + ['--batch_size', '8']) == 0
    table = capsys.readouterr().out
    assert 'IIIT5k' in table and 'Combined' in table

    image_path = tmp_path / 'word.png'
    Image.new('RGB', (100, 32), 'white').save(image_path)
    assert read.main([str(ckpt), '--images', str(image_path), '--device', 'cpu', 'max_label_length:int=4']) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f'{image_path}: ') and re.search(r'\(\d\.\d{4}\)$', line)

    text, confidence = read_image(system, Image.open(image_path), box=[0, 0, 50, 32], max_crops=4)
    assert isinstance(text, str) and 0.0 <= confidence <= 1.0
    # What ./bench.py runs: the latency sweep and the fvcore compute table (traced through generation).
    rows = latency_sweep(system.model, [32, 128], [1], torch.device('cpu'), min_run_time=0.05)
    assert rows[0]['batch_size'] == 1 and rows[0]['median_ms'] > 0
    compute = {row['module']: row for row in compute_table(system.model, [32, 128], torch.device('cpu'))}
    assert compute['total']['gflops'] > 0 and compute['vision_tower']['params_M'] > 0
    with torch.no_grad():
        logits = system.model(torch.zeros(2, 3, 32, 128), 3)
    assert logits.shape[0] == 2 and 1 <= logits.shape[1] <= 4 and logits.shape[2] == len(system.tokenizer)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    system = build_system(model_config('got-ocr2-tiny', ['charset=36_lowercase']))
    x, labels = torch.randn(2, 3, 32, 128), ['ab', 'cde']
    system.train()
    system.training_loss(x, labels).backward()
    grads = {n: p.grad.clone() for n, p in system.named_parameters()}
    system.zero_grad()
    system.model.set_gradient_checkpointing(True)
    system.training_loss(x, labels).backward()
    for name, p in system.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_converted_weights_load_as_pretrained(pair, tmp_path):
    from safetensors.torch import save_file

    from strhub.models.gotocr2.convert import main as convert_main
    from strhub.models.loading import load, load_pretrained_weights

    hf, ours = pair
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != 'lm_head.weight'}
    half = len(state) // 2
    shards = [tmp_path / 'a.safetensors', tmp_path / 'b.safetensors']
    save_file(dict(list(state.items())[:half]), str(shards[0]))
    save_file(dict(list(state.items())[half:]), str(shards[1]))
    converted = tmp_path / 'got.pt'
    assert convert_main([str(s) for s in shards] + [str(converted)]) == 0
    arch = {f'model.arch.{k}={list(v) if isinstance(v, tuple) else v}' for k, v in TINY_OURS.items() if k != 'img_size'}
    overrides = ['charset=36_lowercase', 'model.img_size=[64,64]', f'model.arch.vocab_size={VOCAB}', *sorted(arch)]
    system = build_system(model_config('got-ocr2-tiny', overrides))
    load_pretrained_weights(system, converted)
    for key, value in ours.state_dict().items():
        assert torch.equal(system.model.state_dict()[key], value), key

    # A complete checkpoint (config embedded) reads like a trained one and generates what transformers does.
    full = tmp_path / 'got.ckpt'
    args = ['--config', 'got-ocr2-tiny', '--set', *overrides, 'model.max_label_length=5']
    assert convert_main([str(s) for s in shards] + [str(full), *args]) == 0
    system = load(full)
    reference = copy.deepcopy(hf)
    reference.config.image_token_id = system.tokenizer.image_token_id  # the character tokenizer's <imgpad>
    prompt = system.model.prompt_ids[None].expand(2, -1)
    with torch.no_grad():
        expected = reference.generate(
            input_ids=prompt, pixel_values=images(), max_new_tokens=6, do_sample=False, eos_token_id=None
        )[:, prompt.shape[1] :]
    assert torch.equal(system.model.generate(images(), stop_ids=[]).ids, expected)
    texts, _ = system.predict(images())
    assert texts == system.tokenizer.decode_ids(expected, torch.ones(expected.shape))[0]


CLIP = (
    'model.preprocess.normalization='
    '{mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711]}'
)


@pytest.mark.parametrize(
    ('ours', 'hf'),
    [
        ({}, {}),
        ({'box': [10, 5, 90, 40], 'color': 'green', 'max_crops': 6}, {'box': [10, 5, 90, 40], 'color': 'green'}),
        ({'with_format': True, 'max_crops': 6}, {'format': True}),
    ],
)
def test_read_inputs_match_the_transformers_processor(ours, hf):
    from transformers import GotOcr2Processor, PreTrainedTokenizerFast
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from strhub.models.gotocr2.reading import prepare_inputs

    tok = PreTrainedTokenizerFast(tokenizer_object=character_tokenizer('abc'), eos_token='<|endoftext|>')
    processor = GotOcr2Processor(
        image_processor=GotOcr2ImageProcessorPil(size={'height': 32, 'width': 32}), tokenizer=tok
    )
    image = Image.frombytes('RGB', (150, 50), bytes(torch.randint(0, 256, (150 * 50 * 3,), dtype=torch.uint8).tolist()))
    crops = {'crop_to_patches': True, 'max_patches': ours['max_crops']} if 'max_crops' in ours else {}
    ref = processor(image, return_tensors='pt', num_image_tokens=4, **hf, **crops)
    system = build_system(model_config('got-ocr2-tiny', ['charset=36_lowercase', 'model.img_size=[32,32]', CLIP]))
    images, prompt_ids = prepare_inputs(system, image, **ours)
    assert images.shape[1] == ref['pixel_values'].shape[0] == (4 if crops else 1)
    torch.testing.assert_close(images[0], ref['pixel_values'], atol=1e-5, rtol=0)
    assert prompt_ids.tolist() == ref['input_ids'].tolist()


def test_relative_position_resampling_matches_transformers():
    from transformers.models.got_ocr2.modeling_got_ocr2 import GotOcr2VisionAttention

    from strhub.models.gotocr2.vision import relative_position_table

    table = torch.randn(13, 8, generator=torch.Generator().manual_seed(4))  # trained for a 7-token side
    for size in (7, 5, 10):
        expected = GotOcr2VisionAttention.get_rel_pos(None, size, size, table)
        torch.testing.assert_close(relative_position_table(size, table), expected, atol=1e-6, rtol=0)


def test_tokenizer_json_round_trip(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from strhub.models.gotocr2.prompts import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(['hello world', 'OCR: text', 'You should follow the instructions'] * 20, trainer)
    path = tmp_path / 'tokenizer.json'
    tok.save(str(path))
    system = build_system(model_config('got-ocr2-tiny', ['charset=94_full', f'model.tokenizer={path}']))
    tokenizer = system.tokenizer
    assert len(tokenizer) == tok.get_vocab_size() == system.model.language_model.embed_tokens.num_embeddings
    assert system.model.image_token_id == tok.token_to_id('<imgpad>')
    labels = ['hello', 'World42', 'a.b-c']
    targets = tokenizer.encode(labels)
    ids = targets.masked_fill(targets == -100, tokenizer.pad_id)
    texts, probs = tokenizer.decode_ids(ids, torch.full(ids.shape, 0.5))
    assert texts == labels
    assert [len(p) for p in probs] == [int((row != -100).sum()) for row in targets]  # the end token counts
    assert tokenizer.tokenizer.decode(system.model.prompt_ids.tolist(), skip_special_tokens=False) == build_prompt(16)
    bad = Tokenizer(models.BPE(vocab={'a': 0}, merges=[]))
    bad.save(str(tmp_path / 'bad.json'))
    with pytest.raises(ValueError, match=r"lacks the GOT-OCR2 special token\(s\) \['<\|endoftext\|>'"):
        GotOcr2Tokenizer.from_file(tmp_path / 'bad.json')
