"""Building systems from configs and checkpoints, and resolving ``pretrained=<name|path|url>``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from strhub.config import model_config
from strhub.models import registry
from strhub.models.base import SYSTEM_KEY, BaseSystem, check_kwargs
from strhub.models.huggingface import hub_model, is_hub_spec

log = logging.getLogger(__name__)

HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,})\.')


def build_system(model_cfg: Mapping[str, Any]) -> BaseSystem:
    """A fresh system from a resolved ``model`` config section (its ``_target_`` names the system class)."""
    cfg = dict(model_cfg)
    target = cfg.pop('_target_', None)
    if target is None:
        raise ValueError('model config has no _target_ (the system class); compose it with model=<name>')
    cls = registry.system_class(target)
    check_kwargs(cls, cfg, 'model config')
    return cls(**cfg)


def download(url: str, check_hash: bool = True) -> Path:
    """Fetches ``url`` (http(s) or file://) into the torch hub cache, verifying the SHA-256 prefix in its name."""
    parsed = urlparse(url)
    filename = os.path.basename(parsed.path)
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True, exist_ok=True)
    dst = cache / filename
    if not dst.exists():
        match = HASH_IN_NAME.search(filename) if check_hash else None
        log.info('downloading %s to %s', url, dst)
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=match.group(1) if match else None, progress=False)
        except OSError as e:
            raise OSError(
                f'could not download {url}: {e}. Without a network, download the file elsewhere and pass '
                'its local path instead'
            ) from e
    return dst


def resolve_checkpoint_path(spec: str | os.PathLike) -> Path:
    """A local path for a checkpoint given as a path, a ``file://`` / ``https://`` URL or a pretrained name."""
    spec = str(spec)
    if '://' in spec:
        return download(spec)
    releases = registry.releases()
    if spec in releases:
        return download(releases[spec].url)
    path = Path(spec).expanduser()
    if path.is_dir():
        # A run directory (or its checkpoints/ folder) stands for its last checkpoint.
        inside = next((p for p in (path / 'checkpoints' / 'last.ckpt', path / 'last.ckpt') if p.is_file()), None)
        if inside is None:
            raise FileNotFoundError(
                f'{spec} is a directory without checkpoints/last.ckpt or last.ckpt; pass a checkpoint file (.ckpt)'
            )
        return inside
    if path.is_file():
        return path
    raise FileNotFoundError(
        f'checkpoint {spec!r} not found: give an existing file, a file:// or https:// URL, a Hugging Face '
        f'repository (owner/name) or a pretrained name ({sorted(releases)})'
    )


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file

        return {'state_dict': load_file(str(path))}
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several unrelated types for a bad file
        if 'Weights only load failed' in str(e):
            reason = (
                'not a PyTorch checkpoint, or one holding Python objects besides tensors and plain data, which are '
                'not loaded because unpickling them could run code'
            )
        else:
            reason = f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}'
        raise ValueError(f'{path} is not a readable checkpoint ({reason})') from e
    if not isinstance(data, dict):
        raise ValueError(f'{path} holds a {type(data).__name__}, not a checkpoint dictionary')
    return data


def _state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return dict(checkpoint.get('state_dict', checkpoint))


