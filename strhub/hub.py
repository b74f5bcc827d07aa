"""``torch.hub`` entry points: every registered model name builds its system, optionally with published weights.

``hubconf.py`` at the repository root exposes :func:`create` once per name in :func:`hub_names`, so that

    torch.hub.load('<clone dir>', 'parseq', pretrained=True, source='local')

works from a clone without installing the package (the configs live inside it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from strhub.config import model_config, model_names
from strhub.models import registry
from strhub.models.base import BaseSystem
from strhub.models.loading import build_system, load, set_runtime_options


def hub_names() -> list[str]:
    """Every model configuration name and every published weights name."""
    return sorted(set(model_names()) | set(registry.PRETRAINED))


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
        pretrained: load the published weights (downloaded once into the torch hub cache); only for names in
            :data:`registry.PRETRAINED`.
        overrides: Hydra config overrides for a randomly initialised model (``['charset=36_lowercase',
            'model.max_label_length=8']``); published weights fix the architecture, so not with ``pretrained``.
        device: where to put the model.
        runtime: inference options set on the model (``refine_iters=2``, ``decode_ar=False`` ...).
    """
    if name not in hub_names():
        raise ValueError(f'unknown model {name!r}; valid names: {hub_names()}')
    if pretrained:
        if name not in registry.PRETRAINED:
            raise ValueError(
                f'no published weights for {name!r}; pretrained=True works for {sorted(registry.PRETRAINED)}, '
                'or use pretrained=False for a randomly initialised model'
            )
        if overrides:
            raise ValueError(
                f'overrides {list(overrides)} would change the architecture the published {name!r} weights fit; '
                'use them with pretrained=False, or fine-tune with ./train.py pretrained=' + name
            )
        return load(name, device=device, **runtime)
    weights = registry.PRETRAINED.get(name)
    config_name, base = (weights.config, list(weights.overrides)) if weights else (name, [])
    system = build_system(model_config(config_name, [*base, *overrides]))
    set_runtime_options(system, runtime)
    return system.eval().to(device)
