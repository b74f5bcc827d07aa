"""Importing published TrOCR weights: Hugging Face ``VisionEncoderDecoderModel`` state dicts and the original unilm
(fairseq + timm) checkpoints, mapped to :class:`~strhub.models.trocr.model.TrOCR` keys under ``model.``.

Hugging Face files come in two key layouts: the one the published checkpoints were saved in
(``encoder.encoder.layer.{i}.attention.attention.query`` ...) and the one of recent ``transformers`` releases
(``encoder.layers.{i}.attention.q_proj`` ...); both are accepted. Separate query/key/value projections are fused into
our single projections (``qkv`` for self-attention, ``kv_proj`` for the image keys/values). The unilm encoder already
uses timm names (``encoder.deit.*``, fused ``qkv``) and its decoder fairseq names, which Hugging Face's decoder kept.
"""

from __future__ import annotations

import re

import torch

from strhub.models.registry import StateDict, register_importer

HF_ENCODER = 'encoder.'
HF_DECODER = 'decoder.model.decoder.'
HF_HEAD = 'decoder.output_projection.weight'
UNILM_ENCODER = 'encoder.deit.'
UNILM_DECODER = 'decoder.'
UNILM_HEAD = 'decoder.output_projection.weight'

# Hugging Face encoder names (both layouts) -> timm names, per block.
_HF_BLOCK_RENAMES = {
    'layernorm_before': 'norm1',
    'layernorm_after': 'norm2',
    'attention.o_proj': 'attn.proj',
    'attention.output.dense': 'attn.proj',
    'mlp.fc1': 'mlp.fc1',
    'intermediate.dense': 'mlp.fc1',
    'mlp.fc2': 'mlp.fc2',
    'output.dense': 'mlp.fc2',
}
_HF_QKV = {
    'attention.q_proj': 'q',
    'attention.k_proj': 'k',
    'attention.v_proj': 'v',
    'attention.attention.query': 'q',
    'attention.attention.key': 'k',
    'attention.attention.value': 'v',
}
_HF_EMBEDDINGS = {
    'embeddings.cls_token': 'cls_token',
    'embeddings.distillation_token': 'dist_token',
    'embeddings.position_embeddings': 'pos_embed',
    'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
    'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
    'layernorm.weight': 'norm.weight',
    'layernorm.bias': 'norm.bias',
}
_HF_ENCODER_UNUSED = ('pooler.', 'embeddings.mask_token')
_HF_BLOCK = re.compile(r'^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$')

# fairseq decoder names (Hugging Face's TrOCRDecoder kept them) -> ours, per layer and outside the layers.
_DECODER_LAYER_RENAMES = {
    'self_attn.out_proj': 'self_attn.out_proj',
    'self_attn_layer_norm': 'self_attn_norm',
    'encoder_attn.q_proj': 'cross_attn.q_proj',
    'encoder_attn.out_proj': 'cross_attn.out_proj',
    'encoder_attn_layer_norm': 'cross_attn_norm',
    'fc1': 'fc1',
    'fc2': 'fc2',
    'final_layer_norm': 'final_norm',
}
_DECODER_FUSED = {
    'self_attn.q_proj': ('self_attn.qkv', 0),
    'self_attn.k_proj': ('self_attn.qkv', 1),
    'self_attn.v_proj': ('self_attn.qkv', 2),
    'encoder_attn.k_proj': ('cross_attn.kv_proj', 0),
    'encoder_attn.v_proj': ('cross_attn.kv_proj', 1),
}
_DECODER_RENAMES = {
    'embed_tokens.weight': 'embed_tokens.weight',
    'embed_positions.weight': 'embed_positions.weight',
    'layernorm_embedding.weight': 'embed_norm.weight',
    'layernorm_embedding.bias': 'embed_norm.bias',
}
# Buffers of fairseq modules that carry no weights (sinusoidal positions are recomputed, not loaded).
_DECODER_UNUSED = ('version', 'embed_positions._float_tensor', 'embed_positions.weights')
_DECODER_LAYER = re.compile(r'^layers\.(\d+)\.(.+)\.(weight|bias)$')
_UNILM_ENCODER_KEY = re.compile(
    r'^(cls_token|dist_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|'
    r'blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias))$'
)


