"""Published GOT-OCR2 weights: Hugging Face ``GotOcr2ForConditionalGeneration`` (current ``model.*`` and legacy
``vision_tower.*`` / ``language_model.*`` layouts) and the original ``stepfun-ai/GOT-OCR2_0`` release, mapped to our
keys, and Hugging Face repositories (``pretrained=stepfun-ai/GOT-OCR-2.0-hf``).

Our system's keys are Hugging Face's current ones (``model.vision_tower.*``, ``model.multi_modal_projector.*``,
``model.language_model.*``); the output head is tied to the token embedding, so ``lm_head.weight`` is dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from strhub.models.huggingface import HubError, image_preprocessing, read_weights, repo_name
from strhub.models.registry import (
    HubModel,
    StateDict,
    detect_layout,
    importer,
    register_hub_architecture,
    register_layout,
)

log = logging.getLogger(__name__)

HEAD_KEYS = ('lm_head.weight', 'language_model.lm_head.weight')
EMBED_KEY = 'model.language_model.embed_tokens.weight'

_ORIGINAL_RULES: tuple[tuple[str, str], ...] = (
    (r'^model\.vision_tower_high\.patch_embed\.proj\.', 'model.vision_tower.patch_embed.projection.'),
    (r'^model\.vision_tower_high\.pos_embed$', 'model.vision_tower.pos_embed'),
    (r'^model\.vision_tower_high\.blocks\.(\d+)\.norm(\d)\.', r'model.vision_tower.layers.\1.layer_norm\2.'),
    (r'^model\.vision_tower_high\.blocks\.(\d+)\.(attn|mlp)\.', r'model.vision_tower.layers.\1.\2.'),
    (r'^model\.vision_tower_high\.neck\.0\.', 'model.vision_tower.neck.conv1.'),
    (r'^model\.vision_tower_high\.neck\.1\.', 'model.vision_tower.neck.layer_norm1.'),
    (r'^model\.vision_tower_high\.neck\.2\.', 'model.vision_tower.neck.conv2.'),
    (r'^model\.vision_tower_high\.neck\.3\.', 'model.vision_tower.neck.layer_norm2.'),
    (r'^model\.vision_tower_high\.net_2\.', 'model.multi_modal_projector.conv_upsampler1.'),
    (r'^model\.vision_tower_high\.net_3\.', 'model.multi_modal_projector.conv_upsampler2.'),
    (r'^model\.mm_projector_vary\.', 'model.multi_modal_projector.multimodal_projector.'),
    (r'^model\.(embed_tokens|layers|norm)\.', r'model.language_model.\1.'),
)
_LEGACY_RULES: tuple[tuple[str, str], ...] = (
    (r'^vision_tower\.', 'model.vision_tower.'),
    (r'^multi_modal_projector\.', 'model.multi_modal_projector.'),
    (r'^language_model\.model\.', 'model.language_model.'),
)
_CURRENT_RULES: tuple[tuple[str, str], ...] = (
    (r'^model\.(vision_tower|multi_modal_projector|language_model)\.', r'model.\1.'),
)


def _rename(state: StateDict, rules: Sequence[tuple[str, str]], layout: str) -> StateDict:
    head = next((state[k] for k in HEAD_KEYS if k in state), None)
    out, unknown = {}, []
    for key, value in state.items():
        if key in HEAD_KEYS:
            continue
        for pattern, replacement in rules:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'{len(unknown)} key(s) do not belong to the {layout} layout of GOT-OCR2: {unknown[:5]}')
    embed = out.get(EMBED_KEY)
    if head is not None and embed is not None and not head.is_meta and not torch.equal(head, embed):
        log.warning('lm_head.weight differs from the token embedding; our model ties them, so it is ignored')
    return out


def _is_original(state: StateDict) -> bool:
    return any(k.startswith('model.vision_tower_high.') for k in state)


def _is_legacy(state: StateDict) -> bool:
    return any(k.startswith('language_model.model.') for k in state) and not _is_original(state)


def _is_hf(state: StateDict) -> bool:
    return any(k.startswith('model.language_model.') for k in state) and not _is_original(state)


@register_layout('got_ocr2_hf', detect=_is_hf)
def import_hf(state: StateDict) -> StateDict:
    """Hugging Face ``GotOcr2ForConditionalGeneration`` (transformers >= 4.52: ``model.*`` and ``lm_head``)."""
    return _rename(state, _CURRENT_RULES, 'current Hugging Face')


@register_layout('got_ocr2_hf_legacy', detect=_is_legacy)
def import_hf_legacy(state: StateDict) -> StateDict:
    """Hugging Face files written before the ``model.`` prefix (``vision_tower.*``, ``language_model.model.*``)."""
    return _rename(state, _LEGACY_RULES, 'legacy Hugging Face')


@register_layout('got_ocr2_original', detect=_is_original)
def import_original(state: StateDict) -> StateDict:
    """The original ``stepfun-ai/GOT-OCR2_0`` release (``model.vision_tower_high.*``, ``model.layers.*``)."""
    return _rename(state, _ORIGINAL_RULES, 'original stepfun-ai')


# -- Hugging Face repositories ------------------------------------------------------------------------------------

# Hugging Face config.json fields -> our model.arch keys (missing fields keep the published model's values).
_VISION_FIELDS = {
    'patch_size': 'patch_size',
    'hidden_size': 'vision_width',
    'num_hidden_layers': 'vision_depth',
    'num_attention_heads': 'vision_heads',
    'mlp_dim': 'vision_mlp_dim',
    'output_channels': 'vision_out_channels',
    'window_size': 'window',
    'global_attn_indexes': 'global_layers',
    'layer_norm_eps': 'vision_eps',
}
_TEXT_FIELDS = {
    'vocab_size': 'vocab_size',
    'hidden_size': 'text_width',
    'num_hidden_layers': 'text_depth',
    'num_attention_heads': 'text_heads',
    'num_key_value_heads': 'text_kv_heads',
    'intermediate_size': 'text_mlp_dim',
    'rope_theta': 'rope_theta',
    'rms_norm_eps': 'rms_eps',
}


@register_hub_architecture(
    'got_ocr2',
    names={
        'stepfun-ai/GOT-OCR-2.0-hf': 'GOT-OCR2 (SAM ViTDet-B + Qwen2-0.5B, 560M): general OCR of words to whole '
        'pages, plain or formatted output',
    },
)
def from_hub(directory: Path, config: dict[str, Any]) -> HubModel:
    """A ``GotOcr2ForConditionalGeneration`` repository: sizes from its config.json, the tokenizer.json beside it,
    preprocessing from its preprocessor_config.json."""
    from strhub.config import model_config
    from strhub.models.gotocr2.tokenizer import GotOcr2Tokenizer

    vision, text = config.get('vision_config') or {}, config.get('text_config') or {}
    if text.get('model_type', 'qwen2') != 'qwen2':
        raise HubError(f'{directory}: a {text["model_type"]!r} language model is not supported (GOT-OCR2 uses qwen2)')
    tokenizer = directory / 'tokenizer.json'
    if not tokenizer.is_file():
        raise HubError(f'{directory} has no tokenizer.json (the Qwen2 tokenizer of GOT-OCR2)')
    image_token = GotOcr2Tokenizer.from_file(str(tokenizer)).image_token_id
    if config.get('image_token_index', image_token) != image_token:
        raise HubError(
            f"{directory}: config.json's image_token_index {config['image_token_index']} is not the tokenizer's "
            f'<imgpad> ({image_token})'
        )
    cfg = model_config('got-ocr2')
    img_size, preprocess = image_preprocessing(directory, [int(vision.get('image_size', cfg['img_size'][0]))] * 2)
    cfg.update(name=repo_name(directory), img_size=img_size, tokenizer=str(tokenizer))
    cfg['arch'].update({ours: vision[theirs] for theirs, ours in _VISION_FIELDS.items() if theirs in vision})
    cfg['arch'].update({ours: text[theirs] for theirs, ours in _TEXT_FIELDS.items() if theirs in text})
    rope = text.get('rope_parameters') or text.get('rope_scaling') or {}  # transformers >= 5 nests rope_theta here
    if rope.get('rope_type', 'default') != 'default':
        raise HubError(f'{directory}: {rope["rope_type"]!r} rotary scaling is not supported (GOT-OCR2 uses none)')
    if 'rope_theta' in rope:
        cfg['arch']['rope_theta'] = rope['rope_theta']
    cfg['preprocess'] = {**dict(cfg.get('preprocess') or {}), **preprocess}
    return HubModel(cfg, lambda: import_state(read_weights(directory)))


def import_state(state: StateDict) -> StateDict:
    """Any supported GOT-OCR2 layout (recognised from the keys) -> our keys."""
    layout = detect_layout(state, packages={__package__})
    if layout is None:
        raise ValueError(f'not a GOT-OCR2 checkpoint (first keys: {list(state)[:5]})')
    return importer(layout)(state)
