"""Checkpoint resolution and loading: pretrained names/URLs with hash checks, safetensors, fine-tuning heads."""

from __future__ import annotations

import hashlib
import logging
import pickle
import re

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from strhub.config import compose_config
from strhub.models import registry
from strhub.models.loading import build_system, load, load_pretrained_weights, set_runtime_options
from tests.conftest import TINY_PARSEQ

MODEL_OVERRIDES = [o for o in TINY_PARSEQ if o.startswith(('model.', 'charset='))]


def tiny_system(*extra: str):
    cfg = compose_config(['+experiment=parseq-tiny', *MODEL_OVERRIDES, *extra])
    return build_system(OmegaConf.to_container(cfg.model, resolve=True))


def release_file(tmp_path, system) -> tuple:
    """A file in the published layout (bare model keys), named with its SHA-256 prefix like the release files."""
    raw = tmp_path / 'raw.pt'
    torch.save(system.model.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    path = tmp_path / f'tiny-{digest[:8]}.pt'
    raw.rename(path)
    return path, digest


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    return tmp_path / 'hub'


def test_pretrained_name_downloads_with_hash_check(tmp_path, hub_dir, monkeypatch):
    source = tiny_system()
    path, _ = release_file(tmp_path, source)
    monkeypatch.setitem(
        registry._RELEASES,
        'tiny-test',
        registry.PretrainedWeights(path.as_uri(), 'parseq-tiny', 'parseq_release', tuple(MODEL_OVERRIDES)),
    )
    loaded = load('tiny-test')
    assert (hub_dir / 'checkpoints' / path.name).is_file()  # cached where torch.hub keeps downloads
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert not loaded.training

    # A file whose content does not match the hash in its name is refused.
    tampered = tmp_path / 'other' / path.name
    tampered.parent.mkdir()
    torch.save({'x': torch.zeros(1)}, tampered)
    (hub_dir / 'checkpoints' / path.name).unlink()
    monkeypatch.setitem(
        registry._RELEASES,
        'tiny-test',
        registry.PretrainedWeights(tampered.as_uri(), 'parseq-tiny', 'parseq_release', tuple(MODEL_OVERRIDES)),
    )
    with pytest.raises(RuntimeError, match='invalid hash value'):
        load('tiny-test')


def test_fine_tune_to_another_charset_reinitialises_heads(tmp_path, caplog):
    source = tiny_system()
    path = tmp_path / 'weights.safetensors'
    save_file({f'model.{k}': v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    target = tiny_system('charset=62_mixed-case')
    fresh_head = target.model.head.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        load_pretrained_weights(target, path)
    assert 're-initialised' in caplog.text and 'model.head.weight' in caplog.text
    loaded, total = map(int, re.search(r"loaded (\d+) of the model's (\d+) tensors", caplog.text).groups())
    assert 0 < loaded < total  # the run's log says what it started from, and that it was not everything
    torch.testing.assert_close(target.model.head.weight, fresh_head)  # kept its fresh initialisation
    enc_key = next(k for k in source.model.state_dict() if k.startswith('encoder.'))
    torch.testing.assert_close(target.model.state_dict()[enc_key], source.model.state_dict()[enc_key])


def test_fine_tune_from_another_size_names_the_checkpoints_architecture(tmp_path, caplog):
    source = tiny_system('model.arch.dec_mlp_ratio=3')
    path = tmp_path / 'run.ckpt'
    torch.save({'state_dict': source.state_dict(), 'hyper_parameters': dict(source.hparams)}, path)
    target = tiny_system()  # the experiment's own size, not the checkpoint's
    with caplog.at_level(logging.INFO):
        load_pretrained_weights(target, path)
    assert 'model.decoder.layers.0.linear1.weight' in caplog.text
    assert "trained with 'model.arch.dec_mlp_ratio=3' (this run: dec_mlp_ratio=2)" in caplog.text
    caplog.clear()
    same = tiny_system('model.arch.dec_mlp_ratio=3')
    with caplog.at_level(logging.INFO):
        load_pretrained_weights(same, path)
    assert 're-initialised' not in caplog.text and 'trained with' not in caplog.text


def test_checkpoints_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ('this must never run',))

    path = tmp_path / 'evil.ckpt'
    with open(path, 'wb') as f:
        pickle.dump({'state_dict': Evil()}, f)
    with pytest.raises(ValueError, match='not a readable checkpoint'):
        load(path)
    foreign = tmp_path / 'foreign.pt'
    torch.save({'conv.weight': torch.zeros(2, 2)}, foreign)
    with pytest.raises(ValueError, match='not a strhub training checkpoint'):
        load(foreign)
    with pytest.raises(ValueError, match='none of its 1 tensors fits'):
        load_pretrained_weights(tiny_system(), foreign)


def test_runtime_options():
    system = tiny_system()
    set_runtime_options(system, {'refine_iters': 2, 'decode_ar': False})
    assert system.model.refine_iters == 2 and system.model.decode_ar is False
    with pytest.raises(AttributeError, match="no runtime option 'bogus'; valid: .*refine_iters"):
        set_runtime_options(system, {'bogus': 1})


def test_checkpoints_name_their_system_by_a_stable_name_and_old_ones_still_load(word_data, tmp_path):
    from tests.test_user_paths import train_tiny

    ckpt = train_tiny(word_data, tmp_path / 'run')
    data = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert data['strhub_system'] == 'parseq'
    expected = load(ckpt).model.state_dict()
    # As written before systems had registered names: the class's import path.
    data['strhub_system'] = 'strhub.models.parseq.system.PARSeqSystem'
    old = tmp_path / 'old.ckpt'
    torch.save(data, old)
    loaded = load(old)
    assert type(loaded).__name__ == 'PARSeqSystem'
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in expected.items())
    assert sorted(registry.system_class(n).__name__ for n in ('crnn', 'trba', 'trbc', 'mgpstr', 'gotocr2')) == [
        'CRNNSystem', 'GotOcr2System', 'MGPSTRSystem', 'TRBASystem', 'TRBCSystem']  # fmt: skip
