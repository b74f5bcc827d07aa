"""torch.hub entry points (hubconf.py): every registered model name loads from a local clone, with or without the
published weights."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from strhub.config import model_config, model_names
from strhub.hub import hub_names
from strhub.models import registry
from strhub.models.loading import build_system
from tests.conftest import REPO_ROOT

TINY_PARSEQ = [
    'charset=36_lowercase',
    'model.max_label_length=8',
    'model.arch.embed_dim=32',
    'model.arch.enc_depth=1',
    'model.arch.enc_num_heads=2',
    'model.arch.dec_num_heads=2',
]


def test_hubconf_has_an_entry_point_for_every_registered_name():
    spec = importlib.util.spec_from_file_location('strhub_hubconf', REPO_ROOT / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = hub_names()
    assert set(model_names()) | set(registry.releases()) | set(registry.published_hub_names()) == set(names)
    assert callable(hubconf.load)  # every name, Hugging Face repository ids included (not Python names)
    for name in (n for n in names if '/' not in n):
        assert callable(getattr(hubconf, name)) and getattr(hubconf, name.replace('-', '_')).__name__ == name.replace(
            '-', '_'
        )
    public = {n for n in dir(hubconf) if not n.startswith('_') and callable(getattr(hubconf, n))}
    python_names = {n for n in names if '/' not in n}
    # torch.hub.list shows entry points only
    assert public == python_names | {n.replace('-', '_') for n in python_names} | {'load'}


def test_load_from_a_clone_without_installing(tmp_path):
    """A copy of the repository (package + hubconf.py) is all torch.hub.load(source='local') needs: the configs are
    found inside the package, and the copy's code is what runs."""
    clone = tmp_path / 'clone'
    shutil.copytree(REPO_ROOT / 'strhub', clone / 'strhub', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(REPO_ROOT / 'hubconf.py', clone / 'hubconf.py')
    script = f"""
import json, sys, torch
system = torch.hub.load({str(clone)!r}, 'parseq-tiny', source='local', pretrained=False,
                        overrides={TINY_PARSEQ!r}, refine_iters=0)
texts, _ = system.predict(torch.zeros(2, 3, 32, 128))
print(json.dumps({{'file': sys.modules['strhub'].__file__, 'cls': type(system).__name__, 'texts': texts,
                  'refine_iters': system.model.refine_iters, 'training': system.training,
                  'embed_dim': system.model.pos_queries.shape[-1]}}))
"""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(
        [sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['file'] == str(clone / 'strhub' / '__init__.py')
    assert report['cls'] == 'PARSeqSystem' and report['embed_dim'] == 32 and report['refine_iters'] == 0
    assert not report['training'] and len(report['texts']) == 2


def test_pretrained_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    """pretrained=True resolves the published file; a file of the release layout in the hub cache (a finished
    download) is loaded strictly, and the hyphen and underscore names are the same model."""
    torch.manual_seed(0)
    # The published parseq-tiny file holds the bare network (no ``model.`` prefix), trained on 94 characters.
    release = build_system(model_config('parseq-tiny', ['charset=94_full'])).model.state_dict()
    release = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in release.items()}
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    cached = tmp_path / 'hub' / 'checkpoints' / os.path.basename(registry.releases()['parseq-tiny'].url)
    cached.parent.mkdir(parents=True)
    torch.save(release, cached)

    system = torch.hub.load(str(REPO_ROOT), 'parseq_tiny', source='local', pretrained=True, decode_ar=False)
    assert not system.training and not system.model.decode_ar
    state = system.model.state_dict()
    assert set(state) == set(release)
    assert all(torch.equal(state[k], v) for k, v in release.items())


def test_bad_hub_requests_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"no published weights for 'trbc'; pretrained=True works for \[.*'crnn'"):
        torch.hub.load(str(REPO_ROOT), 'trbc', source='local', pretrained=True)
    with pytest.raises(ValueError, match=r'would change the architecture.*use them with pretrained=False'):
        torch.hub.load(str(REPO_ROOT), 'parseq', source='local', pretrained=True, overrides=['model.img_size=[32,64]'])
    with pytest.raises(AttributeError, match="no runtime option 'beam_width'"):
        torch.hub.load(str(REPO_ROOT), 'crnn', source='local', overrides=['charset=36_lowercase'], beam_width=5)
