"""ABINet and ABINet-SV: parity with the reference outputs, the published layout and sizes, the training schedule
(vision pre-training, separate LM learning rate) and language-model pre-training on text."""

from __future__ import annotations

import random
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from strhub.config import compose_config, model_config
from strhub.models import registry
from strhub.models.abinet import sequence_lengths
from strhub.models.loading import build_system, count_parameters, load_pretrained_weights, set_runtime_options
from strhub.training import build_datamodule
from tests.conftest import load_golden, read_layout, training_losses

# Published sizes with the 94-character charset (millions of parameters).
PUBLISHED_SIZES = {'abinet': 36.9, 'abinet-sv': 32.9}
ARCH_KEYS = (
    'd_model',
    'nhead',
    'd_inner',
    'activation',
    'dropout',
    'v_num_layers',
    'v_attention',
    'v_attention_mode',
    'l_num_layers',
    'l_use_self_attn',
    'l_detach',
    'iter_size',
)
# Small enough for a training step well under a second on a CPU.
TINY_ARCH = [
    'charset=36_lowercase',
    'model.max_label_length=8',
    'model.batch_size=16',
    'model.img_size=[32,64]',
    'model.arch.d_model=32',
    'model.arch.nhead=2',
    'model.arch.d_inner=64',
    'model.arch.v_num_layers=1',
    'model.arch.l_num_layers=1',
    'model.arch.iter_size=2',
    'model.arch.dropout=0',
    'model.scheduler.name=constant',
]
TRAINING = ['trainer.log_every_n_steps=1']


