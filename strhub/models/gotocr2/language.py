"""GOT-OCR2's language model: a Qwen2-style decoder (RMSNorm, SwiGLU, rotary embeddings, grouped-query attention
with q/k/v biases) with a preallocated key/value cache for greedy decoding.

Parameter names follow Hugging Face's ``Qwen2Model`` (``embed_tokens``, ``layers.N.self_attn.q_proj`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from strhub.models.decoding import KeyValueCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalised in fp32 as in training; scaled in the input dtype.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(dim, num_heads * head_dim)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KeyValueCache | None = None, layer: int = 0
    ) -> Tensor:
        """(N, T, dim) -> (N, T, dim); with a cache, the T new positions follow the ``cache.length`` cached ones."""
        n, t, _ = x.shape
        q = self.q_proj(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(n, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(n, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        causal = bool(t > 1)  # a Python bool even when traced (fvcore)
        if cache is not None:
            start = cache.length
            k, v = cache.write(layer, k, v, start)
            # A prefill after cached positions would need an offset causal mask; decoding feeds one token.
            if causal and start:
                raise ValueError('only the first call on a cache may feed more than one position')
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(n, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = Attention(dim, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, mlp_dim)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KeyValueCache | None = None, layer: int = 0
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class QwenDecoder(nn.Module):
    """Token embedding, decoder layers and the final norm; logits come from the tied embedding (see
    :meth:`logits`).

    Args:
        vocab_size: embedding rows.
        dim: hidden width.
        depth: decoder layers.
        num_heads, num_kv_heads: query heads and key/value heads (grouped-query attention).
        mlp_dim: SwiGLU hidden width.
        rope_theta: rotary embedding base.
        eps: RMSNorm epsilon.
        head_dim: per-head width (``dim // num_heads`` when None).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        num_kv_heads: int,
        mlp_dim: int,
        rope_theta: float,
        eps: float,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f'text width {dim} is not divisible by {num_heads} heads; change text_heads')
            head_dim = dim // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f'{num_heads} query heads are not a multiple of {num_kv_heads} key/value heads')
        self.head_dim, self.num_kv_heads = head_dim, num_kv_heads
        self.gradient_checkpointing = False
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, num_heads, num_kv_heads, head_dim, mlp_dim, eps) for _ in range(depth)
        )
        self.norm = RMSNorm(dim, eps)
        inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer('inv_freq', inv_freq, persistent=False)

    def rotary(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(T,) positions -> cos, sin of shape (T, head_dim) in ``dtype`` (computed in fp32)."""
        angles = positions.float()[:, None] * self.inv_freq.float()[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def new_cache(self, batch_size: int, capacity: int, like: Tensor) -> KeyValueCache:
        return KeyValueCache(len(self.layers), batch_size, self.num_kv_heads, capacity, self.head_dim, like)

    def forward(self, embeds: Tensor, cache: KeyValueCache | None = None) -> Tensor:
        """(N, T, dim) input embeddings -> (N, T, dim) final hidden states. With a cache, positions continue from
        ``cache.length`` and the cache advances by T."""
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + embeds.shape[1], device=embeds.device)
        cos, sin = self.rotary(positions, embeds.dtype)
        x = embeds
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += embeds.shape[1]
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., dim) -> (..., vocab_size) through the tied input embedding."""
        return F.linear(hidden, self.embed_tokens.weight)
