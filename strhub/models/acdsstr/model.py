"""ACDS-STR: attention guidance by cross-domain supervision signals (Xue et al., IEEE TIP 2025).

A derivative of MGP-STR's character branch. Instead of a patch embedding, a ResNet-45 with a small feature pyramid
turns the image into tokens (one per cell of the stride-4 feature map, plus a class token) and predicts a
"character core area" mask at full resolution, supervised by the per-character boxes of synthetic data. After
block ``guide_block`` of the ViT, the head-averaged self-attention of that block, with the predicted mask added,
goes through a sigmoid and re-mixes the tokens into a guided branch; the remaining blocks run again on that branch
(same weights), each followed by the same guidance. A learned gate fuses the main and guided branches, and a
convolutional decoder (MGP-STR's A^3 shape: token mixing to a fixed number of slots, then grouped channel mixing to
the classes) reads out ``max_label_length + 2`` character slots.

Slot layout follows MGP-STR: slot 0 is the ``[GO]`` position (never trained, never read), slots ``1 .. L`` the
characters and slot ``L + 1`` the end token. Classes follow :class:`CharTokenizer`: ``[E]`` then the charset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.modules import RESNET45_STRIDE, ResNet45, check_images, init_weights

STEMS = ('resnet45', 'patch')
VIT_NORM_EPS = 1e-6  # the ViT convention (timm / MGP-STR)


class ACDSOutput(NamedTuple):
    """``logits``: (N, max_label_length + 2, num_classes), every slot including the unread slot 0.
    ``mask_logits``: (N, 1, H, W) core-area mask logits at the input resolution, or None (``stem='patch'``)."""

    logits: Tensor
    mask_logits: Tensor | None


class PyramidStem(nn.Module):
    """ResNet-45 tokens and a core-area mask from a two-step top-down feature pyramid.

    The stride-4 map of stage 4 is upsampled and concatenated with stage 2 (stride 2), fused by a 1x1 convolution
    and batch norm; that is upsampled and concatenated with the stem's full-resolution map and fused the same way.
    Two 1x1 convolutions map the result to one mask logit per pixel. The last stage (stride 4) is projected to the
    token width by a 3x3 convolution.

    Args:
        embed_dim: token width.
        channels: ResNet-45 width (its last stage); the published model uses 512 (pyramid width 352).
    """

    def __init__(self, embed_dim: int, channels: int = 512) -> None:
        super().__init__()
        self.resnet = ResNet45(channels)
        widths = self.resnet.widths
        half = widths[3] + widths[1]  # stage 4 (upsampled) + stage 2, at stride 2
        full = half + widths[0]  # + the stem, at stride 1
        self.fuse_half = nn.Sequential(nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half))
        self.fuse_full = nn.Sequential(nn.Conv2d(full, full, 1, bias=False), nn.BatchNorm2d(full))
        self.mask_head = nn.Sequential(nn.Conv2d(full, full, 1, bias=False), nn.Conv2d(full, 1, 1, bias=False))
        self.proj = nn.Conv2d(widths[4], embed_dim, 3, 1, 1, bias=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) -> tokens (N, H/4 * W/4, embed_dim) in row-major order and mask logits (N, 1, H, W)."""
        stem, _, stage2, _, stage4, stage5 = self.resnet.forward_stages(images)
        pyramid = self.fuse_half(torch.cat([F.interpolate(stage4, scale_factor=2.0, mode='nearest'), stage2], 1))
        pyramid = self.fuse_full(torch.cat([F.interpolate(pyramid, scale_factor=2.0, mode='nearest'), stem], 1))
        tokens = self.proj(stage5).flatten(2).transpose(1, 2)
        return tokens, self.mask_head(pyramid)


class PatchStem(nn.Module):
    """The ablation without the convolutional stem: non-overlapping 4x4 patches, the same token grid, no mask."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, RESNET45_STRIDE, RESNET45_STRIDE)

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        return self.proj(images).flatten(2).transpose(1, 2), None


class Attention(nn.Module):
    """Multi-head self-attention that can also return its head-averaged attention weights."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """(N, T, D) -> (N, T, D) and, with ``need_weights``, the (N, T, T) mean over heads of the softmax weights
        (row = query, column = key)."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if need_weights:
            weights = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
            out, mean_weights = weights @ v, weights.mean(1)
        else:
            out, mean_weights = F.scaled_dot_product_attention(q, k, v), None
        return self.proj(out.transpose(1, 2).reshape(n, t, d)), mean_weights