def read_state_files(paths: Sequence[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """The merged tensors of one or more weight files (the shards of one download), read without executing code."""
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(_state_dict(read_checkpoint(path)))
    return state


def save_checkpoint(system: BaseSystem, path: str | os.PathLike) -> None:
    """Writes ``system`` as a checkpoint that :func:`load` reads anywhere: its weights, its config and what the
    system adds (its registered name, vocabularies it has loaded)."""
    checkpoint = {'state_dict': system.state_dict(), 'hyper_parameters': dict(system.hparams)}
    system.on_save_checkpoint(checkpoint)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def pretrained_model_config(spec: str | os.PathLike, own: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``model`` config section for fine-tuning published weights that fix their architecture (a Hugging Face
    repository: sizes, tokenizer, preprocessing), or None where the run's own model config applies (our checkpoints,
    weight files). With ``own`` (the run's composed model section) of the same family, only what the repository
    fixes replaces its entries, so an experiment's training settings stay; else the family's defaults come too."""
    if not is_hub_spec(spec):
        return None
    published = hub_model(spec)
    if own is None or own.get('_target_') != published.config.get('_target_'):
        return published.config
    return {**dict(own), **{k: published.config[k] for k in published.fixed if k in published.config}}


def load(spec: str | os.PathLike, device: str | torch.device = 'cpu', **runtime: Any) -> BaseSystem:
    """Loads a trained system for inference (eval mode).

    Args:
        spec: our checkpoint (path, ``file://`` or ``https://`` URL, run directory), a release name from
            :func:`registry.releases`, or a Hugging Face repository (``owner/name[@revision]`` or its local
            directory; see :mod:`strhub.models.huggingface`).
        device: where to put the model.
        runtime: model attributes to set after loading (e.g. ``refine_iters=2, decode_ar=False``).
    """
    spec = str(spec)
    releases = registry.releases()
    if spec in releases:
        weights = releases[spec]
        system = build_system(model_config(weights.config, weights.overrides))
        state = registry.importer(weights.layout)(_state_dict(read_checkpoint(resolve_checkpoint_path(spec))))
        system.load_state_dict(state, strict=True)
    elif is_hub_spec(spec):
        published = hub_model(spec)
        system = build_system(published.config)
        system.load_state_dict(published.read_state(), strict=True)
    else:
        checkpoint = read_checkpoint(resolve_checkpoint_path(spec))
        if SYSTEM_KEY not in checkpoint or 'hyper_parameters' not in checkpoint:
            raise ValueError(
                f'{spec} is not a strhub training checkpoint (no embedded config); for published weights '
                f'use a pretrained name ({sorted(releases)}), a Hugging Face repository, or pretrained=<file> '
                'with a model config'
            )
        system = registry.system_class(checkpoint[SYSTEM_KEY])(**checkpoint['hyper_parameters'])
        system.load_state_dict(checkpoint['state_dict'], strict=True)
    set_runtime_options(system, runtime)
    return system.eval().to(device)


def set_runtime_options(system: BaseSystem, options: Mapping[str, Any]) -> None:
    """Sets inference-time attributes of the model (``refine_iters``, ``decode_ar`` ...), refusing unknown ones."""
    for key, value in options.items():
        if not hasattr(system.model, key):
            valid = sorted(
                k
                for k, v in vars(system.model).items()
                if not k.startswith('_') and isinstance(v, bool | int | float | str)
            )
            raise AttributeError(f'{type(system.model).__name__} has no runtime option {key!r}; valid: {valid}')
        setattr(system.model, key, value)


def load_pretrained_weights(system: BaseSystem, spec: str | os.PathLike) -> None:
    """Initialises ``system`` from other weights for fine-tuning.

    Tensors whose shapes differ (another charset or max label length changes the head, the text embedding and the
    position queries) keep their fresh initialisation, with a log line naming them.
    """
    spec = str(spec)
    releases = registry.releases()
    if is_hub_spec(spec):
        checkpoint, state = {}, hub_model(spec).read_state()
    else:
        checkpoint = read_checkpoint(resolve_checkpoint_path(spec))
        state = _state_dict(checkpoint)
        if spec in releases:
            state = registry.importer(releases[spec].layout)(state)
        else:
            state = system.import_foreign_state(state)
    own = system.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reinitialised = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    if not compatible:
        raise ValueError(
            f'{spec}: none of its {len(state)} tensors fits {type(system.model).__name__}; is it a '
            f'checkpoint of another architecture? (first keys: {list(state)[:5]})'
        )
    if reinitialised:
        log.warning(
            'pretrained %s: re-initialised %d tensor(s) whose shape differs (another charset, max length or size): %s',
            spec,
            len(reinitialised),
            ', '.join(reinitialised),
        )
    if unexpected or missing:
        log.warning(
            'pretrained %s: %d unexpected and %d missing key(s) (e.g. %s)',
            spec,
            len(unexpected),
            len(missing),
            ', '.join((unexpected + missing)[:5]),
        )
    if reinitialised or unexpected or missing:
        hint = _arch_hint(checkpoint, system)
        if hint:
            log.warning('pretrained %s: %s', spec, hint)
    system.load_state_dict(compatible, strict=False)
    log.info("pretrained %s: loaded %d of the model's %d tensors", spec, len(compatible), len(own))


def _arch_hint(checkpoint: Mapping[str, Any], system: BaseSystem) -> str:
    """For a fine-tuning run whose model is not the checkpoint's: the ``model.arch`` overrides that would rebuild the
    checkpoint's architecture (our checkpoints embed their config), or '' when there is no such difference."""
    theirs = (checkpoint.get('hyper_parameters') or {}).get('arch')
    ours = getattr(system.hparams, 'arch', None)
    if not isinstance(theirs, Mapping) or not isinstance(ours, Mapping):
        return ''
    differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if not differ:
        return ''

    def literal(value: Any) -> str:  # as a Hydra override value: lists and dicts without spaces
        return str(value).replace(' ', '')

    overrides = ' '.join(f"'model.arch.{k}={literal(theirs[k])}'" for k in differ if k in theirs)
    this_run = ', '.join(f'{k}={literal(ours.get(k))}' for k in differ)
    return f'the checkpoint was trained with {overrides} (this run: {this_run}); add those to fine-tune it whole'


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
