"""Composing the packaged Hydra configs from Python (scripts and tests use the same functions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'


def compose_config(overrides: Sequence[str] = (), config_name: str = 'main') -> DictConfig:
    """The composed config for ``overrides`` (Hydra syntax: ``model=parseq``, ``+experiment=x``, ``model.lr=1``)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base='1.3'):
        return compose(config_name=config_name, overrides=list(overrides))


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob('*.yaml'))


def model_names() -> list[str]:
    """Every model configuration name: the model group and the experiments."""
    return sorted(set(_names('model')) | set(_names('experiment')))


def overrides_for_model(name: str) -> list[str]:
    """The config overrides that select model configuration ``name``.

    An experiment of the same name as a model config wins: it is the published recipe (e.g. ``vitstr`` at 32x128
    with 4x8 patches over the 224x224 base model config).
    """
    if name in _names('experiment'):
        return [f'+experiment={name}']
    if name in _names('model'):
        return [f'model={name}']
    raise KeyError(f'unknown model {name!r}; valid names: {model_names()}')


def model_config(name: str, overrides: Sequence[str] = ()) -> dict:
    """The resolved ``model`` section for configuration ``name`` (plus extra overrides)."""
    cfg = compose_config(overrides_for_model(name) + list(overrides))
    return OmegaConf.to_container(cfg.model, resolve=True)
