"""Name -> model: which system class a name builds, which config composes it, how foreign checkpoints map in.

Model names are the configs under ``configs/model`` and ``configs/experiment`` that define a ``model.name``;
pretrained names are the published weight files listed in :data:`PRETRAINED`. System classes register themselves
with :func:`register_system`; a checkpoint names its system class, and only registered classes are ever built
from a checkpoint, so a file cannot make us import arbitrary code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

StateDict = dict[str, torch.Tensor]
Importer = Callable[[StateDict], StateDict]

_SYSTEMS: dict[str, type] = {}
_IMPORTERS: dict[str, Importer] = {}

# Packages whose system modules register themselves on import.
MODEL_PACKAGES = ('strhub.models.parseq',)


def register_system(cls: type) -> type:
    """Class decorator: makes a system class loadable from checkpoints by its import path."""
    _SYSTEMS[f'{cls.__module__}.{cls.__qualname__}'] = cls
    return cls


def register_importer(layout: str) -> Callable[[Importer], Importer]:
    """Decorator: a function mapping a foreign checkpoint layout's state dict to our keys."""

    def wrap(fn: Importer) -> Importer:
        _IMPORTERS[layout] = fn
        return fn

    return wrap


def _import_model_packages() -> None:
    for package in MODEL_PACKAGES:
        importlib.import_module(f'{package}.system')


def system_class(path: str) -> type:
    """The registered system class for an import path (as stored in checkpoints)."""
    _import_model_packages()
    if path not in _SYSTEMS:
        raise KeyError(f'{path!r} is not a registered strhub system; known: {sorted(_SYSTEMS)}')
    return _SYSTEMS[path]


def importer(layout: str) -> Importer:
    _import_model_packages()
    if layout not in _IMPORTERS:
        raise KeyError(f'no checkpoint importer for layout {layout!r}; known: {sorted(_IMPORTERS)}')
    return _IMPORTERS[layout]


@dataclass(frozen=True)
class PretrainedWeights:
    """A published weight file.

    Attributes:
        url: where to download it (file name carries the SHA-256 prefix, checked after download).
        config: model/experiment config that builds the matching architecture.
        layout: importer name for the file's state-dict layout.
        overrides: extra config overrides (e.g. the charset the weights were trained with).
    """

    url: str
    config: str
    layout: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


RELEASE = 'https://github.com/baudm/parseq/releases/download/v1.0.0'
PRETRAINED: dict[str, PretrainedWeights] = {
    'parseq': PretrainedWeights(f'{RELEASE}/parseq-bb5792a6.pt', 'parseq', 'parseq_release', ('charset=94_full',)),
    'parseq-tiny': PretrainedWeights(
        f'{RELEASE}/parseq_tiny-e7a21b54.pt', 'parseq-tiny', 'parseq_release', ('charset=94_full',)
    ),
}
# The release files' own names are accepted too.
PRETRAINED['parseq_tiny'] = PRETRAINED['parseq-tiny']
