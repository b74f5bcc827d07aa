"""Models by their Hugging Face Hub names: ``pretrained=alibaba-damo/mgp-str-base``, ``microsoft/trocr-base-str``,
``stepfun-ai/GOT-OCR-2.0-hf`` (optionally ``@<revision>``), or a local directory in the Hub layout.

A Hub id is fetched with ``huggingface_hub``, so its conventions hold: the files are cached under ``HF_HOME`` /
``HF_HUB_CACHE`` (``~/.cache/huggingface/hub``), ``HF_HUB_OFFLINE=1`` reads the cache only, and a token from
``huggingface-cli login`` or ``HF_TOKEN`` opens gated repositories. The repository's ``config.json`` says which
architecture it is (its ``model_type``); the model package registered for that type
(:func:`strhub.models.registry.register_hub_architecture`) turns the directory into a model config (sizes, image
size, tokenizer, preprocessing, all read from the repository's own files) and a state dict in our keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from strhub.models import registry

log = logging.getLogger(__name__)

HUB_ID = re.compile(r'^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$')
CONFIG = 'config.json'
CHECKPOINT_SUFFIXES = ('.ckpt', '.pt', '.pth', '.bin', '.safetensors')  # a path with these names a file
PREPROCESSOR = 'preprocessor_config.json'
# Files a model needs besides its weights: configs, tokenizer and vocabulary files (never the README or images).
METADATA_PATTERNS = ['*.json', '*.txt', '*.model']
WEIGHT_PATTERNS = ['*.safetensors', 'pytorch_model*.bin']
# PIL resampling codes, as Hugging Face image processors store them.
RESAMPLE = {0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming'}


class HubError(ValueError):
    """A Hub name that cannot be used: not found, not cached offline, a missing file, an unsupported model."""


def is_hub_spec(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a Hugging Face repository (``owner/name[@revision]``) or a local directory in the Hub
    layout (a ``config.json`` with the weights beside it)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / CONFIG).is_file()
    if path.exists() or '://' in spec or path.suffix in CHECKPOINT_SUFFIXES:
        return False
    return HUB_ID.match(spec) is not None


def _hub_failure(repo: str, revision: str | None, error: Exception) -> HubError:
    """One line saying what went wrong with a Hub download and what to do."""
    from huggingface_hub import errors

    name = f'{repo}@{revision}' if revision else repo
    if isinstance(error, errors.GatedRepoError):
        return HubError(f'{name} is gated: accept its terms on huggingface.co, then log in (hf auth login or HF_TOKEN)')
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(
            f'{name} is neither a local path nor a repository on the Hugging Face Hub (if it is private, log in '
            'with hf auth login)'
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f'{repo} has no revision {revision!r}; use a branch, tag or commit of the repository')
    if isinstance(error, errors.LocalEntryNotFoundError):
        offline = os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on')
        why = 'HF_HUB_OFFLINE is set' if offline else 'the Hub cannot be reached'
        return HubError(
            f'{name} is not in the Hugging Face cache ({_cache_dir()}) and {why}; download it once with a network '
            '(or copy the repository directory here and pass its path)'
        )
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f'could not download {name} from the Hugging Face Hub: {str(error).splitlines()[0]}')
    return HubError(f'could not download {name} from the Hugging Face Hub ({type(error).__name__}: {error})')


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def download_repo(repo: str, revision: str | None = None, patterns: Sequence[str] | None = None) -> Path:
    """The local snapshot of Hub repository ``repo`` (files matching ``patterns`` only), downloaded on first use."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=list(patterns) if patterns else None))
    except Exception as e:  # noqa: BLE001 - huggingface_hub and httpx raise many types; each becomes one line
        raise _hub_failure(repo, revision, e) from e


