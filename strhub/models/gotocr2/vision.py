"""GOT-OCR2's vision side: a SAM-style ViTDet encoder and the convolutional projector into the language model.

Parameter names follow Hugging Face's ``GotOcr2Model`` (``vision_tower.*``, ``multi_modal_projector.*``), so the
current Hugging Face layout loads without renaming (see :mod:`strhub.models.gotocr2.published` for the others).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from strhub.models.modules import check_images


def relative_position_table(size: int, table: Tensor) -> Tensor:
    """(2 * size - 1, C) learned offsets (resampled linearly when trained for another size) -> (size, size, C)
    embeddings of ``query - key`` for every query/key pair along one axis."""
    span = 2 * size - 1
    if table.shape[0] != span:
        table = F.interpolate(table.t().unsqueeze(0), size=span, mode='linear').squeeze(0).t()
    coords = torch.arange(size, device=table.device)
    return table[coords[:, None] - coords[None, :] + size - 1]


class VisionAttention(nn.Module):
    """Multi-head self-attention over a (H, W) grid with decomposed relative position bias (MViTv2 / SAM).

    Args:
        dim: token width.
        num_heads: attention heads.
        grid: (height, width) of the token grids this layer sees (the window, or the whole image).
    """

    def __init__(self, dim: int, num_heads: int, grid: Sequence[int]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'vision width {dim} is not divisible by {num_heads} heads; change vision_heads')
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # Decomposed bias: the query's dot product with the row offset and with the column offset embeddings.
        rows = relative_position_table(h, self.rel_pos_h).to(q.dtype)
        cols = relative_position_table(w, self.rel_pos_w).to(q.dtype)
        grid_q = q.reshape(b, self.num_heads, h, w, -1)
        bias_h = torch.einsum('bnhwc,hkc->bnhwk', grid_q, rows)
        bias_w = torch.einsum('bnhwc,wkc->bnhwk', grid_q, cols)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class VisionLayer(nn.Module):
    """Pre-LN transformer block; ``window > 0`` attends within non-overlapping windows (zero-padded at the
    bottom/right), ``window == 0`` over the whole grid."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, window: int, grid: Sequence[int], eps: float) -> None:
        super().__init__()
        self.window = window
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = VisionAttention(dim, num_heads, (window, window) if window else grid)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = VisionMLP(dim, mlp_dim)

    def _windowed_attention(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s = self.window
        pad_h, pad_w = -h % s, -w % s
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        gh, gw = (h + pad_h) // s, (w + pad_w) // s
        windows = x.view(b, gh, s, gw, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, c)
        out = self.attn(windows).view(b, gh, gw, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, gh * s, gw * s, c)
        return out[:, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer_norm1(x)
        x = x + (self._windowed_attention(y) if self.window else self.attn(y))
        return x + self.mlp(self.layer_norm2(x))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VisionNeck(nn.Module):
    def __init__(self, dim: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, out_channels, kernel_size=1, bias=False)
        self.layer_norm1 = ChannelLayerNorm(out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = ChannelLayerNorm(out_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_norm2(self.conv2(self.layer_norm1(self.conv1(x))))


class PatchEmbedding(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.projection(images).permute(0, 2, 3, 1)


class VisionEncoder(nn.Module):
    """SAM ViTDet image encoder: patches + absolute position embedding, windowed and global blocks, conv neck.

    Args:
        img_size: (height, width) of the input; a multiple of ``patch_size``.
        patch_size: square patch side.
        dim, depth, num_heads, mlp_dim: transformer sizes.
        out_channels: channels of the neck output.
        window: attention window side of the windowed blocks.
        global_layers: indices of the blocks that attend over the whole grid.
        eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        img_size: Sequence[int],
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        out_channels: int,
        window: int,
        global_layers: Sequence[int],
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if any(s % patch_size for s in img_size):
            raise ValueError(f'img_size {list(img_size)} is not a multiple of patch_size {patch_size}')
        bad = sorted(i for i in global_layers if not 0 <= i < depth)
        if bad:
            raise ValueError(f'global_layers {bad} are outside the {depth} vision layers (0..{depth - 1})')
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.img_size = tuple(img_size)
        self.gradient_checkpointing = False
        self.patch_embed = PatchEmbedding(patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid, dim))
        self.layers = nn.ModuleList(
            VisionLayer(dim, num_heads, mlp_dim, 0 if i in global_layers else window, self.grid, eps)
            for i in range(depth)
        )
        self.neck = VisionNeck(dim, out_channels, eps)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, out_channels, H / patch, W / patch)."""
        check_images(images, self.img_size)
        x = self.patch_embed(images.to(self.pos_embed.dtype)) + self.pos_embed
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.neck(x.permute(0, 3, 1, 2))


class Projector(nn.Module):
    """Two stride-2 3x3 convolutions (16x fewer positions) and a linear map into the language model's width."""

    def __init__(self, in_channels: int, out_dim: int) -> None:
        super().__init__()
        self.conv_upsampler1 = nn.Conv2d(in_channels, 2 * in_channels, 3, stride=2, padding=1, bias=False)
        self.conv_upsampler2 = nn.Conv2d(2 * in_channels, out_dim, 3, stride=2, padding=1, bias=False)
        self.multimodal_projector = nn.Linear(out_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, ceil(h / 4) * ceil(w / 4), out_dim) image tokens, row-major."""
        x = self.conv_upsampler2(self.conv_upsampler1(features))
        return self.multimodal_projector(x.flatten(2).transpose(1, 2))