class Block(nn.Module):
    """Pre-norm ViT block (attention + GELU MLP) that can return its head-averaged attention weights."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=VIT_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.norm1(x), need_weights)
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class ConvCharDecoder(nn.Module):
    """MGP-STR-style read-out by 1x1 convolutions: token mixing (tokens -> tokens -> slots), then channel mixing
    (grouped width -> width, then width -> classes), then a LayerNorm over the class logits, as published.

    Args:
        num_tokens: tokens in (class token included).
        embed_dim: token width; divisible by ``groups``.
        num_slots: character slots out.
        num_classes: classes per slot.
        groups: groups of the first channel-mixing convolution.
    """

    def __init__(self, num_tokens: int, embed_dim: int, num_slots: int, num_classes: int, groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.token_mix = nn.Sequential(
            nn.Conv1d(num_tokens, num_tokens, 1, bias=False), nn.Conv1d(num_tokens, num_slots, 1, bias=False)
        )
        self.channel_mix = nn.Sequential(
            nn.Conv1d(embed_dim, embed_dim, 1, groups=groups, bias=False),
            nn.Conv1d(embed_dim, num_classes, 1, bias=False),
        )
        self.logit_norm = nn.LayerNorm(num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """(N, num_tokens, embed_dim) -> (N, num_slots, num_classes) logits."""
        slots = self.token_mix(self.norm(tokens))  # tokens act as channels: (N, num_slots, embed_dim)
        return self.logit_norm(self.channel_mix(slots.transpose(1, 2)).transpose(1, 2))


class ACDSSTR(nn.Module):
    """The ACDS-STR network.

    Args:
        num_classes: classes per slot, ``len(charset) + 1`` (``[E]`` and the charset).
        max_label_length: longest label read; the decoder has ``max_label_length + 2`` slots (MGP-STR: 27).
        img_size: (height, width) of the input; both multiples of 4 (the ResNet-45 stride).
        embed_dim, depth, num_heads, mlp_ratio: ViT sizes (Base: 768, 10, 12, 4; Small: 768, 6, 12, 4).
        guide_block: index of the block after which attention guidance starts (Base 7, Small 3): the blocks after
            it run again on the guided branch. None turns guidance off (no gate either).
        stem: ``resnet45`` (ResNet-45 + feature pyramid, predicts the core-area mask) or ``patch`` (4x4 patch
            embedding, no mask; with ``guide_block=None`` this is a plain ViT character model, the ablation
            baseline).
        resnet_channels: ResNet-45 width (its last stage), a multiple of 16.
        decoder_groups: groups of the decoder's first channel-mixing convolution.
    """

    def __init__(
        self,
        num_classes: int,
        max_label_length: int,
        img_size: Sequence[int] = (32, 128),
        embed_dim: int = 768,
        depth: int = 10,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        guide_block: int | None = 7,
        stem: str = 'resnet45',
        resnet_channels: int = 512,
        decoder_groups: int = 8,
    ) -> None:
        super().__init__()
        img_size = tuple(int(s) for s in img_size)
        _check_arguments(
            max_label_length, img_size, embed_dim, depth, num_heads, guide_block, stem, resnet_channels, decoder_groups
        )
        self.img_size = img_size
        self.max_label_length = max_label_length
        self.num_classes = num_classes
        self.guide_block = guide_block
        self.grid_size = (img_size[0] // RESNET45_STRIDE, img_size[1] // RESNET45_STRIDE)
        num_tokens = self.grid_size[0] * self.grid_size[1] + 1

        self.stem = PyramidStem(embed_dim, resnet_channels) if stem == 'resnet45' else PatchStem(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        if guide_block is not None:
            # The class token has no pixels: its mask logit is learned.
            self.cls_mask_logit = nn.Parameter(torch.zeros(1, 1))
            self.guide_norm = nn.LayerNorm(embed_dim, eps=VIT_NORM_EPS)
            # Per-channel gate between the main and the guided branch, from both; zero init = an even mix.
            self.gate = nn.Linear(2 * embed_dim, embed_dim, bias=False)
        self.decoder = ConvCharDecoder(num_tokens, embed_dim, max_label_length + 2, num_classes, decoder_groups)
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.guide_block is not None:
            nn.init.zeros_(self.gate.weight)

    @property
    def predicts_mask(self) -> bool:
        """Whether the stem predicts the core-area mask (``stem='resnet45'``)."""
        return isinstance(self.stem, PyramidStem)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed."""
        return {'pos_embed', 'cls_token', 'cls_mask_logit'}

    def _guide(self, x: Tensor, attention: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
        # As in the public code, token i's mask logit is added to row i (query i) of the attention map.
        weights = torch.sigmoid(attention + token_mask.unsqueeze(-1))
        return self.guide_norm(weights @ x), weights

    def forward_all(self, images: Tensor) -> ACDSOutput:
        """(N, 3, H, W) -> logits of every slot and the core-area mask logits (see :class:`ACDSOutput`)."""
        check_images(images, self.img_size)
        tokens, mask_logits = self.stem(images)
        x = torch.cat([self.cls_token.expand(len(images), -1, -1), tokens], 1) + self.pos_embed
        if self.guide_block is None:
            for block in self.blocks:
                x = block(x)[0]
            return ACDSOutput(self.decoder(x), mask_logits)
        # One mask logit per token: the mean over its 4x4 pixels (the public code takes one pixel of each cell).
        cell_mask = F.adaptive_avg_pool2d(mask_logits, self.grid_size).flatten(1)
        token_mask = torch.cat([self.cls_mask_logit.expand(len(images), -1), cell_mask], 1)
        guided = weights = None
        for i, block in enumerate(self.blocks):
            x, attention = block(x, need_weights=i == self.guide_block)
            if i == self.guide_block:
                guided, weights = self._guide(x, attention, token_mask)
            elif i > self.guide_block:
                guided, attention = block(guided, need_weights=True)
                guided, weights = self._guide(guided, attention, token_mask)
        fused = self.guide_norm(weights @ x + guided)
        gate = torch.sigmoid(self.gate(torch.cat([x, fused], -1)))
        return ACDSOutput(self.decoder(gate * x + (1 - gate) * fused), mask_logits)

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L + 1, num_classes) logits, ``L = min(max_length, max_label_length)``
        (``max_label_length`` when None): slots 1 .. L + 1 (characters, then the end token)."""
        length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        return self.forward_all(images).logits[:, 1 : length + 2]


def _check_arguments(
    max_label_length: int,
    img_size: tuple[int, ...],
    embed_dim: int,
    depth: int,
    num_heads: int,
    guide_block: int | None,
    stem: str,
    resnet_channels: int,
    decoder_groups: int,
) -> None:
    if len(img_size) != 2 or any(s <= 0 or s % RESNET45_STRIDE for s in img_size):
        raise ValueError(
            f'img_size {list(img_size)} must be [height, width], both positive multiples of {RESNET45_STRIDE} '
            '(the stride of the ResNet-45 stem and of its feature pyramid)'
        )
    if max_label_length < 1:
        raise ValueError(f'max_label_length must be >= 1, got {max_label_length}')
    if stem not in STEMS:
        raise ValueError(f'unknown stem {stem!r}; valid: {list(STEMS)}')
    if depth < 1:
        raise ValueError(f'depth must be >= 1, got {depth}')
    if guide_block is not None and not 0 <= guide_block < depth:
        raise ValueError(
            f'guide_block {guide_block} is not a block index of a depth-{depth} encoder: use 0 .. {depth - 1} '
            '(Base: 7 of 10, Small: 3 of 6), or null for no guidance'
        )
    if guide_block is not None and stem != 'resnet45':
        raise ValueError(
            f"attention guidance needs the predicted core-area mask of stem 'resnet45', not {stem!r}; "
            'set guide_block=null for a patch-stem model'
        )
    if embed_dim % num_heads:
        raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
    if embed_dim % decoder_groups:
        raise ValueError(f'embed_dim {embed_dim} is not divisible by decoder_groups {decoder_groups}')
    if stem == 'resnet45' and resnet_channels % 16:
        raise ValueError(
            f'resnet_channels must be a multiple of 16 (ResNet-45 widths are 1/16 .. 1 of it), got {resnet_channels}'
        )
