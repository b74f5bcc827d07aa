"""Shipping models: ONNX / TorchScript export with parity against PyTorch, the metadata that lets the pure-onnxruntime
reader (strhub.runtime) decode without strhub, clear errors for models that cannot be exported, and the faster
inference options (int8 quantisation, autocast)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader

from strhub.config import model_config
from strhub.data.tokenizer import CharTokenizer, CTCTokenizer
from strhub.evaluation import evaluate
from strhub.export import TORCHSCRIPT_METADATA_FILE, ExportError, export
from strhub.inference import accuracy_change_table, compare_options, optimize_model, parse_options, with_options
from strhub.metrics import TextNormalizer
from strhub.models.base import SYSTEM_KEY
from strhub.models.loading import build_system
from strhub.reading import read_images
from strhub.runtime import OnnxRecognizer, RecognizerSpec, decode_logits
from tests.conftest import REPO_ROOT

CHARSET = ['charset=36_lowercase']
TINY_PARSEQ = [
    'model.max_label_length=8',
    'model.img_size=[32,64]',
    'model.arch.patch_size=[8,8]',
    'model.arch.embed_dim=32',
    'model.arch.enc_depth=1',
    'model.arch.enc_num_heads=2',
    'model.arch.dec_num_heads=2',
    'model.arch.enc_mlp_ratio=2',
    'model.arch.dec_mlp_ratio=2',
]
TINY_TRB = ['model.img_size=[32,32]', 'model.arch.hidden_size=16', 'model.arch.output_channel=16']
TINY_ABINET = [
    'model.max_label_length=8',
    'model.img_size=[32,64]',
    'model.arch.d_model=32',
    'model.arch.nhead=2',
    'model.arch.d_inner=64',
    'model.arch.v_num_layers=1',
    'model.arch.l_num_layers=1',
    'model.arch.iter_size=2',
]
# case -> (config name, overrides, export options). Every architecture of the zoo, PARSeq in both decoding modes.
CASES = {
    'parseq-ar': ('parseq-tiny', TINY_PARSEQ, {'decode': 'ar', 'refine_iters': 1}),
    'parseq-nar': ('parseq-tiny', TINY_PARSEQ, {'decode': 'nar', 'refine_iters': 2}),
    # Also a non-default preprocessing preset, which the runtime reader must reproduce from the metadata.
    'crnn': (
        'crnn',
        [
            'model.img_size=[32,64]',
            'model.arch.hidden_size=16',
            'model.arch.cnn_channels=[8,8,8,8,8,8,8]',
            'model.preprocess.resize=keep_ratio',
            'model.preprocess.normalization=imagenet',
        ],
        {},
    ),
    'trba': (
        'trba',
        [*TINY_TRB, 'model.max_label_length=8', 'model.arch.num_fiducial=4', '+model.arch.char_embed_dim=8'],
        {},
    ),
    'trbc': ('trbc', [*TINY_TRB, 'model.arch.num_fiducial=4'], {}),
    'vitstr': (
        'vitstr',
        [
            'model.max_label_length=8',
            'model.img_size=[16,64]',
            'model.arch.patch_size=[16,4]',
            'model.arch.embed_dim=32',
            'model.arch.depth=1',
            'model.arch.num_heads=2',
            'model.arch.mlp_ratio=2',
        ],
        {},
    ),
    'abinet': ('abinet', TINY_ABINET, {}),
    'abinet-sv': ('abinet-sv', TINY_ABINET, {}),
}


def tiny_system(case: str, seed: int = 0):
    name, overrides, _ = CASES[case]
    torch.manual_seed(seed)
    return build_system(model_config(name, [*CHARSET, *overrides])).eval()


@pytest.fixture(scope='module')
def word_images(tmp_path_factory) -> list:
    """Eight word images of different sizes (PNG files)."""
    root = tmp_path_factory.mktemp('words')
    rng = random.Random(0)
    font = ImageFont.load_default(size=18)
    paths = []
    for i in range(8):
        img = Image.new('RGB', (rng.randint(60, 140), rng.randint(24, 40)), (rng.randint(180, 255),) * 3)
        word = ''.join(rng.choice('abcdefghij') for _ in range(rng.randint(2, 6)))
        ImageDraw.Draw(img).text((rng.randint(1, 6), 2), word, fill=(rng.randint(0, 80),) * 3, font=font)
        paths.append(root / f'word{i}.png')
        img.save(paths[-1])
    return paths


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> dict:
    """case -> (system, path of its dynamic-batch ONNX export); each exported once for the tests below."""
    root = tmp_path_factory.mktemp('onnx')
    cache = {}

    def get(case: str):
        if case not in cache:
            system = tiny_system(case)
            path = root / f'{case}.onnx'
            summary = export(system, path, 'onnx', dynamic_batch=True, **CASES[case][2])
            cache[case] = (system, path, summary)
        return cache[case]

    return get


@pytest.mark.parametrize('case', CASES)
def test_onnx_round_trip_matches_pytorch(case, exported, word_images):
    """onnxruntime gives the PyTorch logits (atol 1e-4) at another batch size than traced, and the pure-onnxruntime
    reader, from the metadata alone, reads image files to the same strings and confidences as strhub's reader."""
    system, path, summary = exported(case)
    assert summary['max_abs_diff'] is not None and summary['max_abs_diff'] <= 1e-4
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    images = torch.rand(5, 3, *system.hparams.img_size, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.inference_mode():
        expected = system.model(images, system.max_label_length)
    got = session.run(None, {'images': images.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
    assert np.array_equal(got.argmax(-1), expected.argmax(-1).numpy())
    assert system.tokenizer.decode(torch.from_numpy(got).softmax(-1))[0] == system.predict(images)[0]

    reference = list(read_images(system, word_images))
    runtime = OnnxRecognizer(path).read_files(word_images, batch_size=3)
    assert [text for text, _ in runtime] == [text for _, text, _ in reference]
    np.testing.assert_allclose([c for _, c in runtime], [c for _, _, c in reference], rtol=1e-4)


def test_decoding_settings_are_exported(exported):
    """--decode / --refine-iters change the exported graph, and the file records them."""
    (_, ar_path, ar), (nar_system, nar_path, nar) = exported('parseq-ar'), exported('parseq-nar')
    assert ar['metadata']['strhub.decode_ar'] == 'true' and ar['metadata']['strhub.refine_iters'] == '1'
    assert nar['metadata']['strhub.decode_ar'] == 'false' and nar['metadata']['strhub.refine_iters'] == '2'
    assert not nar_system.model.decode_ar and nar_system.model.refine_iters == 2
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 64)).astype(np.float32)
    outputs = [OnnxRecognizer(p).logits(images) for p in (ar_path, nar_path)]
    assert outputs[0].shape == outputs[1].shape == (2, 9, 37)
    assert not np.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize('case', ['parseq-ar', 'crnn'])
def test_metadata_describes_preprocessing_and_tokens(case, exported):
    system, path, _ = exported(case)
    meta = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).get_modelmeta().custom_metadata_map
    preprocess = system.preprocessing
    assert json.loads(meta['strhub.img_size']) == list(preprocess.img_size)
    assert meta['strhub.resize'] == preprocess.resize.value and meta['strhub.interpolation'] == 'bicubic'
    tokens = json.loads(meta['strhub.tokens'])
    if case == 'crnn':
        assert meta['strhub.decoding'] == 'ctc' and meta['strhub.blank_id'] == '0'
        assert json.loads(meta['strhub.mean']) == [0.485, 0.456, 0.406] and meta['strhub.resize'] == 'keep_ratio'
        assert tokens == ['[B]', *system.tokenizer.charset]
    else:
        assert meta['strhub.decoding'] == 'attention' and meta['strhub.eos_id'] == '0'
        assert json.loads(meta['strhub.mean']) == [0.5, 0.5, 0.5] and json.loads(meta['strhub.std']) == [0.5] * 3
        assert tokens == ['[E]', *system.tokenizer.charset]  # the head predicts no [B] / [P]
    assert meta['strhub.charset'] == system.tokenizer.charset and meta['strhub.max_label_length'] == str(
        system.max_label_length
    )


