"""PARSeq: permuted autoregressive sequence model (Bautista & Atienza, ECCV 2022).

A ViT encoder turns the image into a sequence of patch features (the *memory*). A two-stream transformer decoder
predicts characters: the *query* stream carries position queries that ask "which character is at position i?",
the *content* stream carries the embedded context characters. Attention masks over the content decide which
context each query sees, so one set of weights serves autoregressive (left-to-right context), non-autoregressive
(no context) and cloze (all other characters as context, used for iterative refinement) decoding.

Parameter names and shapes follow the published strhub release files, so those load with ``strict=True``.

Masks passed to :meth:`PARSeq.decode` are boolean with ``True`` marking a key a query must NOT attend to
(the ``nn.MultiheadAttention`` convention); attention itself runs through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.decoding import EarlyStopping, KeyValueCache, all_ended, cut_after_latest_first_eos
from strhub.models.modules import ViTEncoder, check_images

# Per decoder layer, the (keys, values) of a sequence, each (N, num_heads, S, head_dim).
LayerKeyValues = list[tuple[Tensor, Tensor]]


class TokenEmbedding(nn.Module):
    """Token embedding scaled by sqrt(embed_dim), as in the original transformer."""

    def __init__(self, num_tokens: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, embed_dim)
        self.scale = math.sqrt(embed_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """(N, L) ids -> (N, L, embed_dim)."""
        return self.scale * self.embedding(tokens)

    def table(self) -> Tensor:
        """(num_tokens, embed_dim): every token's embedding, so that a decoding loop can index rows directly."""
        return self.scale * self.embedding.weight


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters with separate query and key/value projections, so that keys and values
    can be projected once and reused (image memory, decoding cache); the attention itself is :func:`run_stream`'s."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def project_query(self, x: Tensor) -> Tensor:
        """(N, L, D) -> (N, num_heads, L, head_dim)."""
        d = self.embed_dim
        return split_heads(F.linear(x, self.in_proj_weight[:d], self.in_proj_bias[:d]), self.num_heads)

    def project_key_value(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, S, D) -> keys and values, each (N, num_heads, S, head_dim)."""
        return self.split_key_value(self.project_packed_key_value(x))

    def project_packed_key_value(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., 2D): keys then values, heads not yet split (the layout of the decoding cache)."""
        d = self.embed_dim
        return F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])

    def split_key_value(self, packed: Tensor) -> tuple[Tensor, Tensor]:
        """(N, S, 2D) packed keys and values -> keys and values, each an (N, num_heads, S, head_dim) view."""
        # Indexed, not unpacked: views from unpacking (unbind) may not see their base written in place later.
        kv = packed.unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]


