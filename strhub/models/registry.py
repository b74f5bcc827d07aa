"""Name -> model: which system class a name builds, which config composes it, how foreign weights map in.

Model names are the configs under ``configs/model`` and ``configs/experiment`` that define a ``model.name``.
Everything else a model package knows about weights published elsewhere it declares here, by decorators in its
modules, and the registry collects them by discovery (importing every package's ``system`` and ``published``
modules), as it does for systems:

- :func:`register_system`: a system class under a stable name, stored in checkpoints; only registered classes are
  ever built from a checkpoint, so a file cannot make us import arbitrary code.
- :func:`register_layout`: a foreign state-dict layout the package imports (a converter to our keys, and a detector
  that recognises the layout from the keys, so ``pretrained=<file>`` needs no layout name).
- :func:`register_release`: a published weight file by name (``pretrained=parseq``).
- :func:`register_hub_architecture`: the Hugging Face ``model_type`` whose repositories the package builds
  (``pretrained=alibaba-damo/mgp-str-base``), and the repository names it knows to work.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
Importer = Callable[[StateDict], StateDict]
Detector = Callable[[Mapping[str, Any]], bool]

_SYSTEMS: dict[str, type] = {}
# Checkpoints written before systems had stable names store the class's import path; they still load.
_IMPORT_PATHS: dict[str, str] = {}
_LAYOUTS: dict[str, Layout] = {}
_HUB_ARCHITECTURES: dict[str, HubArchitecture] = {}

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


@dataclass(frozen=True)
class Layout:
    """A foreign state-dict layout a model package imports.

    Attributes:
        name: the layout's name (``trocr_hf``, ``mgpstr_original`` ...).
        convert: maps a state dict of this layout to our keys (``model.*``); raises ValueError naming the keys it
            does not know.
        detect: whether a state dict is of this layout, from its keys; None for layouts only chosen by name (release
            files whose names say their layout).
        package: the model package that declared it (``strhub.models.trocr``).
    """

    name: str
    convert: Importer
    detect: Detector | None
    package: str


def package_of(module: str) -> str:
    """``strhub.models.trocr.convert`` -> ``strhub.models.trocr``; modules outside a model package -> ''."""
    parts = module.split('.')
    prefix = MODELS_PACKAGE.split('.')
    return '.'.join(parts[: len(prefix) + 1]) if parts[: len(prefix)] == prefix and len(parts) > len(prefix) + 1 else ''


def register_layout(name: str, detect: Detector | None = None) -> Callable[[Importer], Importer]:
    """Decorator: a function mapping the state dict of foreign layout ``name`` to our keys, and optionally the
    detector that recognises that layout from a state dict's keys (see :class:`Layout`)."""

    def wrap(fn: Importer) -> Importer:
        if name in _LAYOUTS and _LAYOUTS[name].convert is not fn:
            raise ValueError(f'two converters register the layout {name!r}')
        _LAYOUTS[name] = Layout(name, fn, detect, package_of(fn.__module__))
        return fn

    return wrap


def layouts() -> dict[str, Layout]:
    """Every registered layout by name, from every model package (discovered)."""
    _import_model_packages()
    return dict(sorted(_LAYOUTS.items()))


def detect_layout(state: Mapping[str, Any], packages: Collection[str] | None = None) -> str | None:
    """The name of the registered layout a state dict is in (its detector matches), or None; with ``packages``, only
    the layouts of those model packages are considered."""
    for layout in layouts().values():
        if layout.detect is not None and (packages is None or layout.package in packages) and layout.detect(state):
            return layout.name
    return None


def importer(layout: str) -> Importer:
    """The converter of a registered layout."""
    known = layouts()
    if layout not in known:
        raise KeyError(f'no checkpoint importer for layout {layout!r}; known: {sorted(known)}')
    return known[layout].convert


def model_packages() -> list[str]:
    """Every architecture package: a sub-package of ``strhub.models`` with a ``system`` module."""
    root = importlib.import_module(MODELS_PACKAGE)
    return sorted(
        info.name
        for info in pkgutil.iter_modules(root.__path__, f'{MODELS_PACKAGE}.')
        if info.ispkg and importlib.util.find_spec(f'{info.name}.system') is not None
    )