@pytest.mark.parametrize('tokenizer_class', [CharTokenizer, CTCTokenizer])
def test_runtime_decoding_matches_the_tokenizer(tokenizer_class):
    """On logits whose argmax has EOS mid-way, repeats and blanks, the runtime's decoding equals strhub's."""
    tokenizer = tokenizer_class('abc')
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4, (16, 10), generator=gen)
    logits = torch.randn(16, 10, 4, generator=gen) + 6 * torch.nn.functional.one_hot(ids, 4)
    texts, probs = tokenizer.decode(logits.softmax(-1))
    assert any(0 < len(t) < 9 for t in texts)
    special = 'blank_id' if tokenizer_class is CTCTokenizer else 'eos_id'
    metadata = {
        'strhub.img_size': '[32, 128]',
        'strhub.channels': '3',
        'strhub.resize': 'stretch',
        'strhub.interpolation': 'bicubic',
        'strhub.pad_value': '0',
        'strhub.mean': '[0.5, 0.5, 0.5]',
        'strhub.std': '[0.5, 0.5, 0.5]',
        'strhub.decoding': 'ctc' if tokenizer_class is CTCTokenizer else 'attention',
        'strhub.tokens': json.dumps(list(tokenizer.itos[:4])),
        f'strhub.{special}': '0',
    }
    decoded = decode_logits(logits.numpy(), RecognizerSpec.from_metadata(metadata))
    assert [text for text, _ in decoded] == texts
    np.testing.assert_allclose([c for _, c in decoded], [float(p.prod()) for p in probs], rtol=1e-5)