def tiny_system(name: str = 'abinet', *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_system(model_config(name, [*TINY_ARCH, *overrides]))


def golden_system(shared_dir, name: str):
    """Our system built with the reference config of the golden file, holding its weights."""
    golden = load_golden(shared_dir, name)
    ref = golden['config']
    cfg = model_config(name)
    cfg.update({k: ref[k] for k in ('charset_train', 'charset_test', 'max_label_length', 'img_size', 'lr', 'l_lr')})
    cfg['arch'].update({k: ref[k] for k in ARCH_KEYS})
    system = build_system(cfg)
    system.load_state_dict(golden['state_dict'], strict=True)
    return system.eval(), golden


@pytest.mark.parametrize('name', ['abinet', 'abinet-sv'])
def test_golden_parity(shared_dir, name):
    system, golden = golden_system(shared_dir, name)
    out = golden['outputs']
    with torch.no_grad():
        logits = system(golden['images'])
        val_logits, val_loss, numel = system.forward_logits_loss(golden['images'], golden['labels'])
    assert logits.shape == out['logits'].shape == (4, 26, 95)
    torch.testing.assert_close(logits, out['logits'], atol=1e-4, rtol=0)
    assert torch.equal(logits.argmax(-1), out['logits'].argmax(-1))
    assert val_logits.shape == out['val_logits'].shape == (4, 7, 95)
    torch.testing.assert_close(val_logits, out['val_logits'], atol=1e-4, rtol=0)
    assert torch.equal(val_logits.argmax(-1), out['val_logits'].argmax(-1))
    torch.testing.assert_close(val_loss, out['val_loss'], atol=1e-4, rtol=0)
    assert numel == int(out['val_loss_numel'])


def test_iter_size_is_a_runtime_option():
    system = tiny_system('abinet', 'model.arch.iter_size=3').eval()
    images = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        full = system.model.forward_iterations(images)
        set_runtime_options(system, {'iter_size': 1})
        one = system(images)
        set_runtime_options(system, {'iter_size': 0})
        vision_only = system(images)
    assert len(full.alignment) == len(full.language) == 3
    torch.testing.assert_close(one, full.alignment[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(vision_only, full.vision.logits, atol=1e-5, rtol=0)
    assert not torch.allclose(one, full.alignment[-1])


@pytest.mark.parametrize('name', ['abinet', 'abinet-sv'])
def test_published_layout_size_and_strict_loading(shared_dir, name):
    system = build_system(model_config(name, ['charset=94_full']))
    assert round(count_parameters(system.model) / 1e6, 1) == PUBLISHED_SIZES[name]
    layout = read_layout(shared_dir / 'reference' / 'keys' / f'{name}.tsv')
    assert {k: tuple(v.shape) for k, v in system.state_dict().items()} == layout
    release = {k: torch.randn(s) if s else torch.tensor(7) for k, s in layout.items()}
    system.load_state_dict(registry.importer('strhub_system')(release), strict=True)
    assert torch.equal(system.model.language.proj.weight, release['model.language.proj.weight'])
    assert torch.equal(system.model.vision.backbone.pos_encoder.pe, release['model.vision.backbone.pos_encoder.pe'])


def test_sequence_lengths_stop_at_the_first_eos():
    ids = torch.tensor([[3, 0, 2, 0], [0, 0, 1, 1], [1, 2, 3, 4], [5, 6, 7, 0]])
    logits = torch.nn.functional.one_hot(ids, 8).float()
    assert sequence_lengths(logits, eos_id=0).tolist() == [2, 1, 4, 4]


def test_bad_configuration_has_clear_errors():
    with pytest.raises(ValueError, match='multiple of 8'):
        tiny_system('abinet', 'model.img_size=[32,32]')
    with pytest.raises(ValueError, match="unknown vision attention 'bogus'"):
        tiny_system('abinet', 'model.arch.v_attention=bogus')
    with pytest.raises(ValueError, match=r'unknown model.arch key\(s\) \[\'v_backbone\'\]'):
        tiny_system('abinet', '+model.arch.v_backbone=transformer')


def fake_trainer(step: int, total: int, optimizers=()) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, estimated_stepping_batches=total, optimizers=list(optimizers))


def test_vision_pretraining_phase_and_alignment_reset():
    system = tiny_system('abinet', 'model.vision_pretrain_fraction=0.5')
    images, labels = torch.randn(2, 3, 32, 64), ['abc', 'de']
    system._trainer = fake_trainer(4, 10)
    assert system.in_vision_pretraining
    system.pretraining_loss(images, labels)
    assert system.alignment_reset_pending  # the fusion was trained on the pre-training objective
    with torch.no_grad():
        system.model.alignment.cls.bias.fill_(1.0)
    system.on_train_batch_start(None, 0)
    assert system.model.alignment.cls.bias.eq(1.0).all(), 'reset during pre-training'
    system._trainer = fake_trainer(5, 10)
    assert not system.in_vision_pretraining
    system.on_train_batch_start(None, 0)
    assert system.model.alignment.cls.bias.eq(0.0).all() and not system.alignment_reset_pending
    # Fine-tuning without pre-training never resets the fusion.
    system = tiny_system('abinet', 'model.vision_pretrain_fraction=0')
    system._trainer = fake_trainer(0, 10)
    assert not system.in_vision_pretraining and not system.alignment_reset_pending


def bare_trainer() -> pl.Trainer:
    """A trainer that is never fitted: enough for the optimiser set-up (devices, accumulation)."""
    return pl.Trainer(accelerator='cpu', devices=1, logger=False, enable_checkpointing=False)


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_vision_pretraining_keeps_the_language_model_out_of_the_vision_model():
    system = tiny_system('abinet')
    labels = ['abc', 'de', 'f']
    images = torch.randn(3, 3, 32, 64)
    # The vision model's gradient is that of its own loss alone.
    system.zero_grad()
    system.pretraining_loss(images, labels)[0].backward()
    total = grads(system.model)
    assert any(n.startswith('language.') for n in total) and any(n.startswith('alignment.') for n in total)
    system.zero_grad()
    vision_loss = system._cross_entropy(system.model.vision(images).logits, system.targets(labels))
    vision_loss.backward()
    vision_grads = grads(system.model)
    assert set(vision_grads) == {n for n in total if n.startswith('vision.')}
    for name, grad in vision_grads.items():
        torch.testing.assert_close(total[name], grad, atol=1e-6, rtol=1e-5)
    # The language model learns from the labels alone: other images, same gradient.
    system.zero_grad()
    system.pretraining_loss(torch.randn(3, 3, 32, 64), labels)[0].backward()
    for name, grad in grads(system.model).items():
        if name.startswith('language.'):
            torch.testing.assert_close(total[name], grad, atol=1e-6, rtol=1e-5)


def test_frozen_language_model_is_unchanged_by_a_vision_pretraining_step():
    system = tiny_system('abinet', 'model.pretrain_lm_on_labels=false')
    system.trainer = bare_trainer()
    before = {k: v.clone() for k, v in system.model.state_dict().items()}
    optimizer = torch.optim.AdamW(system.param_groups(weight_decay=0.1), lr=1e-2)
    loss, parts = system.pretraining_loss(torch.randn(4, 3, 32, 64), ['abc', 'de', 'f', 'bead'])
    assert set(parts) == {'vision'}
    loss.backward()
    optimizer.step()
    after = system.model.state_dict()
    for name in before:
        if name.startswith(('language.', 'alignment.')):
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before['vision.cls.weight'], after['vision.cls.weight'])
    assert not system.alignment_reset_pending


@pytest.mark.parametrize('lm_only', [False, True])
def test_language_model_learning_rate_group(lm_only):
    system = tiny_system('abinet', 'model.lr=1e-3', 'model.l_lr=4e-4', f'model.lm_only={lm_only}')
    system.trainer = bare_trainer()
    optimizer = system.configure_optimizers()
    language = {id(p) for p in system.model.language.parameters()}
    scale = 16 / 256  # batch size / 256
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group['params']}
        assert ids <= language or not ids & language, 'a group mixes language and other parameters'
        expected = 4e-4 * scale if ids <= language and not lm_only else 1e-3 * scale
        assert group['lr'] == pytest.approx(expected)
        seen |= ids
    assert language <= seen
    trainable = {id(p) for p in system.model.parameters() if p.requires_grad}
    assert seen == trainable
    if lm_only:
        assert seen == language  # vision and fusion stay frozen


