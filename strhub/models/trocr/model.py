"""TrOCR: transformer-based optical character recognition with pre-trained models (Li et al., 2021).

An image Transformer encoder (ViT with a class token, or DeiT with class and distillation tokens) turns the image
into a sequence of patch features (the *memory*; the prefix tokens are part of it). A post-LayerNorm Transformer
decoder (fairseq / RoBERTa style) predicts sub-word or character tokens left to right, cross-attending to the memory.

Every variant the published checkpoints use is a constructor flag: learned positions (offset by 2) or sinusoidal
positions (fairseq's, offset by ``pad_id + 1``), LayerNorm after the embeddings, embeddings scaled by
``sqrt(dec_embed_dim)``, output projection tied to the token embedding or not, GELU or ReLU, query/key/value biases
in the encoder.

Attention runs through ``F.scaled_dot_product_attention``. Decoding (greedy and beam search, see
:mod:`strhub.models.trocr.generation`) uses :meth:`TextDecoder.forward_step`: a per-layer self-attention key/value
cache that grows by one position per step, and cross-attention keys/values projected once per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.decoding import EarlyStopping, KeyValueCache
from strhub.models.modules import ViTEncoder, check_images, init_weights
from strhub.models.trocr.generation import Generation, generate

# Per decoder layer, keys and values, each (N, num_heads, S, head_dim).
LayerKeyValues = list[tuple[Tensor, Tensor]]

ACTIVATIONS = {'gelu': F.gelu, 'relu': F.relu}
# Learned decoder positions are looked up at ``position + 2`` (a fairseq/BART convention the published weights keep).
LEARNED_POSITION_OFFSET = 2


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, L, D) -> (N, num_heads, L, D / num_heads)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(N, num_heads, L, head_dim) -> (N, L, num_heads * head_dim)."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection (one matmul per decoding step)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, L, D) -> queries, keys and values, each (N, num_heads, L, head_dim)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """Projected (N, H, L, d_h) queries over (N, H, S, d_h) keys/values -> (N, L, D)."""
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)
        return self.out_proj(_merge_heads(out))


class CrossAttention(nn.Module):
    """Multi-head attention from the text to the image memory, whose width may differ from the decoder's."""

    def __init__(self, embed_dim: int, memory_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.kv_proj = nn.Linear(memory_dim, 2 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """(N, S, memory_dim) -> keys and values, each (N, num_heads, S, head_dim)."""
        k, v = self.kv_proj(memory).unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """(N, L, D) text over projected memory -> (N, L, D)."""
        q = _split_heads(self.q_proj(x), self.num_heads)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, *memory_kv, dropout_p=dropout)
        return self.out_proj(_merge_heads(out))


class DecoderLayer(nn.Module):
    """Post-LayerNorm decoder layer: self-attention, cross-attention and feed-forward, each followed by
    ``norm(x + dropout(sublayer(x)))``."""

    def __init__(
        self,
        embed_dim: int,
        memory_dim: int,
        num_heads: int,
        ffn_dim: int,
        activation: str,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(embed_dim, num_heads, attention_dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dim)
        self.cross_attn = CrossAttention(embed_dim, memory_dim, num_heads, attention_dropout)
        self.cross_attn_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_norm = nn.LayerNorm(embed_dim)
        self.activation = ACTIVATIONS[activation]
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training)

    def _cross_and_feed_forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        x = self.cross_attn_norm(x + self._drop(self.cross_attn(x, memory_kv)))
        hidden = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return self.final_norm(x + self._drop(self.fc2(hidden)))

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """Teacher forcing: (N, L, D) -> (N, L, D), position i seeing positions 0..i."""
        q, k, v = self.self_attn.project(x)
        x = self.self_attn_norm(x + self._drop(self.self_attn.attend(q, k, v, causal=True)))
        return self._cross_and_feed_forward(x, memory_kv)

    def forward_step(
        self, x: Tensor, memory_kv: tuple[Tensor, Tensor], cache: KeyValueCache, index: int, position: int
    ) -> Tensor:
        """One new position: (N, 1, D) -> (N, 1, D); its keys/values are written into layer ``index`` of ``cache``
        at ``position``."""
        q, k, v = self.self_attn.project(x)
        keys, values = cache.write(index, k, v, position)
        attended = self.self_attn.attend(q, keys, values, causal=False)
        x = self.self_attn_norm(x + self._drop(attended))
        return self._cross_and_feed_forward(x, memory_kv)


def sinusoidal_positions(num_positions: int, dim: int, first: int) -> Tensor:
    """fairseq's sinusoidal embeddings of positions ``first .. first + num_positions - 1``: (num_positions, dim).

    The first half of the channels holds sines, the second half cosines (not interleaved), with frequencies
    ``10000 ** (-i / (dim / 2 - 1))``; an odd ``dim`` gets a zero last channel.
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f'sinusoidal positions need dec_embed_dim >= 4, got {dim}')
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(first, first + num_positions, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim % 2))


class TextDecoder(nn.Module):
    """Token + position embedding (optionally scaled and normalised) and a stack of post-LN decoder layers.

    Args:
        vocab_size, embed_dim, depth, num_heads, ffn_dim: sizes.
        memory_dim: width of the encoder output the layers cross-attend to.
        max_positions: longest token sequence (decoder input) the position embedding covers.
        learned_positions: learned positions (looked up at position + 2), else fairseq sinusoidal positions
            (position + pad_id + 1).
        embed_norm: LayerNorm after adding token and position embeddings.
        scale_embedding: multiply token embeddings by sqrt(embed_dim).
        pad_id: the padding token (its embedding row stays zero and gets no gradient).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn_dim: int,
        memory_dim: int,
        max_positions: int,
        learned_positions: bool,
        embed_norm: bool,
        scale_embedding: bool,
        activation: str,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        pad_id: int,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'dec_embed_dim {embed_dim} is not divisible by dec_num_heads {num_heads}')
        if activation not in ACTIVATIONS:
            raise ValueError(f'unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}')
        self.max_positions = max_positions
        self.pad_id = pad_id
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.embed_scale = math.sqrt(embed_dim) if scale_embedding else 1.0
        if learned_positions:
            self.embed_positions = nn.Embedding(max_positions + LEARNED_POSITION_OFFSET, embed_dim)
        else:
            self.embed_positions = None
            table = sinusoidal_positions(max_positions, embed_dim, first=pad_id + 1)
            self.register_buffer('sinusoidal_positions', table, persistent=False)
        self.embed_norm = nn.LayerNorm(embed_dim) if embed_norm else None
        self.layers = nn.ModuleList(
            DecoderLayer(
                embed_dim, memory_dim, num_heads, ffn_dim, activation, dropout, attention_dropout, activation_dropout
            )
            for _ in range(depth)
        )
        self.dropout = dropout

    def positions(self, start: int, length: int) -> Tensor:
        """Position embeddings of decoder inputs ``start .. start + length - 1``: (length, D)."""
        if start + length > self.max_positions:
            raise ValueError(
                f'decoder input of {start + length} tokens exceeds max_positions={self.max_positions}; use shorter '
                'labels (model.max_label_length) or fewer tokens (max_length), or raise model.arch.max_positions'
            )
        if self.embed_positions is None:
            return self.sinusoidal_positions[start : start + length]
        first = start + LEARNED_POSITION_OFFSET
        return self.embed_positions.weight[first : first + length]

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """(N, L) token ids at positions ``start ..`` -> (N, L, D) decoder input.

        Sinusoidal positions are zero at padding tokens (fairseq's padding position), so a model that emits the
        padding token continues from it as the published implementations do; other positions count every token.
        """
        positions = self.positions(start, tokens.shape[1])
        if self.embed_positions is None:
            positions = positions * (tokens != self.pad_id).unsqueeze(-1)
        x = self.embed_tokens(tokens) * self.embed_scale + positions
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return F.dropout(x, self.dropout, self.training)

    def project_memory(self, memory: Tensor) -> LayerKeyValues:
        """(N, S, memory_dim) -> per layer, the cross-attention keys and values (computed once per image)."""
        return [layer.cross_attn.project_memory(memory) for layer in self.layers]

    def forward(self, tokens: Tensor, memory_kv: LayerKeyValues) -> Tensor:
        """Teacher forcing: (N, L) decoder input ids -> (N, L, D) hidden states."""
        x = self.embed(tokens)
        for layer, kv in zip(self.layers, memory_kv, strict=True):
            x = layer(x, kv)
        return x

    def new_cache(self, batch_size: int, max_steps: int, like: Tensor) -> KeyValueCache:
        """Empty self-attention key/value buffers for ``max_steps`` positions of every layer."""
        attn = self.layers[0].self_attn
        head_dim = attn.out_proj.in_features // attn.num_heads
        return KeyValueCache(len(self.layers), batch_size, attn.num_heads, max_steps, head_dim, like)

    def forward_step(self, tokens: Tensor, memory_kv: LayerKeyValues, cache: KeyValueCache, position: int) -> Tensor:
        """One decoding step: (N, 1) ids of decoder input ``position`` -> (N, 1, D). Earlier positions never change
        (causal attention), so only the new one runs through the layers, against the cached keys/values."""
        x = self.embed(tokens, position)
        for i, (layer, kv) in enumerate(zip(self.layers, memory_kv, strict=True)):
            x = layer.forward_step(x, kv, cache, i, position)
        return x


