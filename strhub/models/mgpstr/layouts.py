"""Published MGP-STR checkpoint layouts mapped to our parameter names (registered checkpoint importers).

- ``mgpstr_hf``: Hugging Face ``MgpstrForSceneTextRecognition`` (``mgp_str.embeddings.*``,
  ``mgp_str.encoder.blocks.*``, ``{char,bpe,wp}_a3_module.*``, ``{char,bpe,wp}_head.*``).
- ``mgpstr_original``: the authors' release files (a timm ``VisionTransformer`` under ``module.mgp_str.``, A³
  modules ``{char,bpe,wp}_tokenLearner``; its final ``norm`` and ImageNet ``head`` are never used and are dropped).

Both store the A³ convolutions as 1×1 ``Conv2d`` kernels ``(out, in / groups, 1, 1)``; ours drop the two unit
dimensions (see :class:`strhub.models.mgpstr.model.GroupedPointwise`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from strhub.models.registry import StateDict, register_importer

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
    match = re.match(r'^(char|bpe|wp)_(a3_module|head)\.(.+)$', key)
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
    match = re.match(r'^(char|bpe|wp)_(tokenLearner|head)\.(.+)$', key)
    if match is None:
        raise KeyError(key)
    head, part, rest = match.groups()
    if part == 'head':
        return f'model.heads.{_HEAD_NAMES[head]}.{rest}'
    return _a3_key(head, rest)


@register_importer(HF_LAYOUT)
def import_hf_state(state: StateDict) -> StateDict:
    """A Hugging Face ``MgpstrForSceneTextRecognition`` state dict in our keys."""
    return _convert(state, _rename_hf, HF_LAYOUT)


@register_importer(ORIGINAL_LAYOUT)
def import_original_state(state: StateDict) -> StateDict:
    """An original MGP-STR release state dict (``module.mgp_str.*``, ``*_tokenLearner``) in our keys."""
    return _convert(state, _rename_original, ORIGINAL_LAYOUT)


def detect_layout(state: Mapping) -> str:
    """The layout of a foreign MGP-STR state dict, from its key names."""
    keys = list(state)
    if any(k.startswith('mgp_str.embeddings.') or '_a3_module.' in k for k in keys):
        return HF_LAYOUT
    if any('_tokenLearner.' in k for k in keys):
        return ORIGINAL_LAYOUT
    raise ValueError(
        f'not an MGP-STR checkpoint of a known layout (first keys: {keys[:5]}); expected Hugging Face '
        "'mgp_str.embeddings.*' / '*_a3_module.*' or original '*_tokenLearner.*' keys"
    )


def import_state(state: StateDict) -> StateDict:
    """A published MGP-STR state dict of either layout (recognised from its keys) in our keys."""
    layout = detect_layout(state)
    return (import_hf_state if layout == HF_LAYOUT else import_original_state)(state)