def test_full_model_training_lowers_the_loss(word_data, tmp_path):
    overrides = ['+experiment=abinet', *TINY_ARCH, *TRAINING, 'model.lr=0.1', 'model.l_lr=0.1']
    losses = training_losses([*overrides, 'model.vision_pretrain_fraction=0'], word_data, tmp_path, steps=20)
    assert len(losses) == 20
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5]), losses


def write_words(path, num: int = 40, seed: int = 0):
    rng = random.Random(seed)
    words = [''.join(rng.choice('abcdef') for _ in range(rng.randint(2, 6))) for _ in range(num)]
    path.write_text('\n'.join(words) + '\n', encoding='utf-8')
    return path


def test_language_model_pretraining_on_text(word_data, tmp_path):
    words = write_words(tmp_path / 'words.txt')
    lm_overrides = [f'data.text_file={words}', *TINY_ARCH]
    losses = training_losses(
        ['+experiment=tune_abinet-lm', *lm_overrides, *TRAINING, 'model.lr=0.1'], word_data, tmp_path / 'lm', steps=20
    )
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    checkpoint = tmp_path / 'lm' / 'checkpoints' / 'last.ckpt'
    trained = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    # Same seed as the run: the initial weights. Only the language model has moved.
    pl.seed_everything(0)
    initial = build_system(model_config('tune_abinet-lm', lm_overrides)).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in trained.items() if not k.startswith('model.language.'))
    assert not torch.equal(initial['model.language.cls.weight'], trained['model.language.cls.weight'])
    # pretrained=<checkpoint> gives a full ABINet that language model.
    full = tiny_system('abinet', seed=1)
    load_pretrained_weights(full, checkpoint)
    for key, value in full.state_dict().items():
        if key.startswith('model.language.'):
            assert torch.equal(value, trained[key]), key


def test_language_model_validation_path_ignores_images():
    system = tiny_system('abinet', 'model.lm_only=true').eval()
    with torch.no_grad():
        logits, loss, numel = system.forward_logits_loss(None, ['abc', 'de'])
    assert logits.shape == (2, 9, 37)
    assert torch.isfinite(loss) and numel == 7


def text_data_config(*overrides: str) -> dict:
    cfg = compose_config(['+experiment=tune_abinet-lm', 'charset=36_lowercase', 'data.num_workers=0', *overrides])
    return OmegaConf.to_container(cfg.data, resolve=True)


def test_text_data_module_errors_name_the_config_key(tmp_path):
    data = text_data_config()
    with pytest.raises(ValueError, match=r'data.text_file is not set'):
        build_datamodule(data)
    with pytest.raises(FileNotFoundError, match=r'data.text_file=.*missing.txt does not exist'):
        build_datamodule({**data, 'text_file': str(tmp_path / 'missing.txt')})
    (tmp_path / 'empty.txt').write_text('\n  \n###\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r'data.text_file=.*empty.txt holds no usable word'):
        build_datamodule({**data, 'text_file': str(tmp_path / 'empty.txt')})


def test_text_data_module_batches_words_without_images(tmp_path):
    words = write_words(tmp_path / 'words.txt', num=100)
    datamodule = build_datamodule(text_data_config(f'data.text_file={words}', 'data.val_fraction=0.05'))
    assert len(datamodule.val_words) == 5 and len(datamodule.train_words) == 95
    assert sorted(datamodule.train_words + datamodule.val_words) == sorted(words.read_text().split())
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images is None and sorted(labels) == sorted(datamodule.train_words)