def download_file(repo: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub repository (e.g. another model's vocabulary), downloaded on first use."""
    from huggingface_hub import errors, hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except errors.EntryNotFoundError as e:
        if isinstance(e, errors.LocalEntryNotFoundError):
            raise _hub_failure(repo, revision, e) from e
        raise HubError(f'{repo} has no file {filename}') from e
    except Exception as e:  # noqa: BLE001
        raise _hub_failure(repo, revision, e) from e


def resolve_repo(spec: str | os.PathLike) -> Path:
    """A local directory holding the repository named by ``spec`` (a Hub id, fetched, or a local directory)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    match = HUB_ID.match(spec)
    if match is None:
        raise HubError(f'{spec!r} is neither a local directory nor a Hugging Face repository id (owner/name[@rev])')
    repo, revision = match['repo'], match['revision']
    directory = download_repo(repo, revision, METADATA_PATTERNS)
    if not (directory / CONFIG).is_file():
        raise HubError(f'{spec} has no {CONFIG}: it is not a transformers model repository')
    if not _weight_files(directory):
        directory = download_repo(repo, revision, [*METADATA_PATTERNS, *WEIGHT_PATTERNS])
    return directory


def repo_name(directory: Path) -> str:
    """The model's name from its directory: ``mgp-str-base`` for a Hub snapshot of ``alibaba-damo/mgp-str-base``
    (``.../models--alibaba-damo--mgp-str-base/snapshots/<commit>``), else the directory's own name."""
    if directory.parent.name == 'snapshots' and directory.parent.parent.name.startswith('models--'):
        return directory.parent.parent.name.split('--')[-1]
    return directory.resolve().name


def read_config(directory: Path, name: str = CONFIG) -> dict[str, Any]:
    path = directory / name
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise HubError(f'{path} is not valid JSON ({e})') from e


def architecture_key(config: Mapping[str, Any]) -> str:
    """The registry key of a config.json: its ``model_type``, and for an encoder-decoder ``<type>/<decoder type>``."""
    model_type = str(config.get('model_type', ''))
    if model_type == 'vision-encoder-decoder':
        return f'{model_type}/{(config.get("decoder") or {}).get("model_type", "")}'
    return model_type


def _weight_files(directory: Path) -> list[Path]:
    """The weight files of a repository directory: safetensors (sharded or not), else PyTorch ``.bin`` files."""
    for index_name, single in (
        ('model.safetensors.index.json', 'model.safetensors'),
        ('pytorch_model.bin.index.json', 'pytorch_model.bin'),
    ):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())['weight_map'].values()))
            return [directory / shard for shard in shards]
        if (directory / single).is_file():
            return [directory / single]
    return []


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a repository's weights (all shards merged), read without executing code."""
    # Imported here: loading resolves Hub names through this module.
    from strhub.models.loading import read_state_files

    files = _weight_files(directory)
    if not files:
        raise HubError(
            f'{directory} has no model.safetensors or pytorch_model.bin (nor a sharded index of them): no weights'
        )
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise HubError(f'{missing[0]} is listed in the weight index but missing; download the repository again')
    return read_state_files(files)


def image_preprocessing(directory: Path, default_size: Sequence[int]) -> tuple[list[int], dict[str, Any]]:
    """``(img_size, preprocess section)`` from a repository's ``preprocessor_config.json``: input size, resampling
    and normalisation as its image processor applies them (``default_size`` where it gives no size)."""
    config = read_config(directory, PREPROCESSOR)
    size = config.get('size', default_size)
    if isinstance(size, Mapping):
        if 'height' in size and 'width' in size:
            size = [size['height'], size['width']]
        elif 'shortest_edge' in size:
            size = [size['shortest_edge']] * 2
        else:
            raise HubError(f'{directory / PREPROCESSOR}: size {dict(size)} is not a fixed height and width')
    elif isinstance(size, int):
        size = [size, size]
    preprocess: dict[str, Any] = {}
    if 'resample' in config:
        preprocess['interpolation'] = RESAMPLE.get(int(config['resample']), 'bicubic')
    if config.get('do_normalize', True) and 'image_mean' in config:
        preprocess['normalization'] = {'mean': list(config['image_mean']), 'std': list(config['image_std'])}
    elif not config.get('do_normalize', True):
        preprocess['normalization'] = 'zero_one'
    return [int(s) for s in size], preprocess


def hub_model(spec: str | os.PathLike) -> registry.HubModel:
    """The model config and weights (our keys) of a Hub repository or a local directory in its layout."""
    directory = resolve_repo(spec)
    if not (directory / CONFIG).is_file():
        raise HubError(f'{directory} has no {CONFIG}: pass a Hugging Face model repository (or its directory)')
    config = read_config(directory)
    key = architecture_key(config)
    architectures = registry.hub_architectures()
    if key not in architectures:
        raise HubError(
            f'{spec}: model_type {key!r} is not supported; strhub reads Hugging Face models of type '
            f'{", ".join(sorted(architectures))}'
        )
    log.info('%s: %s model from %s', spec, key, directory)
    return architectures[key].build(directory, config)