def test_runtime_cli_imports_neither_torch_nor_strhub(exported, word_images):
    """``python -m strhub.runtime`` is what a deployment ships: it must run with numpy, Pillow and onnxruntime only,
    and print what ./read.py prints."""
    system, path, _ = exported('trba')
    result = subprocess.run(
        [sys.executable, '-X', 'importtime', '-m', 'strhub.runtime', str(path), *map(str, word_images[:3])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {
        line.rsplit('|', 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith('import time')
    }
    assert 'onnxruntime' in imported and 'PIL.Image' in imported
    assert not {m for m in imported if m == 'torch' or m.startswith('torch.')}
    # Run with -m, strhub.runtime is __main__: the package's __init__ is the only other strhub module allowed.
    assert {m for m in imported if m.startswith('strhub')} == {'strhub'}
    expected = [f'{p}: {text} ({confidence:.4f})' for p, text, confidence in read_images(system, word_images[:3])]
    assert result.stdout.splitlines() == expected


def test_runtime_refuses_a_file_without_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node('Identity', ['images'], ['logits'])],
        'bare',
        [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 32, 128])],
        [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 3, 32, 128])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), tmp_path / 'bare.onnx')
    with pytest.raises(ValueError, match=r"lacks the strhub metadata \['img_size'.*tools/export.py"):
        OnnxRecognizer(tmp_path / 'bare.onnx')
    with pytest.raises(FileNotFoundError, match='export one with tools/export.py'):
        OnnxRecognizer(tmp_path / 'missing.onnx')


def test_model_declared_unexportable_fails_with_its_reason(tmp_path, monkeypatch):
    system = tiny_system('crnn')
    monkeypatch.setattr(type(system.model), 'exportable', False, raising=False)
    monkeypatch.setattr(type(system.model), 'export_unsupported_reason', 'it decodes with a beam search', raising=False)
    for fmt in ('onnx', 'torchscript'):
        with pytest.raises(ExportError, match=r'crnn \(CRNN\) does not support export: it decodes with a beam search'):
            export(system, tmp_path / f'crnn.{fmt}', fmt)
    assert not list(tmp_path.iterdir())


def test_exporter_failure_is_wrapped_with_model_name_and_advice(tmp_path, monkeypatch):
    """Whatever torch.onnx raises from deep inside comes out as one ExportError naming the model, each exporter's
    error and what to try instead."""

    def failing_export(*args, **kwargs):
        raise RuntimeError('unsupported operator aten::something deep inside\n<long trace>')

    monkeypatch.setattr(torch.onnx, 'export', failing_export)
    system = tiny_system('crnn')
    with pytest.raises(ExportError) as info:
        export(system, tmp_path / 'crnn.onnx')
    message = str(info.value)
    assert message.startswith('ONNX export of crnn (CRNN) failed')
    assert 'legacy exporter: RuntimeError: unsupported operator aten::something deep inside' in message
    assert 'dynamo exporter' in message and '--format torchscript' in message and '<long trace>' not in message
    assert not (tmp_path / 'crnn.onnx').exists()


def test_bad_export_options_are_refused(tmp_path):
    system = tiny_system('crnn')
    with pytest.raises(ExportError, match='no runtime option .decode_ar.*apply to models with those decoding options'):
        export(system, tmp_path / 'x.onnx', decode='nar')
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        export(system, tmp_path / 'x.tflite', 'tflite')
    with pytest.raises(ExportError, match="unknown exporter 'magic'"):
        export(system, tmp_path / 'x.onnx', exporter='magic')


def test_dynamo_exporter_and_fixed_batch(tmp_path):
    """The torch.export-based exporter gives the same logits; a fixed-batch file is read in chunks of its batch."""
    system = tiny_system('vitstr')
    summary = export(system, tmp_path / 'vitstr.onnx', exporter='dynamo')
    assert summary['exporter'] == 'dynamo' and summary['max_abs_diff'] <= 1e-4
    recognizer = OnnxRecognizer(tmp_path / 'vitstr.onnx')
    assert recognizer.fixed_batch == 1
    images = torch.rand(3, 3, 16, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.inference_mode():
        expected = system.model(images, system.max_label_length).numpy()
    np.testing.assert_allclose(recognizer.logits(images.numpy()), expected, atol=1e-4, rtol=0)


def test_torchscript_round_trip_with_metadata(tmp_path):
    system = tiny_system('parseq-ar')
    summary = export(system, tmp_path / 'parseq.pt', 'torchscript', dynamic_batch=True, decode='ar')
    assert summary['max_abs_diff'] <= 1e-4
    extra = {TORCHSCRIPT_METADATA_FILE: ''}
    loaded = torch.jit.load(str(tmp_path / 'parseq.pt'), _extra_files=extra)
    metadata = json.loads(extra[TORCHSCRIPT_METADATA_FILE])
    assert metadata['strhub.decoding'] == 'attention' and json.loads(metadata['strhub.img_size']) == [32, 64]
    images = torch.rand(4, 3, 32, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), system.model(images, 8), atol=1e-4, rtol=0)


