"""Every published strhub release file loads by name through the registry, strictly, into the model it names."""

from __future__ import annotations

import os

import pytest
import torch

from strhub.models import registry
from strhub.models.loading import load
from tests.conftest import read_layout

# Registered name -> the published key layout in ../shared/reference/keys.
PUBLISHED = {
    'parseq': 'parseq',
    'parseq-tiny': 'parseq_tiny',
    'parseq-patch16-224': 'parseq_patch16_224',
    'crnn': 'crnn',
    'trba': 'trba',
    'vitstr': 'vitstr',
    'abinet': 'abinet',
}


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_release_loads_by_name(name, shared_dir, tmp_path, monkeypatch):
    """``pretrained=<name>`` resolves to the release URL; a file of that layout in the hub cache loads strictly."""
    weights = registry.releases()[name]
    assert weights.url.startswith(registry.RELEASE + '/')
    layout = read_layout(shared_dir / 'reference' / 'keys' / f'{PUBLISHED[name]}.tsv')
    torch.manual_seed(0)
    release = {key: torch.randn(shape) if shape else torch.tensor(3) for key, shape in layout.items()}
    # Stand in for a finished download: the file sits in the torch hub cache under its release name.
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    cached = tmp_path / 'hub' / 'checkpoints' / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.save(release, cached)

    system = load(name)
    state = system.state_dict()
    assert len(state) == len(release)
    for key, value in registry.importer(weights.layout)(release).items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key
    assert not system.training