class _Fuser:
    """Collects parts of fused projections (q/k/v, k/v) and concatenates them in order."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[int, torch.Tensor]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, key: str, index: int, count: int, tensor: torch.Tensor) -> None:
        self.parts.setdefault(key, {})[index] = tensor
        self.sizes[key] = count

    def tensors(self) -> StateDict:
        fused = {}
        for key, parts in self.parts.items():
            count = self.sizes[key]
            if len(parts) != count and key.endswith('.bias'):
                # A layout with biases on some projections only (q and v, not k): the missing ones are zero.
                like = next(iter(parts.values()))
                parts = {i: parts.get(i, torch.zeros_like(like)) for i in range(count)}
            if len(parts) != count:
                missing = sorted(set(range(count)) - set(parts))
                raise ValueError(f'checkpoint lacks part(s) {missing} of the projection fused into {key}')
            fused[key] = torch.cat([parts[i] for i in range(count)], dim=0)
        return fused


def _split_prefix(state: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _map_hf_encoder(encoder: StateDict, out: StateDict, fuser: _Fuser) -> list[str]:
    unknown = []
    for key, value in encoder.items():
        if key in _HF_EMBEDDINGS:
            out[f'encoder.{_HF_EMBEDDINGS[key]}'] = value
            continue
        if key.startswith(_HF_ENCODER_UNUSED):
            continue
        match = _HF_BLOCK.match(key)
        name = match and match.group(2)
        if match and name in _HF_BLOCK_RENAMES:
            out[f'encoder.blocks.{match.group(1)}.{_HF_BLOCK_RENAMES[name]}.{match.group(3)}'] = value
        elif match and name in _HF_QKV:
            index = 'qkv'.index(_HF_QKV[name])
            fuser.add(f'encoder.blocks.{match.group(1)}.attn.qkv.{match.group(3)}', index, 3, value)
        else:
            unknown.append(HF_ENCODER + key)
    return unknown


def _map_decoder(decoder: StateDict, out: StateDict, fuser: _Fuser, prefix: str) -> list[str]:
    unknown = []
    for key, value in decoder.items():
        if key in _DECODER_RENAMES:
            out[f'decoder.{_DECODER_RENAMES[key]}'] = value
            continue
        if key in _DECODER_UNUSED:
            continue
        match = _DECODER_LAYER.match(key)
        name = match and match.group(2)
        if match and name in _DECODER_LAYER_RENAMES:
            out[f'decoder.layers.{match.group(1)}.{_DECODER_LAYER_RENAMES[name]}.{match.group(3)}'] = value
        elif match and name in _DECODER_FUSED:
            target, index = _DECODER_FUSED[name]
            count = 3 if target.endswith('qkv') else 2
            fuser.add(f'decoder.layers.{match.group(1)}.{target}.{match.group(3)}', index, count, value)
        else:
            unknown.append(prefix + key)
    return unknown


def _finish(out: StateDict, fuser: _Fuser, head: torch.Tensor | None, unknown: list[str], layout: str) -> StateDict:
    if unknown:
        raise ValueError(
            f'{len(unknown)} key(s) of this {layout} TrOCR checkpoint have no counterpart in our model '
            f'(e.g. {unknown[:5]}); is it a TrOCR VisionEncoderDecoderModel with a ViT/DeiT encoder?'
        )
    out.update(fuser.tensors())
    # Tied checkpoints may store the output projection or leave it to the token embedding.
    out['head.weight'] = out['decoder.embed_tokens.weight'] if head is None else head
    return {f'model.{k}': v for k, v in out.items()}


@register_importer('trocr_hf')
def import_hf_trocr(state: StateDict) -> StateDict:
    """A Hugging Face TrOCR ``VisionEncoderDecoderModel`` state dict -> our ``model.*`` keys."""
    if any(k.startswith('enc_to_dec_proj.') for k in state):
        raise ValueError(
            'this VisionEncoderDecoderModel projects the encoder output (enc_to_dec_proj); TrOCR checkpoints set '
            'cross_attention_hidden_size instead, and only those are supported'
        )
    out: StateDict = {}
    fuser = _Fuser()
    unknown = _map_hf_encoder(_split_prefix(state, HF_ENCODER), out, fuser)
    unknown += _map_decoder(_split_prefix(state, HF_DECODER), out, fuser, HF_DECODER)
    unknown += [k for k in state if not k.startswith((HF_ENCODER, HF_DECODER)) and k != HF_HEAD]
    return _finish(out, fuser, state.get(HF_HEAD), unknown, 'Hugging Face')


@register_importer('trocr_unilm')
def import_unilm_trocr(state: StateDict) -> StateDict:
    """An original unilm TrOCR (fairseq) state dict, or a checkpoint holding it under ``model`` -> our keys."""
    if isinstance(state.get('model'), dict):
        state = state['model']
    out: StateDict = {}
    fuser = _Fuser()
    unknown = []
    for key, value in _split_prefix(state, UNILM_ENCODER).items():
        if key.startswith(('head.', 'head_dist.')):
            continue  # the ImageNet classifier of the encoder's pre-training
        if _UNILM_ENCODER_KEY.match(key):
            out[f'encoder.{key}'] = value  # timm names, which ours are
        else:
            unknown.append(UNILM_ENCODER + key)
    decoder = {k: v for k, v in _split_prefix(state, UNILM_DECODER).items() if k != 'output_projection.weight'}
    unknown += _map_decoder(decoder, out, fuser, UNILM_DECODER)
    unknown += [k for k in state if not k.startswith((UNILM_ENCODER, UNILM_DECODER))]
    return _finish(out, fuser, state.get(UNILM_HEAD), unknown, 'unilm')


def detect_layout(state: StateDict) -> str | None:
    """``trocr_hf``, ``trocr_unilm``, or None for a state dict already in our layout (or not TrOCR's)."""
    if isinstance(state.get('model'), dict):
        state = state['model']
    if any(k.startswith(HF_DECODER) for k in state):
        return 'trocr_hf'
    if any(k.startswith(UNILM_ENCODER) for k in state):
        return 'trocr_unilm'
    return None
