"""Every command and snippet of the reference implementation's README (baudm/parseq) runs here unchanged, in its
cheapest form: tiny overrides appended, ``--cfg job``-style composition where a full run would be long, and published
weights replaced by files of the same layout in the hub cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from strhub.config import compose_config
from strhub.data.charsets import STANDARD_CHARSETS
from strhub.data.module import SceneTextDataModule
from strhub.models import registry
from strhub.models.loading import build_system
from strhub.training import build_datamodule, train
from tests.conftest import REPO_ROOT, TINY_PARSEQ, make_word_lmdb
from tests.test_user_paths import script

TINY_MODEL = [o for o in TINY_PARSEQ if o.startswith('model.')]


# -- Training (README "Sample commands for different training configurations") ---------------------------------------


@pytest.mark.parametrize(
    ('command', 'check'),
    [
        (['+experiment=parseq'], lambda c: c.model.name == 'parseq' and c.model.arch.embed_dim == 384),
        (['+experiment=parseq-tiny'], lambda c: c.model.name == 'parseq-tiny'),
        (['+experiment=abinet-sv'], lambda c: c.model.name.startswith('abinet')),
        (['+experiment=trbc'], lambda c: c.model.name == 'trbc'),
        (['charset=94_full'], lambda c: c.model.charset_train == STANDARD_CHARSETS['94_full']),
        (['charset=36_lowercase'], lambda c: c.model.charset_train == STANDARD_CHARSETS['36_lowercase']),
        (['charset=62_mixed-case'], lambda c: c.model.charset_train == STANDARD_CHARSETS['62_mixed-case']),
        (['dataset=real'], lambda c: c.data.train[0].paths[0] == 'train/real'),
        (['dataset=synth'], lambda c: [s.paths[0] for s in c.data.train] == ['train/synth/MJ', 'train/synth/ST']),
        (
            ['model.img_size=[32, 128]', 'model.max_label_length=25', 'model.batch_size=384'],
            lambda c: (
                list(c.model.img_size) == [32, 128] and c.data.batch_size == 384 and c.model.max_label_length == 25
            ),
        ),
        (['data.root_dir=data', 'data.num_workers=2', 'data.augment=true'], lambda c: c.data.augment is True),
        (
            ['trainer.max_epochs=20', 'trainer.accelerator=gpu', 'trainer.devices=2'],
            lambda c: c.trainer.accelerator == 'gpu' and c.trainer.devices == 2,
        ),
        (['+trainer.gradient_clip_algorithm=value'], lambda c: c.trainer.gradient_clip_algorithm == 'value'),
        (['+experiment=parseq-tiny', 'ckpt_path=outputs/x/y/checkpoints/last.ckpt'], lambda c: c.ckpt_path),
    ],
)
def test_training_commands_compose_with_their_meaning(command, check):
    cfg = compose_config(command)
    assert check(cfg)
    if cfg.model.name.startswith('parseq'):  # the model they describe builds (at tiny sizes)
        given = {c.split('=')[0] for c in command}
        tiny = [o for o in TINY_MODEL if o.split('=')[0] not in given]
        build_system(OmegaConf.to_container(compose_config(command + tiny).model, resolve=True))


def test_data_augment_true_turns_on_the_default_augmentation(word_data):
    cfg = compose_config(TINY_PARSEQ + ['dataset=generated', f'data.root_dir={word_data}', 'data.augment=true'])
    datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    assert datamodule.augment_cfg == {'enabled': True}
    assert datamodule.train_dataset[0][0].shape == (3, 32, 128)


def test_fine_tune_and_resume_commands_run(word_data, tmp_path, monkeypatch):
    # ./train.py +experiment=parseq-tiny pretrained=parseq-tiny: the published file (its layout) from the hub cache.
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    published = build_system(OmegaConf.to_container(compose_config(['+experiment=parseq-tiny']).model, resolve=True))
    cached = tmp_path / 'hub' / 'checkpoints' / os.path.basename(registry.releases()['parseq-tiny'].url)
    cached.parent.mkdir(parents=True)
    torch.save(published.model.state_dict(), cached)
    common = ['dataset=generated', f'data.root_dir={word_data}', 'data.num_workers=0', 'model.batch_size=8',
              'trainer.max_steps=2', 'trainer.val_check_interval=2', 'trainer.num_sanity_val_steps=0']  # fmt: skip
    _, trainer = train(compose_config(['+experiment=parseq-tiny', 'pretrained=parseq-tiny', *common]), tmp_path / 'ft')
    assert trainer.global_step == 2
    # ./train.py +experiment=<model_exp> ckpt_path=outputs/<model>/<timestamp>/checkpoints/<checkpoint>.ckpt
    ckpt = tmp_path / 'ft' / 'checkpoints' / 'last.ckpt'
    _, trainer = train(compose_config(['+experiment=parseq-tiny', f'ckpt_path={ckpt}', *common]), tmp_path / 'resumed')
    assert trainer.global_step == 2 and torch.load(tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt',
                                                   weights_only=True)['global_step'] == 2  # fmt: skip


# -- Evaluation ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def reference_layout(word_data, tmp_path_factory) -> Path:
    """A data root in the layout of the reference's Datasets.md (test/<set name>), small sets."""
    root = tmp_path_factory.mktemp('ref')
    for i, name in enumerate(['IIIT5k', 'SVT', 'IC13_857', 'IC13_1015', 'IC15_1811', 'IC15_2077', 'SVTP', 'CUTE80']):
        make_word_lmdb(root / 'test' / name, 4, seed=10 + i)
    for i, name in enumerate(['ArT', 'COCOv1.4', 'Uber']):
        make_word_lmdb(root / 'test' / name, 3, seed=30 + i)
    return root


