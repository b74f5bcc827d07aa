"""ViTSTR: vision transformer for fast and efficient scene text recognition (Atienza, ICDAR 2021).

A DeiT-style ViT (patch embedding, class token, learned position embedding, pre-LN blocks, final norm) with no
decoder: output token ``i`` of the encoder is read out by a shared linear head as the character at position ``i``.
The published models drop the class token's output (token 0) and read positions from token 1 on, so the model's
logits are those of tokens ``1 .. max_length + 1`` (the characters, then EOS).

Parameter names and shapes follow the published strhub release file (timm ``VisionTransformer`` names), so it loads
with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from strhub.models.modules import check_images


class ViTSTR(nn.Module):
    """The ViTSTR network.

    Args:
        num_classes: classes of the head, ``len(charset) + 1`` (EOS and the charset; never BOS or padding).
        max_label_length: longest label the model reads (one more position is read for EOS).
        img_size, patch_size: (height, width) of the input image and of a patch; the patch must divide the image.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
    """

    def __init__(
        self,
        num_classes: int,
        max_label_length: int,
        img_size: Sequence[int] = (32, 128),
        patch_size: Sequence[int] = (4, 8),
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        img_size, patch_size = tuple(img_size), tuple(patch_size)
        if len(img_size) != 2 or len(patch_size) != 2:
            raise ValueError(f'img_size {img_size} and patch_size {patch_size} must both be (height, width)')
        if any(i % p for i, p in zip(img_size, patch_size, strict=True)):
            raise ValueError(
                f'img_size {img_size} is not a multiple of patch_size {patch_size}; '
                'pick a patch size that divides the image height and width'
            )
        if max_label_length < 1:
            raise ValueError(f'max_label_length must be >= 1, got {max_label_length}')
        num_patches = (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1])
        if max_label_length + 1 > num_patches:
            # Each character position (and EOS) is read from its own patch token.
            raise ValueError(
                f'max_label_length {max_label_length} needs {max_label_length + 1} patch tokens but img_size '
                f'{img_size} with patch_size {patch_size} gives {num_patches}; use smaller patches'
            )
        self.img_size = img_size
        self.max_label_length = max_label_length
        self.num_classes = num_classes

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans=3, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        # eps=1e-6 is the ViT convention the published weights were trained with.
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth))
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The DeiT initialisation the published models started from (convolution and norms keep PyTorch defaults).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (positional parameters and the class token)."""
        return {'pos_embed', 'cls_token'}

    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, 1 + num_patches, embed_dim) tokens, the class token first."""
        check_images(images, self.img_size)
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L + 1, num_classes) logits, ``L = min(max_length, max_label_length)``
        (``max_label_length`` when ``max_length`` is None): one position per character and one for EOS."""
        length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        tokens = self.encode(images)
        # Token 0 (the class token) is not read out; positions 0..L come from tokens 1..L+1.
        return self.head(tokens[:, 1 : length + 2])