def _import_model_packages() -> None:
    # Importing a package's system module registers its system classes; its optional published module registers
    # the layouts, release files and Hub architectures it declares.
    for package in model_packages():
        importlib.import_module(f'{package}.system')
        if importlib.util.find_spec(f'{package}.published') is not None:
            importlib.import_module(f'{package}.published')


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


@register_layout('strhub_system')
def import_system_state(state: StateDict) -> StateDict:
    """Release files that hold a whole reference LightningModule already use our keys (``model.*``)."""
    return dict(state)


_RELEASES: dict[str, PretrainedWeights] = {}


def register_release(
    name: str, url: str, config: str, layout: str, overrides: tuple[str, ...] = (), aliases: tuple[str, ...] = ()
) -> None:
    """Declares a published weight file: ``pretrained=<name>`` (or an alias) downloads ``url`` and loads it into
    model configuration ``config`` through ``layout``."""
    weights = PretrainedWeights(url, config, layout, tuple(overrides))
    for key in (name, *aliases):
        if key in _RELEASES and _RELEASES[key] != weights:
            raise ValueError(f'two release files register the name {key!r}')
        _RELEASES[key] = weights


def releases() -> dict[str, PretrainedWeights]:
    """Every published weight file by name (aliases included), from every model package."""
    _import_model_packages()
    return dict(sorted(_RELEASES.items()))


@dataclass(frozen=True)
class HubModel:
    """What a model package makes of a Hugging Face repository: the ``model`` config section that builds the
    architecture (with its tokenizer and preprocessing), and a function reading the weights in our keys (called only
    when the weights are needed: training builds the model from the config first)."""

    config: dict[str, Any]
    read_state: Callable[[], StateDict]
    # The config entries the repository fixes; the rest are the family's training defaults, which a run's own model
    # config of the same family (an experiment's learning rate, batch size ...) keeps when fine-tuning.
    fixed: tuple[str, ...] = (
        'name',
        'img_size',
        'max_label_length',
        'charset_train',
        'charset_test',
        'arch',
        'tokenizer',
        'bpe',
        'wordpiece',
        'preprocess',
    )


@dataclass(frozen=True)
class HubArchitecture:
    """A Hugging Face ``model_type`` a package builds.

    Attributes:
        model_type: the ``model_type`` of the repository's config.json; an encoder-decoder is named
            ``<model_type>/<decoder model_type>`` (``vision-encoder-decoder/trocr``).
        build: (local repository directory, its parsed config.json) -> :class:`HubModel`.
        names: repository ids known to work, with a one-line description (for documentation and ``hub_names``).
        package: the model package that declared it.
    """

    model_type: str
    build: Callable[[Path, dict[str, Any]], HubModel]
    names: Mapping[str, str]
    package: str


def register_hub_architecture(
    model_type: str, names: Mapping[str, str] = ()
) -> Callable[[Callable[[Path, dict[str, Any]], HubModel]], Callable[[Path, dict[str, Any]], HubModel]]:
    """Decorator: the function that builds a :class:`HubModel` from a local Hugging Face repository directory whose
    config.json has this ``model_type`` (see :class:`HubArchitecture`)."""

    def wrap(fn):
        if model_type in _HUB_ARCHITECTURES and _HUB_ARCHITECTURES[model_type].build is not fn:
            raise ValueError(f'two packages register the Hugging Face model_type {model_type!r}')
        _HUB_ARCHITECTURES[model_type] = HubArchitecture(model_type, fn, dict(names), package_of(fn.__module__))
        return fn

    return wrap


def hub_architectures() -> dict[str, HubArchitecture]:
    """Every Hugging Face ``model_type`` a model package builds, by that type."""
    _import_model_packages()
    return dict(sorted(_HUB_ARCHITECTURES.items()))


def published_hub_names() -> dict[str, str]:
    """Hugging Face repository ids known to work -> their description."""
    return {name: text for arch in hub_architectures().values() for name, text in arch.names.items()}


RELEASE = 'https://github.com/baudm/parseq/releases/download/v1.0.0'