class DecoderLayer(nn.Module):
    """Pre-LN transformer decoder layer for two-stream attention (XLNet style).

    Both streams attend to the same normalised content (self-attention) and to the image memory (cross-attention);
    they differ in what they carry (position queries vs. context characters) and in their masks.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads)
        self.cross_attn = MultiheadAttention(embed_dim, num_heads)
        self.linear1 = nn.Linear(embed_dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.norm_q = nn.LayerNorm(embed_dim)
        self.norm_c = nn.LayerNorm(embed_dim)
        self.dropout = dropout

    def stream_ops(self) -> StreamOps:
        """The layer's operations bound to its current parameters, for :func:`run_stream` (the layer's arithmetic);
        the decoding loop takes them once per decoding instead of once per step."""
        return StreamOps(
            num_heads=self.self_attn.num_heads,
            dropout=self.dropout if self.training else 0.0,
            norm_q=_bound_norm(self.norm_q),
            norm_c=_bound_norm(self.norm_c),
            norm1=_bound_norm(self.norm1),
            norm2=_bound_norm(self.norm2),
            self_query=_bound_projection(self.self_attn, 0),
            self_key_value=_bound_projection(self.self_attn, 1),
            self_out=_bound_linear(self.self_attn.out_proj),
            cross_query=_bound_projection(self.cross_attn, 0),
            cross_out=_bound_linear(self.cross_attn.out_proj),
            linear1=_bound_linear(self.linear1),
            linear2=_bound_linear(self.linear2),
        )


class StreamOps(NamedTuple):
    """A :class:`DecoderLayer`'s operations with its parameters bound (:meth:`DecoderLayer.stream_ops`): layer norms,
    projections (``*_query`` -> (N, L, D), ``self_key_value`` -> packed (N, L, 2D)) and output linears, each a
    one-argument callable; ``dropout`` is the layer's rate in training and 0 in eval mode."""

    num_heads: int
    dropout: float
    norm_q: Callable[[Tensor], Tensor]
    norm_c: Callable[[Tensor], Tensor]
    norm1: Callable[[Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    self_query: Callable[[Tensor], Tensor]
    self_key_value: Callable[[Tensor], Tensor]
    self_out: Callable[[Tensor], Tensor]
    cross_query: Callable[[Tensor], Tensor]
    cross_out: Callable[[Tensor], Tensor]
    linear1: Callable[[Tensor], Tensor]
    linear2: Callable[[Tensor], Tensor]


def _bound_norm(norm: nn.LayerNorm) -> Callable[[Tensor], Tensor]:
    shape, weight, bias = norm.normalized_shape, norm.weight, norm.bias
    return partial(torch.layer_norm, normalized_shape=shape, weight=weight, bias=bias, eps=norm.eps)


def _bound_linear(linear: nn.Module) -> Callable[[Tensor], Tensor]:
    # A plain float layer is called through F.linear on its parameters (a module call costs more than the product
    # itself in single-image decoding); other kinds (e.g. dynamically quantised layers) through the module.
    if isinstance(linear, nn.Linear) and isinstance(linear.weight, Tensor):
        return partial(F.linear, weight=linear.weight, bias=linear.bias)
    return linear


def _bound_projection(attn: MultiheadAttention, part: int) -> Callable[[Tensor], Tensor]:
    """``part`` 0: the query projection, 1: the packed key/value projection of ``attn``'s ``in_proj``."""
    d = attn.embed_dim
    rows = slice(0, d) if part == 0 else slice(d, 3 * d)
    return partial(F.linear, weight=attn.in_proj_weight[rows], bias=attn.in_proj_bias[rows])


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, L, D) -> (N, num_heads, L, head_dim); (N, D) rows of one position each -> (N, num_heads, 1, head_dim)."""
    if x.dim() == 2:
        n, d = x.shape
        return x.view(n, num_heads, 1, d // num_heads)
    n, length, d = x.shape
    return x.view(n, length, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: Tensor, rows: bool) -> Tensor:
    """(N, num_heads, L, head_dim) -> (N, L, D), or (N, D) with ``rows`` (L = 1)."""
    n, heads, length, head_dim = x.shape
    if rows:
        return x.view(n, heads * head_dim)
    return x.transpose(1, 2).reshape(n, length, heads * head_dim)


def run_stream(
    ops: StreamOps,
    x: Tensor,
    self_query: Tensor,
    content_kv: tuple[Tensor, Tensor],
    memory_kv: tuple[Tensor, Tensor],
    allowed: Tensor | None,
) -> Tensor:
    """One stream through a decoder layer (pre-LN self-attention over the content, cross-attention over the image
    memory, MLP): the one definition of that arithmetic, used by training, batched decoding and the per-step loop.

    Args:
        ops: the layer's :meth:`DecoderLayer.stream_ops`.
        x: (N, L, D) stream input, or (N, D) rows of one position each (the per-step loop: plain matrix products, no
            sequence dimension to reshape).
        self_query: (N, H, L, d_h) its self-attention queries, ``self_attn.project_query`` of the stream's normalised
            input (``norm_q`` for the query stream, ``norm_c`` for the content stream); projected by the caller, which
            can share or precompute them.
        content_kv: self-attention keys and values of the normalised content, (N, H, S, d_h) each.
        memory_kv: cross-attention keys and values of the image memory, (N, H, S_mem, d_h) each.
        allowed: self-attention mask, broadcastable to (N, H, L, S), True where a query may attend.

    Returns:
        (N, L, D), or (N, D) for rows.
    """
    p, rows = ops.dropout, x.dim() == 2
    attended = F.scaled_dot_product_attention(self_query, *content_kv, attn_mask=allowed, dropout_p=p)
    x = x + _drop(ops.self_out(merge_heads(attended, rows)), p)
    q = split_heads(ops.cross_query(ops.norm1(x)), ops.num_heads)
    attended = F.scaled_dot_product_attention(q, *memory_kv, dropout_p=p)
    x = x + _drop(ops.cross_out(merge_heads(attended, rows)), p)
    hidden = _drop(F.gelu(ops.linear1(ops.norm2(x))), p)
    return x + _drop(ops.linear2(hidden), p)


def _drop(x: Tensor, p: float) -> Tensor:
    return F.dropout(x, p, True) if p > 0 else x


class Decoder(nn.Module):
    """A stack of two-stream layers; the last layer only updates the query stream (its content output is unused)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(embed_dim, num_heads, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def project_memory(self, memory: Tensor) -> LayerKeyValues:
        """(N, S, D) image memory -> per layer, its cross-attention keys and values."""
        return [layer.cross_attn.project_key_value(memory) for layer in self.layers]

    def forward(
        self,
        query: Tensor,
        content: Tensor,
        memory_kv: LayerKeyValues,
        query_allowed: Tensor | None,
        content_allowed: Tensor | None,
    ) -> Tensor:
        """(N, L_q, D) queries attending to (N, L_c, D) content -> (N, L_q, D) normalised query outputs."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            ops = layer.stream_ops()  # bound once for both streams
            content_norm = layer.norm_c(content)
            content_kv = layer.self_attn.project_key_value(content_norm)
            query_q = layer.self_attn.project_query(layer.norm_q(query))
            next_query = run_stream(ops, query, query_q, content_kv, memory_kv[i], query_allowed)
            if i < last:
                content_q = layer.self_attn.project_query(content_norm)
                content = run_stream(ops, content, content_q, content_kv, memory_kv[i], content_allowed)
            query = next_query
        return self.norm(query)

    def project_first_queries(self, query: Tensor) -> Tensor:
        """(N, L, D) query-stream input -> (N, H, L, d_h) first-layer self-attention queries. The query stream starts
        from position queries that do not depend on the image, so cached decoding projects them once for all steps."""
        first = self.layers[0]
        return first.self_attn.project_query(first.norm_q(query))

    def new_cache(self, batch_size: int, max_steps: int, like: Tensor) -> KeyValueCache:
        """Empty content key/value buffers of every layer for :meth:`forward_step`; a position's keys and values lie
        in one row, so that a step writes its packed projection with a single copy."""
        attn = self.layers[0].self_attn
        head_dim = attn.embed_dim // attn.num_heads
        return KeyValueCache(len(self.layers), batch_size, attn.num_heads, max_steps, head_dim, like)

    def forward_step(
        self,
        ops: Sequence[StreamOps],
        query: Tensor,
        first_self_query: Tensor,
        content: Tensor,
        memory_kv: LayerKeyValues,
        cache: KeyValueCache,
        position: int,
    ) -> Tensor:
        """One left-to-right decoding step with cached content keys/values.

        With left-to-right context, position i of either stream sees content 0..i only, so earlier positions never
        change once computed: only the new position runs through the layers and its content keys/values are written
        into ``cache`` in place. Training uses :meth:`PARSeq.decode` (teacher forcing) instead.

        Args:
            ops: every layer's :meth:`DecoderLayer.stream_ops`, taken once for all steps.
            query: (N, D) query row for ``position``.
            first_self_query: (N, H, 1, d_h) its first-layer self-attention query (:meth:`project_first_queries`).
            content: (N, D) embedded context token at ``position``.
            cache: buffers from :meth:`new_cache`, filled for positions < ``position``.

        Returns:
            (N, D) query output, before the final norm.
        """
        last = len(ops) - 1
        query_q = first_self_query
        for i, layer in enumerate(ops):
            content_norm = layer.norm_c(content)
            content_kv = cache.write_packed(i, layer.self_key_value(content_norm), position)
            if i > 0:
                query_q = split_heads(layer.self_query(layer.norm_q(query)), layer.num_heads)
            if i == last:
                query = run_stream(layer, query, query_q, content_kv, memory_kv[i], None)
            else:
                # Both streams see exactly content 0..position here, so one pass serves both (as a 2-long sequence).
                both_q = torch.cat([query_q, split_heads(layer.self_query(content_norm), layer.num_heads)], dim=2)
                both = torch.stack([query, content], dim=1)
                query, content = run_stream(layer, both, both_q, content_kv, memory_kv[i], None).unbind(1)
        return query


def _allowed_keys(blocked: Tensor | None, padding: Tensor | None) -> Tensor | None:
    """Merges a blocked-key mask, (L, S) or (N, L, S), and a key padding mask (N, S), both True where attention is
    forbidden, into the boolean 'may attend' mask of ``F.scaled_dot_product_attention``: (N or 1, 1, L, S)."""
    for name, mask in (('attention mask', blocked), ('padding mask', padding)):
        if mask is not None and mask.dtype != torch.bool:
            raise TypeError(
                f'{name} must be a bool tensor (True = do not attend), got {mask.dtype}; '
                'convert an additive -inf mask with `mask == float("-inf")`'
            )
    if blocked is not None:
        blocked = (blocked if blocked.dim() == 3 else blocked.unsqueeze(0)).unsqueeze(1)
    if padding is not None:
        padding = padding[:, None, None, :]
        blocked = padding if blocked is None else blocked | padding
    return None if blocked is None else ~blocked


class PARSeq(EarlyStopping, nn.Module):
    """The PARSeq network.

    Args:
        num_tokens: size of the tokenizer vocabulary, ``len(CharTokenizer(charset))`` = len(charset) + 3. The head
            predicts the first ``num_tokens - 2`` ids (EOS and the charset; never BOS or padding).
        max_label_length: longest label the model decodes (one more position is decoded for EOS).
        img_size, patch_size: (height, width) of the input image and of a ViT patch.
        decode_ar: autoregressive decoding (else one non-autoregressive pass); may be flipped at test time.
        refine_iters: cloze refinement passes after the initial decoding; may be changed at test time.
        use_cache: decode autoregressively with cached keys/values (same outputs, faster); False runs the
            reference algorithm that re-runs the decoder on the whole prefix at each step.
        bos_id, eos_id, pad_id: special token ids; by default the :class:`CharTokenizer` layout
            (EOS = 0, BOS = num_tokens - 2, padding = num_tokens - 1).
    """

    def __init__(
        self,
        num_tokens: int,
        max_label_length: int,
        img_size: Sequence[int] = (32, 128),
        patch_size: Sequence[int] = (4, 8),
        embed_dim: int = 384,
        enc_num_heads: int = 6,
        enc_mlp_ratio: int = 4,
        enc_depth: int = 12,
        dec_num_heads: int = 12,
        dec_mlp_ratio: int = 4,
        dec_depth: int = 1,
        dropout: float = 0.1,
        decode_ar: bool = True,
        refine_iters: int = 1,
        bos_id: int | None = None,
        eos_id: int = 0,
        pad_id: int | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__()
        if num_tokens < 3:
            raise ValueError(f'num_tokens={num_tokens} leaves no characters; pass len(CharTokenizer(charset))')
        if max_label_length < 1:
            raise ValueError(f'max_label_length must be >= 1, got {max_label_length}')
        if refine_iters < 0:
            raise ValueError(f'refine_iters must be >= 0, got {refine_iters}')
        self.num_tokens = num_tokens
        self.max_label_length = max_label_length
        self.bos_id = num_tokens - 2 if bos_id is None else bos_id
        self.eos_id = eos_id
        self.pad_id = num_tokens - 1 if pad_id is None else pad_id
        self.decode_ar = decode_ar
        self.refine_iters = refine_iters
        self.use_cache = use_cache

        # A plain ViT without a class token.
        self.encoder = ViTEncoder(img_size, patch_size, embed_dim, enc_depth, enc_num_heads, enc_mlp_ratio)
        self.encoder.init_vit_weights()
        self.decoder = Decoder(embed_dim, dec_num_heads, embed_dim * dec_mlp_ratio, dec_depth, dropout)
        self.head = nn.Linear(embed_dim, num_tokens - 2)
        self.text_embed = TokenEmbedding(num_tokens, embed_dim)
        # One query per character position plus one for EOS.
        self.pos_queries = nn.Parameter(torch.empty(1, max_label_length + 1, embed_dim))
        self.dropout = dropout
        self._init_decoder_weights()

    def _init_decoder_weights(self) -> None:
        for name, module in self.named_modules():
            if name.startswith('encoder'):
                continue  # the encoder has its own ViT initialisation
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (embeddings and positional parameters)."""
        return {'text_embed.embedding.weight', 'pos_queries', 'encoder.pos_embed'}

    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, S, D) image memory."""
        check_images(images, self.encoder.img_size)
        return self.encoder(images)

    def project_memory(self, memory: Tensor) -> LayerKeyValues:
        """(N, S, D) memory -> its per-layer cross-attention keys/values, to reuse over several :meth:`decode`
        calls on the same images."""
        return self.decoder.project_memory(memory)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor | LayerKeyValues,
        tgt_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        tgt_query: Tensor | None = None,
        tgt_query_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced two-stream decoding under arbitrary attention masks.

        Args:
            tgt: (N, L) context ids, starting with BOS (BOS stands for the empty context).
            memory: (N, S, D) image memory, or its projection from :meth:`project_memory`.
            tgt_mask: content-stream mask, (L, L) or (N, L, L), True = may not attend.
            tgt_padding_mask: (N, L), True for context positions nobody may attend to (padding).
            tgt_query: (N, L_q, D) position queries; default: the first L position queries.
            tgt_query_mask: query-stream mask, (L_q, L) or (N, L_q, L), True = may not attend.

        Returns:
            (N, L_q, D) decoder output for the queries (apply ``self.head`` for logits).
        """
        memory_kv = self.project_memory(memory) if isinstance(memory, Tensor) else memory
        n, length = tgt.shape
        content = self._embed_context(tgt)
        if tgt_query is None:
            tgt_query = self.pos_queries[:, :length].expand(n, -1, -1)
        query = F.dropout(tgt_query, self.dropout, self.training)
        query_allowed = _allowed_keys(tgt_query_mask, tgt_padding_mask)
        content_allowed = _allowed_keys(tgt_mask, tgt_padding_mask)
        return self.decoder(query, content, memory_kv, query_allowed, content_allowed)

    def _embed_context(self, tgt: Tensor) -> Tensor:
        """(N, L) context ids -> (N, L, D). Context token j (j >= 1) is the character at position j - 1, so it gets
        that position's query as its position embedding; BOS gets none."""
        bos = self.text_embed(tgt[:, :1])
        chars = self.pos_queries[:, : tgt.shape[1] - 1] + self.text_embed(tgt[:, 1:])
        return F.dropout(torch.cat([bos, chars], dim=1), self.dropout, self.training)

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L, num_tokens - 2) logits; see :meth:`decode_memory` for L."""
        return self.decode_memory(self.encode(images), max_length)

    def decode_memory(self, memory: Tensor, max_length: int | None = None) -> Tensor:
        """Greedy decoding of encoded images with the current ``decode_ar`` / ``refine_iters`` settings.

        Args:
            memory: (N, S, D) from :meth:`encode`.
            max_length: longest label to decode (clipped to ``max_label_length``); None decodes up to
                ``max_label_length`` and stops as soon as every sequence has produced EOS.

        Returns:
            (N, L, num_tokens - 2) logits. L = max_length + 1, except after an early stop (``max_length`` None,
            autoregressive, no refinement): then L is one past the last sequence's first EOS, exactly as the
            reference implementation returns. Refinement always returns all max_length + 1 positions. Logits after
            a sequence's first EOS are computed from whatever was decoded there; they carry no meaning.
        """
        stop_early = max_length is None
        max_length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        if max_length < 0:
            raise ValueError(f'max_length must be >= 0, got {max_length}')
        num_steps = max_length + 1
        memory_kv = self.project_memory(memory) if self.use_cache else None
        # The cached loops write each step's keys and values into a buffer in place, which autograd cannot
        # differentiate through; with a gradient wanted (e.g. attribution, or a plain call without no_grad) decoding
        # recomputes the prefix instead: the same logits, out of place.
        wants_grad = torch.is_grad_enabled() and (memory.requires_grad or self.pos_queries.requires_grad)
        if self.decode_ar and self.use_cache and not wants_grad:
            logits = self._decode_ar_cached(memory_kv, num_steps, stop_early)
        elif self.decode_ar:
            logits = self._decode_ar_recompute(memory, num_steps, stop_early)
        else:
            bos = torch.full((memory.shape[0], 1), self.bos_id, dtype=torch.long, device=memory.device)
            query = self.pos_queries[:, :num_steps].expand(memory.shape[0], -1, -1)
            logits = self.head(self.decode(bos, memory if memory_kv is None else memory_kv, tgt_query=query))
        for _ in range(self.refine_iters):
            logits = self._refine(logits, memory if memory_kv is None else memory_kv, num_steps)
        return logits

    def _decode_ar_recompute(self, memory: Tensor, num_steps: int, stop_early: bool) -> Tensor:
        """The reference algorithm: step i re-runs the decoder on the whole prefix (and re-projects the memory)."""
        n = memory.shape[0]
        causal = torch.ones(num_steps, num_steps, dtype=torch.bool, device=memory.device).triu(1)
        tgt = torch.full((n, num_steps), self.pad_id, dtype=torch.long, device=memory.device)
        tgt[:, 0] = self.bos_id
        logits = []
        for i in range(num_steps):
            j = i + 1
            query = self.pos_queries[:, i:j].expand(n, -1, -1)
            out = self.decode(tgt[:, :j], memory, causal[:j, :j], tgt_query=query, tgt_query_mask=causal[i:j, :j])
            logits.append(self.head(out))
            if j < num_steps:
                tgt[:, j] = logits[-1][:, 0].argmax(-1)
                if stop_early and (tgt == self.eos_id).any(-1).all():
                    break
        return torch.cat(logits, dim=1)

    def _decode_ar_cached(self, memory_kv: LayerKeyValues, num_steps: int, stop_early: bool) -> Tensor:
        """Left-to-right greedy decoding that computes one new position per step (:meth:`Decoder.forward_step`), with
        everything that does not change between steps taken once: the layers' bound operations, the position
        queries and their first-layer self-attention queries, and the scaled token embeddings."""
        keys = memory_kv[0][0]
        n, device = keys.shape[0], keys.device
        check_every = self.eos_check_every(device)
        ops = [layer.stream_ops() for layer in self.decoder.layers]
        final_norm, head = _bound_norm(self.decoder.norm), _bound_linear(self.head)
        dropout = ops[0].dropout
        cache = self.decoder.new_cache(n, num_steps, keys)
        embeddings = self.text_embed.table()
        queries = _drop(self.pos_queries[:, :num_steps], dropout)
        first_self_queries = self.decoder.project_first_queries(queries).expand(n, -1, -1, -1)
        queries = queries.expand(n, -1, -1)
        positions = self.pos_queries[0, :num_steps]
        step, eos_id = self.decoder.forward_step, self.eos_id
        token = torch.full((n,), self.bos_id, dtype=torch.long, device=device)
        ended = torch.zeros(n, dtype=torch.bool, device=device)
        logits = []
        for i in range(num_steps):
            # Context token i: BOS, then the character at position i - 1 with that position's query (_embed_context).
            content = _drop(embeddings[token] if i == 0 else embeddings[token] + positions[i - 1], dropout)
            out = step(ops, queries[:, i], first_self_queries[:, :, i : i + 1], content, memory_kv, cache, i)
            logits.append(head(final_norm(out)))
            if i + 1 < num_steps:
                token = logits[-1].argmax(-1)
                if stop_early:
                    ended |= token == eos_id
                    if all_ended(ended, i, check_every):
                        return cut_after_latest_first_eos(torch.stack(logits, dim=1), eos_id)
        return torch.stack(logits, dim=1)

    def _refine(self, logits: Tensor, memory: Tensor | LayerKeyValues, num_steps: int) -> Tensor:
        """One cloze pass: every position sees all predicted characters but its own, up to the first EOS.

        The content stream (used by all decoder layers but the last) gets the same cloze mask rather than a causal
        one, as in the reference implementation (it edits one mask tensor shared by both streams; its outputs for
        2-layer decoders depend on this). Decoders of one layer, like the published ones, have no content stream.

        Args:
            logits: (N, L, C) previous prediction, L <= num_steps.

        Returns:
            (N, num_steps, C).
        """
        n, length = logits.shape[:2]
        device = logits.device
        bos = torch.full((n, 1), self.bos_id, dtype=torch.long, device=device)
        tgt = torch.cat([bos, logits[:, :-1].argmax(-1)], dim=1)
        # Context from the first EOS on is not part of the prediction.
        # Cumulative sum over integers, not booleans: ONNX CumSum has no boolean kernel (model export).
        padding = (tgt == self.eos_id).int().cumsum(-1) > 0
        # Query i predicts the character at context position i + 1, so that is the one key it may not see.
        rows = torch.arange(num_steps, device=device)[:, None]
        cloze = torch.arange(length, device=device)[None, :] == rows + 1
        query = self.pos_queries[:, :num_steps].expand(n, -1, -1)
        return self.head(self.decode(tgt, memory, cloze[:length], padding, query, cloze))
