"""Composing the packaged Hydra configs from Python (scripts and tests use the same functions)."""

from __future__ import annotations

import difflib
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


def _group_names() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())


def _unknown_group_option(key: str, value: str) -> str | None:
    if not value or value in _names(key):
        return None
    close = difflib.get_close_matches(value, _names(key), n=3, cutoff=0.5)
    return f"'{key}={value}' is not a config of the {key} group; did you mean {' or '.join(close)}?" if close else None


def _unknown_key(key: str, others: Sequence[str], config_name: str) -> str | None:
    try:
        cfg = compose_config(others, config_name)
    except Exception:  # noqa: BLE001 - another override is the broken one
        return None
    if OmegaConf.select(cfg, key, default=None) is not None or '.' not in key:
        return None
    parent_key, _ = key.rsplit('.', 1)
    parent = OmegaConf.select(cfg, parent_key, default=None)
    if not isinstance(parent, DictConfig):
        return None
    close = difflib.get_close_matches(key, [f'{parent_key}.{name}' for name in parent.keys()], n=1, cutoff=0.6)
    return f"'{key}' is not a config key; did you mean {close[0]}? (a new key needs a leading +)" if close else None


def override_hint(overrides: Sequence[str], config_name: str = 'main') -> str | None:
    """For overrides that Hydra refused, a line naming the nearest valid key or option (``model.batchsize=8`` ->
    ``model.batch_size``; ``+experiment=parseq-tinyy`` -> ``parseq-tiny``), or None when there is nothing to add."""
    groups = _group_names()
    for override in overrides:
        key, _, value = override.partition('=')
        bare = key.lstrip('+~')
        if bare in groups:
            hint = _unknown_group_option(bare, value)
        elif key.startswith(('+', '~')):
            continue  # a new key, or a deletion: nothing to compare with
        else:
            hint = _unknown_key(bare, [o for o in overrides if o != override], config_name)
        if hint:
            return hint
    return None
