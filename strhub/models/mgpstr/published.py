"""Published MGP-STR weights: the checkpoint layouts mapped to our parameter names, and Hugging Face repositories
(``pretrained=alibaba-damo/mgp-str-base``).

- ``mgpstr_hf``: Hugging Face ``MgpstrForSceneTextRecognition`` (``mgp_str.embeddings.*``,
  ``mgp_str.encoder.blocks.*``, ``{char,bpe,wp}_a3_module.*``, ``{char,bpe,wp}_head.*``).
- ``mgpstr_original``: the authors' release files (a timm ``VisionTransformer`` under ``module.mgp_str.``, A³
  modules ``{char,bpe,wp}_tokenLearner``; its final ``norm`` and ImageNet ``head`` are never used and are dropped).

Both store the A³ convolutions as 1×1 ``Conv2d`` kernels ``(out, in / groups, 1, 1)``; ours drop the two unit
dimensions (see :class:`strhub.models.mgpstr.model.GroupedPointwise`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strhub.models.huggingface import HubError, download_file, image_preprocessing, read_weights, repo_name
from strhub.models.registry import HubModel, StateDict, register_hub_architecture, register_layout

HF_LAYOUT = 'mgpstr_hf'
ORIGINAL_LAYOUT = 'mgpstr_original'

_HEAD_NAMES = {'char': 'char', 'bpe': 'bpe', 'wp': 'wordpiece'}
_A3_PARTS = {
    'token_norm': 'token_norm',
    'tokenLearner.0': 'select.0',
    'tokenLearner.1': 'select.1',
    'feat': 'feat',
    'norm': 'norm',
}
# Keys of the original release that our model has no use for.
_ORIGINAL_UNUSED = re.compile(r'^(norm|head)\.(weight|bias)$')


def _a3_key(head: str, rest: str) -> str:
    for theirs, ours in _A3_PARTS.items():
        if rest.startswith(theirs + '.'):
            return f'model.a3.{_HEAD_NAMES[head]}.{ours}{rest[len(theirs) :]}'
    raise KeyError(rest)


def _convert(state: Mapping, rename, layout: str) -> StateDict:
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        try:
            ours = rename(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is None:
            continue
        if value.dim() == 4 and ('.select.' in ours or ours.endswith('.feat.weight')):
            value = value.flatten(1)  # 1×1 convolution kernel (out, in / groups, 1, 1) -> (out, in / groups)
        out[ours] = value
    if unknown:
        raise ValueError(
            f'{len(unknown)} key(s) do not belong to the {layout} MGP-STR layout (e.g. {unknown[:5]}); is this a '
            f'checkpoint of another model or layout? Known layouts: {HF_LAYOUT}, {ORIGINAL_LAYOUT}'
        )
    return out


def _rename_hf(key: str) -> str | None:
    if key.startswith('mgp_str.embeddings.'):
        rest = key[len('mgp_str.embeddings.') :]
        if rest.startswith('proj.'):
            return 'model.patch_embed.' + rest
        if rest in ('cls_token', 'pos_embed'):
            return 'model.' + rest
        raise KeyError(key)
    if key.startswith('mgp_str.encoder.blocks.'):
        return 'model.' + key[len('mgp_str.encoder.') :]
    return _head_key(key, 'a3_module')


def _head_key(key: str, a3_name: str) -> str:
    """Our key for ``<char|bpe|wp>_<a3_name|head>.<rest>``: a classifier or an A³ module (``a3_name`` is what the
    layout calls the A³ modules)."""
    match = re.match(rf'^(char|bpe|wp)_({a3_name}|head)\.(.+)$', key)
    if match is None:
        raise KeyError(key)
    head, part, rest = match.groups()
    if part == 'head':
        return f'model.heads.{_HEAD_NAMES[head]}.{rest}'
    return _a3_key(head, rest)


def _rename_original(key: str) -> str | None:
    for prefix in ('module.', 'mgp_str.'):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    if _ORIGINAL_UNUSED.match(key):
        return None
    if key.startswith(('patch_embed.proj.', 'blocks.')) or key in ('cls_token', 'pos_embed'):
        return 'model.' + key
    return _head_key(key, 'tokenLearner')


def _is_hf(state: Mapping) -> bool:
    return any(k.startswith('mgp_str.embeddings.') or '_a3_module.' in k for k in state)


def _is_original(state: Mapping) -> bool:
    return any('_tokenLearner.' in k for k in state)


@register_layout(HF_LAYOUT, detect=_is_hf)
def import_hf_state(state: StateDict) -> StateDict:
    """A Hugging Face ``MgpstrForSceneTextRecognition`` state dict in our keys."""
    return _convert(state, _rename_hf, HF_LAYOUT)


@register_layout(ORIGINAL_LAYOUT, detect=_is_original)
def import_original_state(state: StateDict) -> StateDict:
    """An original MGP-STR release state dict (``module.mgp_str.*``, ``*_tokenLearner``) in our keys."""
    return _convert(state, _rename_original, ORIGINAL_LAYOUT)


# -- Hugging Face repositories ------------------------------------------------------------------------------------

# The published processor (MgpstrProcessor) reads its sub-word vocabularies from these repositories, not from the
# model's own: GPT-2's byte-level BPE and BERT's uncased WordPiece.
BPE_REPO, BPE_FILES = 'openai-community/gpt2', ('vocab.json', 'merges.txt')
WORDPIECE_REPO, WORDPIECE_FILES = 'google-bert/bert-base-uncased', ('vocab.txt',)
CHAR_SPECIALS = ('[GO]', '[s]')


def _char_vocabulary(directory: Path) -> str:
    """The character head's charset from the repository's ``vocab.json`` (``[GO]``, ``[s]``, then one entry per
    character, in id order)."""
    path = directory / 'vocab.json'
    if not path.is_file():
        raise HubError(f'{directory} has no vocab.json (the character vocabulary of MgpstrTokenizer)')
    vocab = json.loads(path.read_text(encoding='utf-8'))
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if tuple(tokens[:2]) != CHAR_SPECIALS or any(len(t) != 1 for t in tokens[2:]):
        raise HubError(f'{path}: expected [GO], [s], then single characters; got {tokens[:5]} ...')
    return ''.join(tokens[2:])


@register_hub_architecture(
    'mgp-str',
    names={'alibaba-damo/mgp-str-base': 'MGP-STR-Base (ViT-B, 148M): MJSynth + SynthText, 36 lower-case characters'},
)
def from_hub(directory: Path, config: dict[str, Any]) -> HubModel:
    """An ``MgpstrForSceneTextRecognition`` repository: sizes from its config.json, the character vocabulary from its
    vocab.json, the BPE / WordPiece vocabularies from the GPT-2 and BERT repositories its processor uses."""
    from strhub.config import model_config

    if config.get('distilled'):
        raise HubError(f'{directory}: distilled MGP-STR encoders (a distillation token) are not supported')
    charset = _char_vocabulary(directory)
    if len(charset) + 2 != config.get('num_character_labels', len(charset) + 2):
        raise HubError(
            f"{directory}: vocab.json has {len(charset) + 2} entries but config.json's num_character_labels is "
            f'{config["num_character_labels"]}'
        )
    img_size, preprocess = image_preprocessing(directory, config.get('image_size', [32, 128]))
    patch = config.get('patch_size', 4)
    hidden = int(config['hidden_size'])
    bpe = [download_file(BPE_REPO, name) for name in BPE_FILES]
    wordpiece = [download_file(WORDPIECE_REPO, name) for name in WORDPIECE_FILES]
    cfg = model_config('mgp-str')
    cfg.update(
        name=repo_name(directory),
        charset_train=charset,
        charset_test=charset,
        img_size=img_size,
        max_label_length=int(config.get('max_token_length', 27)) - 2,
    )
    cfg['arch'].update(
        patch_size=list(patch) if isinstance(patch, list) else [patch, patch],
        embed_dim=hidden,
        depth=int(config['num_hidden_layers']),
        num_heads=int(config['num_attention_heads']),
        mlp_ratio=float(config.get('mlp_ratio', 4.0)),
        qkv_bias=bool(config.get('qkv_bias', True)),
        norm_eps=float(config.get('layer_norm_eps', 1e-5)),
        drop_path_rate=float(config.get('drop_path_rate', 0.0)),
    )
    cfg['bpe'] = {'source': 'files', 'files': [str(p) for p in bpe], 'size': int(config['num_bpe_labels'])}
    cfg['wordpiece'] = {
        'source': 'files',
        'files': [str(p) for p in wordpiece],
        'size': int(config['num_wordpiece_labels']),
    }
    cfg['preprocess'] = {**dict(cfg.get('preprocess') or {}), **preprocess}
    return HubModel(cfg, lambda: import_hf_state(read_weights(directory)))
