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

from torch import Tensor, nn

from strhub.models.modules import ViTEncoder, check_images, check_patch_grid


class ViTSTR(ViTEncoder):
    """The ViTSTR network: a DeiT-style :class:`~strhub.models.modules.ViTEncoder` with a class token, plus a linear
    head over its output tokens.

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
        img_size, patch_size = check_patch_grid(img_size, patch_size)
        if max_label_length < 1:
            raise ValueError(f'max_label_length must be >= 1, got {max_label_length}')
        num_patches = (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1])
        if max_label_length + 1 > num_patches:
            # Each character position (and EOS) is read from its own patch token.
            raise ValueError(
                f'max_label_length {max_label_length} needs {max_label_length + 1} patch tokens but img_size '
                f'{img_size} with patch_size {patch_size} gives {num_patches}; use smaller patches'
            )
        super().__init__(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, prefix_tokens=1)
        self.max_label_length = max_label_length
        self.num_classes = num_classes
        self.head = nn.Linear(embed_dim, num_classes)
        # The DeiT initialisation the published models started from.
        self.init_vit_weights(cls_std=1e-6, cls_truncated=False)

    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, 1 + num_patches, embed_dim) tokens, the class token first."""
        check_images(images, self.img_size)
        return self.forward_features(images)

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L + 1, num_classes) logits, ``L = min(max_length, max_label_length)``
        (``max_label_length`` when ``max_length`` is None): one position per character and one for EOS."""
        length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        tokens = self.encode(images)
        # Token 0 (the class token) is not read out; positions 0..L come from tokens 1..L+1.
        return self.head(tokens[:, 1 : length + 2])