@pytest.fixture(scope='module')
def checkpoint(word_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp('run') / 'parseq'
    overrides = TINY_PARSEQ + ['dataset=generated', f'data.root_dir={word_data}', 'trainer.max_steps=2',
                               'trainer.val_check_interval=2']  # fmt: skip
    train(compose_config(overrides), run)
    return run / 'checkpoints' / 'last.ckpt'


@pytest.mark.parametrize(
    'flags',
    [
        [],
        ['--cased'],
        ['--cased', '--punctuation'],
        ['--new'],
        ['--cased', '--punctuation', '--rotation', '90'],
        ['refine_iters:int=2', 'decode_ar:bool=false'],
    ],  # fmt: skip
)
def test_test_commands_print_the_reference_groups_and_write_the_log(checkpoint, reference_layout, flags, capsys):
    rc = script('test')([str(checkpoint), '--data_root', str(reference_layout), '--num_workers', '0', *flags])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err.startswith('Additional keyword arguments: {')  # on stderr: stdout keeps only the tables
    titles = [line for line in out.splitlines() if line.endswith(' set:')]
    assert titles == ['Benchmark (Subset) set:', 'Benchmark set:'] + (['New set:'] if '--new' in flags else [])
    subset = out.split('Benchmark (Subset) set:')[1].split('Benchmark set:')[0]
    assert [line.split('|')[1].strip() for line in subset.strip().splitlines()[2:]] == [
        'IIIT5k', 'SVT', 'IC13_857', 'IC15_1811', 'SVTP', 'CUTE80', 'Combined']  # fmt: skip
    assert '| Dataset' in out and '| # samples | Accuracy | 1 - NED | Confidence | Label Length |' in out
    log = Path(str(checkpoint) + '.log.txt').read_text()
    assert 'Benchmark (Subset) set:' in log and 'Benchmark set:' in log


# -- bench.py, read.py, tune.py ----------------------------------------------------------------------------------------


def test_bench_command(tmp_path):
    tiny = [o for o in TINY_MODEL if not o.startswith('model.batch_size')]
    command = ['model=parseq', 'model.decode_ar=false', 'model.refine_iters=3', '+range=true']
    cmd = [sys.executable, str(REPO_ROOT / 'bench.py'), *command, *tiny, 'device=cpu', 'batch_sizes=[1]',
           'min_run_time=0.05', f'output_dir={tmp_path}']  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '| Batch | Median (ms)' in proc.stdout and 'GFLOPs' in proc.stdout


def test_read_command_on_a_folder_of_images(checkpoint, tmp_path, capsys, monkeypatch):
    demo = tmp_path / 'demo_images'
    demo.mkdir()
    for name in ('art-01107.jpg', 'ic15_word_26.png'):
        Image.new('RGB', (120, 40), 'white').save(demo / name)
    monkeypatch.chdir(tmp_path)
    images = sorted(str(p.relative_to(tmp_path)) for p in demo.iterdir())  # what the shell makes of demo_images/*
    for extra in ([], ['refine_iters:int=2', 'decode_ar:bool=false']):
        assert script('read')([str(checkpoint), *extra, '--images', *images]) == 0
        out, err = capsys.readouterr()
        assert err.startswith('Additional keyword arguments: {')
        assert [line.split(':')[0] for line in out.splitlines()] == images


def test_tune_commands_compose():
    assert compose_config(['tune.num_samples=20'], config_name='tune').tune.num_samples == 20
    cfg = compose_config(['+experiment=tune_abinet-lm'], config_name='tune')
    assert cfg.model.lm_only and cfg.data.module == 'text' and cfg.data.text_file is None


def test_abinet_language_model_trains_on_the_training_labels_without_a_word_list(word_data):
    cfg = compose_config(['+experiment=tune_abinet-lm', 'dataset=generated', f'data.root_dir={word_data}'])
    datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    assert len(datamodule.train_words) == 64 and len(datamodule.val_words) == 16
    assert all(isinstance(w, str) and w for w in datamodule.train_words)


# -- the torch.hub snippet, verbatim ---------------------------------------------------------------------------------


def test_the_torch_hub_snippet_verbatim(tmp_path, monkeypatch):
    """The README's Python snippet, unchanged but for the image path, against a hub cache holding this repository as
    baudm/parseq (what torch.hub reuses offline) and a file of the published parseq layout."""
    hub = tmp_path / 'hub'
    (hub / 'checkpoints').mkdir(parents=True)
    (hub / 'baudm_parseq_main').symlink_to(REPO_ROOT, target_is_directory=True)
    (hub / 'trusted_list').write_text('baudm_parseq\n')
    torch.manual_seed(0)
    published = build_system(OmegaConf.to_container(compose_config(['model=parseq']).model, resolve=True))
    torch.save(published.model.state_dict(), hub / 'checkpoints' / os.path.basename(registry.releases()['parseq'].url))
    Image.new('RGB', (128, 32), 'white').save(tmp_path / 'image.png')
    snippet = """
import torch
from PIL import Image
from strhub.data.module import SceneTextDataModule

# Load model and image transforms
parseq = torch.hub.load('baudm/parseq', 'parseq', pretrained=True).eval()
img_transform = SceneTextDataModule.get_transform(parseq.hparams.img_size)

img = Image.open('/path/to/image.png').convert('RGB')
# Preprocess. Model expects a batch of images with shape: (B, C, H, W)
img = img_transform(img).unsqueeze(0)

logits = parseq(img)
logits.shape  # torch.Size([1, 26, 95]), 94 characters + [EOS] symbol

# Greedy decoding
pred = logits.softmax(-1)
label, confidence = parseq.tokenizer.decode(pred)
print('Decoded label = {}'.format(label[0]))
""".replace('/path/to/image.png', str(tmp_path / 'image.png'))
    check = snippet + '\nprint("SHAPE", tuple(logits.shape), len(confidence))\n'
    env = {**os.environ, 'TORCH_HOME': str(tmp_path / 'torch'), 'PYTHONPATH': str(REPO_ROOT)}
    (tmp_path / 'torch').mkdir()
    shutil.move(str(hub), str(tmp_path / 'torch' / 'hub'))
    proc = subprocess.run([sys.executable, '-c', check], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (1, L, 95): 94 characters + [EOS]; L <= 26, shorter when decoding stops at the EOS as in the reference.
    assert 'Decoded label = ' in proc.stdout and re.search(r'SHAPE \(1, \d+, 95\) 1', proc.stdout), proc.stdout
    assert SceneTextDataModule.get_transform([32, 128])(Image.new('RGB', (50, 20))).shape == (3, 32, 128)


def test_model_level_decoding_options_reach_the_model():
    tiny = [o for o in TINY_MODEL if not o.startswith('model.batch_size')]
    cfg = compose_config(['model=parseq', 'model.decode_ar=false', 'model.refine_iters=3', *tiny])
    model = build_system(OmegaConf.to_container(cfg.model, resolve=True)).model
    assert model.decode_ar is False and model.refine_iters == 3
