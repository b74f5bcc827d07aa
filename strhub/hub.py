"""``torch.hub`` entry points: every registered model name builds its system, optionally with published weights.

``hubconf.py`` at the repository root exposes :func:`create` once per name in :func:`hub_names`, so that

    torch.hub.load('<clone dir>', 'parseq', pretrained=True, source='local')

works from a clone without installing the package (the configs live inside it). Any name :func:`strhub.load` takes
(checkpoints, release names, Hugging Face repositories) goes through the ``load`` entry point:

    torch.hub.load('<clone dir>', 'load', 'alibaba-damo/mgp-str-base', source='local')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from strhub.config import model_config, model_names
from strhub.models import registry
from strhub.models.base import BaseSystem
from strhub.models.huggingface import hub_model, is_hub_spec
from strhub.models.loading import build_system, load, set_runtime_options


def hub_names() -> list[str]:
    """Every model configuration name, every release name and every Hugging Face repository known to work (any
    other Hugging Face repository of a supported ``model_type`` loads too)."""
    return sorted(set(model_names()) | set(registry.releases()) | set(registry.published_hub_names()))


def create(
    name: str,
    pretrained: bool = False,
    overrides: Sequence[str] = (),
    device: str | torch.device = 'cpu',
    **runtime: Any,
) -> BaseSystem:
    """The system for model ``name`` in eval mode.

    Args:
        name: a name from :func:`hub_names`.
        pretrained: load the published weights (downloaded once into the torch hub cache, or the Hugging Face
            cache for a repository id); for release names and Hugging Face repositories.
        overrides: Hydra config overrides for a randomly initialised model (``['charset=36_lowercase',
            'model.max_label_length=8']``); published weights fix the architecture, so not with ``pretrained``.
        device: where to put the model.
        runtime: inference options set on the model (``refine_iters=2``, ``decode_ar=False`` ...).
    """
    releases, hub = registry.releases(), is_hub_spec(name)
    if name not in hub_names() and not hub:
        raise ValueError(f'unknown model {name!r}; valid names: {hub_names()} or a Hugging Face repository id')
    if hub and not pretrained:
        if overrides:
            raise ValueError(f'{name}: a Hugging Face repository fixes its architecture; overrides do not apply')
        system = build_system(hub_model(name).config)  # its architecture, tokenizer and preprocessing, fresh weights
        set_runtime_options(system, runtime)
        return system.eval().to(device)
    if pretrained:
        if name not in releases and not hub:
            raise ValueError(
                f'no published weights for {name!r}; pretrained=True works for {sorted(releases)} and Hugging Face '
                'repositories, or use pretrained=False for a randomly initialised model'
            )
        if overrides:
            raise ValueError(
                f'overrides {list(overrides)} would change the architecture the published {name!r} weights fit; '
                'use them with pretrained=False, or fine-tune with ./train.py pretrained=' + name
            )
        return load(name, device=device, **runtime)
    weights = releases.get(name)
    config_name, base = (weights.config, list(weights.overrides)) if weights else (name, [])
    system = build_system(model_config(config_name, [*base, *overrides]))
    set_runtime_options(system, runtime)
    return system.eval().to(device)
