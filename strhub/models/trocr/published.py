"""Published TrOCR weights: Hugging Face repositories by name (``pretrained=microsoft/trocr-base-str``), and the
import of Hugging Face ``VisionEncoderDecoderModel`` state dicts and the original unilm
(fairseq + timm) checkpoints, mapped to :class:`~strhub.models.trocr.model.TrOCR` keys under ``model.``.

Hugging Face files come in two key layouts: the one the published checkpoints were saved in
(``encoder.encoder.layer.{i}.attention.attention.query`` ...) and the one of recent ``transformers`` releases
(``encoder.layers.{i}.attention.q_proj`` ...); both are accepted. Separate query/key/value projections are fused into
our single projections (``qkv`` for self-attention, ``kv_proj`` for the image keys/values). The unilm encoder already
uses timm names (``encoder.deit.*``, fused ``qkv``) and its decoder fairseq names, which Hugging Face's decoder kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from strhub.models.huggingface import HubError, image_preprocessing, read_weights, repo_name
from strhub.models.registry import HubModel, StateDict, register_hub_architecture, register_layout

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


def _nested(state: StateDict) -> StateDict:
    """unilm checkpoints hold the state dict under ``model``."""
    return state['model'] if isinstance(state.get('model'), dict) else state


def _is_hf(state: StateDict) -> bool:
    return any(k.startswith(HF_DECODER) for k in state)


def _is_unilm(state: StateDict) -> bool:
    return any(k.startswith(UNILM_ENCODER) for k in _nested(state))


@register_layout('trocr_hf', detect=_is_hf)
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


@register_layout('trocr_unilm', detect=_is_unilm)
def import_unilm_trocr(state: StateDict) -> StateDict:
    """An original unilm TrOCR (fairseq) state dict, or a checkpoint holding it under ``model`` -> our keys."""
    state = _nested(state)
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


# -- Hugging Face repositories ------------------------------------------------------------------------------------

_TROCR_DESCRIPTION = {
    'small': 'DeiT-S + 6-layer decoder, 62M, sentencepiece-derived vocabulary',
    'base': 'BEiT ViT-B + 12-layer decoder, 334M, RoBERTa BPE',
    'large': 'BEiT ViT-L + 12-layer decoder, 558M, RoBERTa BPE',
}
_TROCR_DATA = {
    'printed': 'fine-tuned on SROIE receipts (printed text lines)',
    'handwritten': 'fine-tuned on IAM (handwritten lines)',
    'stage1': 'pre-trained on synthetic and printed text lines (stage 1)',
    'str': 'fine-tuned on the scene text benchmarks (word crops)',
}
TROCR_NAMES = {
    f'microsoft/trocr-{size}-{data}': f'TrOCR-{size.capitalize()} ({_TROCR_DESCRIPTION[size]}): {_TROCR_DATA[data]}'
    for size in ('small', 'base', 'large')
    for data in ('printed', 'handwritten', 'stage1', 'str')
    if not (size == 'small' and data == 'str')
}
_ENCODERS = ('vit', 'deit')
_TOKENIZER_FILES = ('tokenizer.json', 'vocab.json', 'sentencepiece.bpe.model')


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value), int(value)]


def _tokenizer_section(directory: Path, decoder_start_id: int) -> dict[str, Any]:
    """``model.tokenizer`` for the repository's vocabulary files: tokenizer.json, vocab.json + merges.txt (RoBERTa
    BPE), or a sentencepiece model (converted to a tokenizer.json)."""
    from strhub.models.trocr.tokenizer import load_subword_backend, sentencepiece_backend

    if (directory / 'tokenizer.json').is_file() or (directory / 'vocab.json').is_file():
        backend, section = load_subword_backend(directory), {'path': str(directory)}
    elif (directory / 'sentencepiece.bpe.model').is_file():
        backend = sentencepiece_backend(directory / 'sentencepiece.bpe.model')
        section = {'json': backend.to_str()}
    else:
        raise HubError(f'{directory} has no tokenizer files (one of {", ".join(_TOKENIZER_FILES)})')
    start = backend.id_to_token(decoder_start_id)
    if start is None:
        raise HubError(f'{directory}: decoder_start_token_id {decoder_start_id} is not in the tokenizer')
    return {'kind': 'subword', 'decoder_start_token': start, **section}


@register_hub_architecture('vision-encoder-decoder/trocr', names=TROCR_NAMES)
def from_hub(directory: Path, config: dict[str, Any]) -> HubModel:
    """A TrOCR ``VisionEncoderDecoderModel`` repository (ViT or DeiT encoder, TrOCR decoder): sizes and flags from
    its config.json, the tokenizer from its vocabulary files, preprocessing from its preprocessor_config.json."""
    from strhub.config import model_config

    enc, dec = config.get('encoder') or {}, config.get('decoder') or {}
    if enc.get('model_type') not in _ENCODERS:
        raise HubError(
            f'{directory}: a TrOCR decoder over a {enc.get("model_type")!r} encoder is not supported; the encoder '
            f'must be one of {", ".join(_ENCODERS)} (as every published TrOCR)'
        )
    hidden = int(enc['hidden_size'])
    if int(dec.get('cross_attention_hidden_size') or hidden) != hidden:
        raise HubError(
            f'{directory}: the decoder attends to {dec["cross_attention_hidden_size"]}-wide features, '
            f'the encoder makes {hidden}-wide ones (a projection TrOCR checkpoints do not have)'
        )
    img_size, preprocess = image_preprocessing(directory, _pair(enc.get('image_size', 384)))
    ids = {
        key: int(config.get(key) if config.get(key) is not None else dec[key])
        for key in ('decoder_start_token_id', 'eos_token_id', 'pad_token_id')
    }
    cfg = model_config('trocr')
    cfg.update(name=repo_name(directory), img_size=img_size)
    cfg['arch'].update(
        patch_size=_pair(enc.get('patch_size', 16)),
        enc_embed_dim=hidden,
        enc_depth=int(enc['num_hidden_layers']),
        enc_num_heads=int(enc['num_attention_heads']),
        enc_mlp_ratio=int(enc['intermediate_size']) / hidden,
        enc_qkv_bias=bool(enc.get('qkv_bias', True)),
        enc_distilled=enc['model_type'] == 'deit',
        enc_norm_eps=float(enc.get('layer_norm_eps', 1e-12)),
        dec_embed_dim=int(dec['d_model']),
        dec_depth=int(dec['decoder_layers']),
        dec_num_heads=int(dec['decoder_attention_heads']),
        dec_ffn_dim=int(dec['decoder_ffn_dim']),
        max_positions=int(dec['max_position_embeddings']),
        learned_positions=bool(dec.get('use_learned_position_embeddings', True)),
        embed_norm=bool(dec.get('layernorm_embedding', True)),
        scale_embedding=bool(dec.get('scale_embedding', False)),
        tie_embeddings=bool(dec.get('tie_word_embeddings', True)),
        activation=str(dec.get('activation_function', 'gelu')),
        dropout=float(dec.get('dropout', 0.1)),
        attention_dropout=float(dec.get('attention_dropout', 0.0)),
        activation_dropout=float(dec.get('activation_dropout', 0.0)),
        vocab_size=int(dec['vocab_size']),
        decoder_start_id=ids['decoder_start_token_id'],
        eos_id=ids['eos_token_id'],
        pad_id=ids['pad_token_id'],
    )
    cfg['tokenizer'] = {**cfg['tokenizer'], **_tokenizer_section(directory, ids['decoder_start_token_id'])}
    cfg['preprocess'] = {**dict(cfg.get('preprocess') or {}), **preprocess}
    return HubModel(cfg, lambda: import_hf_trocr(read_weights(directory)))