class TrOCR(EarlyStopping, nn.Module):
    """The TrOCR network: image encoder, text decoder and output projection.

    Args:
        vocab_size: output classes (token ids of the tokenizer).
        max_length: longest token sequence decoded by default, EOS not counted (``forward(images)``).
        img_size, patch_size: (height, width) of the input image and of a patch.
        enc_embed_dim, enc_depth, enc_num_heads, enc_mlp_ratio, enc_qkv_bias, enc_distilled, enc_norm_eps:
            see :class:`~strhub.models.modules.ViTEncoder`.
        dec_embed_dim, dec_depth, dec_num_heads, dec_ffn_dim, max_positions, learned_positions, embed_norm,
            scale_embedding, activation, dropout, attention_dropout, activation_dropout: see :class:`TextDecoder`.
        tie_embeddings: the output projection shares the token embedding matrix.
        decoder_start_id: the first decoder input (Hugging Face TrOCR: EOS).
        eos_id, pad_id: end of sequence and padding ids.
        beam_size: 1 decodes greedily, more runs beam search; a runtime option.
        length_penalty: beam search ranks finished sequences by ``sum log p / length ** length_penalty``; a runtime
            option.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        img_size: Sequence[int] = (384, 384),
        patch_size: Sequence[int] = (16, 16),
        enc_embed_dim: int = 768,
        enc_depth: int = 12,
        enc_num_heads: int = 12,
        enc_mlp_ratio: float = 4.0,
        enc_qkv_bias: bool = False,
        enc_distilled: bool = False,
        enc_norm_eps: float = 1e-12,
        dec_embed_dim: int = 1024,
        dec_depth: int = 12,
        dec_num_heads: int = 16,
        dec_ffn_dim: int = 4096,
        max_positions: int = 512,
        learned_positions: bool = True,
        embed_norm: bool = True,
        scale_embedding: bool = False,
        tie_embeddings: bool = True,
        activation: str = 'gelu',
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        decoder_start_id: int = 2,
        eos_id: int = 2,
        pad_id: int = 1,
        beam_size: int = 1,
        length_penalty: float = 1.0,
    ) -> None:
        super().__init__()
        for name, token in (('decoder_start_id', decoder_start_id), ('eos_id', eos_id), ('pad_id', pad_id)):
            if not 0 <= token < vocab_size:
                raise ValueError(f'{name}={token} is outside the vocabulary of {vocab_size} tokens')
        if max_length < 1:
            raise ValueError(f'max_length must be >= 1, got {max_length}')
        if max_length + 1 > max_positions:
            raise ValueError(
                f'max_length {max_length} needs {max_length + 1} decoder positions but max_positions is '
                f'{max_positions}; lower max_length or raise max_positions'
            )
        self.max_length = max_length
        self.decoder_start_id = decoder_start_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.beam_size = beam_size
        self.length_penalty = length_penalty

        if enc_embed_dim % enc_num_heads:
            raise ValueError(f'enc_embed_dim {enc_embed_dim} is not divisible by enc_num_heads {enc_num_heads}')
        # ViT with a class token, or DeiT (class and distillation tokens); timm's names, as the original TrOCR
        # checkpoints' encoder.deit.*.
        self.encoder = ViTEncoder(
            img_size,
            patch_size,
            enc_embed_dim,
            enc_depth,
            enc_num_heads,
            enc_mlp_ratio,
            qkv_bias=enc_qkv_bias,
            prefix_tokens=2 if enc_distilled else 1,
            norm_eps=enc_norm_eps,
        )
        self.decoder = TextDecoder(
            vocab_size,
            dec_embed_dim,
            dec_depth,
            dec_num_heads,
            dec_ffn_dim,
            enc_embed_dim,
            max_positions,
            learned_positions,
            embed_norm,
            scale_embedding,
            activation,
            dropout,
            attention_dropout,
            activation_dropout,
            pad_id,
        )
        self.head = nn.Linear(dec_embed_dim, vocab_size, bias=False)
        self._init_weights()
        if tie_embeddings:
            self.head.weight = self.decoder.embed_tokens.weight

    def _init_weights(self) -> None:
        init_weights(self)
        nn.init.trunc_normal_(self.encoder.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.encoder.cls_token, std=0.02)
        if self.encoder.dist_token is not None:
            nn.init.trunc_normal_(self.encoder.dist_token, std=0.02)
        with torch.no_grad():
            self.decoder.embed_tokens.weight[self.pad_id].zero_()

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (prefix tokens and positional parameters)."""
        names = {'encoder.pos_embed', 'encoder.cls_token', 'encoder.dist_token'}
        return names | ({'decoder.embed_positions.weight'} if self.decoder.embed_positions is not None else set())

    @property
    def vocab_size(self) -> int:
        return self.head.out_features

    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, S, enc_embed_dim) image memory (prefix tokens included)."""
        check_images(images, self.encoder.img_size)
        return self.encoder(images)

    def decode(self, tokens: Tensor, memory: Tensor | LayerKeyValues) -> Tensor:
        """Teacher forcing: (N, L) decoder input ids (starting with ``decoder_start_id``) -> (N, L, vocab) logits,
        position i predicting token i + 1.

        Args:
            memory: (N, S, enc_embed_dim) from :meth:`encode`, or its projection by ``decoder.project_memory``.
        """
        memory_kv = self.decoder.project_memory(memory) if isinstance(memory, Tensor) else memory
        return self.head(self.decoder(tokens, memory_kv))

    def resolve_length(self, max_length: int | None) -> int:
        """Decoding steps for ``max_length`` tokens plus EOS (the model's ``max_length`` when None), limited by the
        position embedding."""
        length = self.max_length if max_length is None else max_length
        if length < 0:
            raise ValueError(f'max_length must be >= 0, got {length}')
        return min(length, self.decoder.max_positions - 1) + 1

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L, vocab) logits of the decoded tokens with the current ``beam_size``.

        With ``max_length`` None, up to ``self.max_length`` tokens plus EOS are decoded and decoding stops once every
        sequence has ended; otherwise exactly ``max_length + 1`` positions are returned. Greedy decoding returns each
        step's logits (those after a sequence's EOS carry no meaning); beam search returns the logits of the best
        hypothesis under teacher forcing (their argmax need not be the hypothesis: read tokens from :meth:`generate`).
        """
        return generate(self, images, max_length, return_logits=True).logits

    def generate(
        self,
        images: Tensor,
        max_length: int | None = None,
        beam_size: int | None = None,
        length_penalty: float | None = None,
    ) -> Generation:
        """Decoded token ids and their log-probabilities; see :func:`strhub.models.trocr.generation.generate`."""
        return generate(self, images, max_length, beam_size, length_penalty)
