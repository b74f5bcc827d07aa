"""Name -> model: which system class a name builds, which config composes it, how foreign checkpoints map in.

Model names are the configs under ``configs/model`` and ``configs/experiment`` that define a ``model.name``;
pretrained names are the published weight files listed in :data:`PRETRAINED`. System classes register themselves
with :func:`register_system` under a stable name; a checkpoint stores that name, and only registered classes are
ever built from a checkpoint, so a file cannot make us import arbitrary code.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

StateDict = dict[str, torch.Tensor]
Importer = Callable[[StateDict], StateDict]

_SYSTEMS: dict[str, type] = {}
# Checkpoints written before systems had stable names store the class's import path; they still load.
_IMPORT_PATHS: dict[str, str] = {}
_IMPORTERS: dict[str, Importer] = {}

MODELS_PACKAGE = 'strhub.models'


def system_name(cls: type) -> str:
    """A system class's stable registered name, stored in checkpoints: its ``registered_name`` attribute, else the
    class name lower-cased without the ``System`` suffix (``PARSeqSystem`` -> ``parseq``). Moving or renaming the
    module does not change it, so checkpoints keep loading."""
    return getattr(cls, 'registered_name', None) or cls.__name__.removesuffix('System').lower()


def register_system(cls: type) -> type:
    """Class decorator: makes a system class loadable from checkpoints by its registered name (:func:`system_name`),
    and by the import path that older checkpoints stored."""
    name = system_name(cls)
    if name in _SYSTEMS and _SYSTEMS[name] is not cls:
        raise ValueError(f'two system classes register the name {name!r}: {_SYSTEMS[name]} and {cls}')
    _SYSTEMS[name] = cls
    _IMPORT_PATHS[f'{cls.__module__}.{cls.__qualname__}'] = name
    return cls


def register_importer(layout: str) -> Callable[[Importer], Importer]:
    """Decorator: a function mapping a foreign checkpoint layout's state dict to our keys."""

    def wrap(fn: Importer) -> Importer:
        _IMPORTERS[layout] = fn
        return fn

    return wrap


def model_packages() -> list[str]:
    """Every architecture package: a sub-package of ``strhub.models`` with a ``system`` module."""
    root = importlib.import_module(MODELS_PACKAGE)
    return sorted(
        info.name
        for info in pkgutil.iter_modules(root.__path__, f'{MODELS_PACKAGE}.')
        if info.ispkg and importlib.util.find_spec(f'{info.name}.system') is not None
    )


def _import_model_packages() -> None:
    # Importing a package's system module registers its system classes and checkpoint importers.
    for package in model_packages():
        importlib.import_module(f'{package}.system')


def registered_systems() -> dict[str, type]:
    """Every registered system class by its registered name, from every model package (discovered)."""
    _import_model_packages()
    return dict(sorted(_SYSTEMS.items()))


def system_class(name: str) -> type:
    """The registered system class for a name stored in a checkpoint: a registered name (``parseq``) or, in
    checkpoints written before those existed, the class's import path."""
    _import_model_packages()
    name = _IMPORT_PATHS.get(name, name)
    if name not in _SYSTEMS:
        raise KeyError(f'{name!r} is not a registered strhub system; known: {sorted(_SYSTEMS)}')
    return _SYSTEMS[name]


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


@register_importer('strhub_system')
def import_system_state(state: StateDict) -> StateDict:
    """Release files that hold a whole reference LightningModule already use our keys (``model.*``)."""
    return dict(state)


RELEASE = 'https://github.com/baudm/parseq/releases/download/v1.0.0'
# name -> (release file, config, layout). Every published file was trained on the 94-character charset.
_RELEASE_FILES = {
    'parseq': ('parseq-bb5792a6.pt', 'parseq', 'parseq_release'),
    'parseq-tiny': ('parseq_tiny-e7a21b54.pt', 'parseq-tiny', 'parseq_release'),
    'parseq-patch16-224': ('parseq_small_patch16_224-fcf06f5a.pt', 'parseq-patch16-224', 'parseq_release'),
    'abinet': ('abinet-1d1e373e.pt', 'abinet', 'strhub_system'),
    'trba': ('trba-cfaed284.pt', 'trba', 'strhub_system'),
    'vitstr': ('vitstr-26d0fcf4.pt', 'vitstr', 'strhub_system'),
    'crnn': ('crnn-679d0e31.pt', 'crnn', 'strhub_system'),
}
PRETRAINED: dict[str, PretrainedWeights] = {
    name: PretrainedWeights(f'{RELEASE}/{file}', config, layout, ('charset=94_full',))
    for name, (file, config, layout) in _RELEASE_FILES.items()
}
# The release files' own names are accepted too.
PRETRAINED['parseq_tiny'] = PRETRAINED['parseq-tiny']
PRETRAINED['parseq_small_patch16_224'] = PRETRAINED['parseq-patch16-224']