def test_export_script_from_a_checkpoint(tmp_path, capsys):
    """tools/export.py on a training checkpoint writes a verified file; a model that cannot be exported exits 1."""
    import importlib.util

    system = tiny_system('trbc')
    checkpoint = {
        SYSTEM_KEY: f'{type(system).__module__}.{type(system).__qualname__}',
        'hyper_parameters': dict(system.hparams),
        'state_dict': system.state_dict(),
    }
    torch.save(checkpoint, tmp_path / 'trbc.ckpt')
    spec = importlib.util.spec_from_file_location('strhub_tool_export', REPO_ROOT / 'tools' / 'export.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(tmp_path / 'trbc.ckpt'), '--out', str(tmp_path / 'trbc.onnx'), '--dynamic-batch']) == 0
    assert 'wrote' in capsys.readouterr().out and OnnxRecognizer(tmp_path / 'trbc.onnx').spec.decoding == 'ctc'
    assert tool.main([str(tmp_path / 'trbc.ckpt'), '--out', str(tmp_path / 'nar.onnx'), '--decode', 'nar']) == 1
    assert not (tmp_path / 'nar.onnx').exists()


# -- faster inference options --------------------------------------------------------------------------------------


def test_int8_quantisation_gives_close_outputs():
    system = tiny_system('parseq-nar')
    # Non-autoregressive without refinement: each position's logits depend on the image only, so a flipped argmax
    # early on cannot feed different context to the later positions.
    system.model.decode_ar, system.model.refine_iters = False, 0
    quantized = with_options(system, 'int8')
    quantized_linear = torch.ao.nn.quantized.dynamic.Linear
    kinds = [type(m) for m in quantized.model.modules()]
    assert quantized_linear in kinds and torch.nn.Linear not in kinds
    assert quantized_linear not in [type(m) for m in system.model.modules()]  # the original is left as it was
    images = torch.rand(8, 3, 32, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        reference, got = system.model(images, 8), quantized.model(images, 8)
    assert (got - reference).norm() / reference.norm() < 0.08
    # Wherever the float model's top two classes are clearly apart, int8 picks the same one.
    error = (got - reference).abs().max()
    top2 = reference.topk(2, -1).values
    clear = top2[..., 0] - top2[..., 1] > 2 * error
    assert clear.any() and (got.argmax(-1) == reference.argmax(-1))[clear].all()


def test_inference_option_parsing_and_errors():
    assert str(parse_options('int8+compile')) == 'int8+compile' and str(parse_options('none')) == 'none'
    assert parse_options('bf16').precision == 'bf16'
    with pytest.raises(ValueError, match=r"unknown inference option 'int4'.*valid: \['none', 'compile', 'int8'"):
        parse_options('int4')
    model = tiny_system('crnn').model
    with pytest.raises(ValueError, match='fp16 autocast needs a GPU'):
        optimize_model(model, 'cpu', precision='fp16')
    with pytest.raises(ValueError, match='int8 dynamic quantisation runs on the CPU only'):
        optimize_model(model, 'cuda', quantize='int8')


def test_accuracy_change_per_option(word_images):
    """What ./test.py --options none int8 bf16 reports: accuracy per option on the same data, and its change."""
    system = tiny_system('parseq-ar')
    preprocess = system.preprocessing
    samples = []
    for path in word_images:
        with Image.open(path) as img:
            samples.append((preprocess(img), 'abc'))
    normalizer = TextNormalizer.from_options()
    texts = system.predict(torch.stack([image for image, _ in samples]))[0]
    samples = [(image, text if i % 2 else 'zz') for i, ((image, _), text) in enumerate(zip(samples, texts))]
    loaders = {'words': DataLoader(samples, batch_size=3)}

    def run(candidate):
        return evaluate(candidate, loaders, normalizer, progress=False)[0]

    results = compare_options(system, ['none', 'int8', 'bf16'], run)
    assert list(results) == ['none', 'int8', 'bf16']
    assert results['none']['words']['accuracy'] == pytest.approx(50.0)
    table = accuracy_change_table(results)
    lines = [re.sub(' +', ' ', line) for line in table.splitlines()]  # padded to the columns
    assert lines[0] == '| Option | words | Combined |'
    assert lines[2].startswith('| none | 50.00 |')
    delta = results['int8']['words']['accuracy'] - 50.0
    assert f'({delta:+.2f})' in table.splitlines()[3]
