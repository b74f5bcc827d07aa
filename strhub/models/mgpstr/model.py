"""MGP-STR: multi-granularity prediction for scene text recognition (Wang et al., ECCV 2022).

A ViT encoder (patch embedding, class token, learned position embedding, pre-LN blocks and *no* final norm) feeds
three A³ modules ("adaptive addressing and aggregation", token learners). Each A³ module turns the encoder's tokens
into a fixed number of output slots by a learnt softmax-over-tokens selection, and a linear head reads each slot as
a token of its granularity: characters, BPE sub-words and WordPiece sub-words.

Parameter names follow timm's ``VisionTransformer`` for the encoder (``patch_embed``, ``cls_token``, ``pos_embed``,
``blocks``); the A³ modules are ``a3.<head>`` and the classifiers ``heads.<head>`` (see
:mod:`strhub.models.mgpstr.published` for the published layouts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.modules import ViTEncoder, check_images

HEADS = ('char', 'bpe', 'wordpiece')


@dataclass
class MGPSTROutput:
    """What one forward pass of every head gives.

    Attributes:
        logits: head -> (N, slots, classes).
        attentions: head -> (N, all slots, 1 + num_patches) A³ selection weights (each row sums to 1; token 0 is
            the class token).
    """

    logits: dict[str, Tensor]
    attentions: dict[str, Tensor]


class GroupedPointwise(nn.Module):
    """A grouped 1×1 convolution over a token sequence, ``(..., T, in) -> (..., T, out)``, computed as a batched
    matrix product (several times faster than a convolution call on a CPU).

    ``weight`` is (out, in / groups): a 1×1 convolution kernel without its spatial dimensions; output channel ``o``
    belongs to group ``o // (out / groups)``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f'{in_features} -> {out_features} features cannot be split into {groups} groups')
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        # PyTorch's default convolution initialisation (the published A³ modules keep it).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight)
        out, per_group = self.weight.shape
        weight = self.weight.view(self.groups, out // self.groups, per_group)
        return torch.einsum('...gi,goi->...go', x.unflatten(-1, (self.groups, per_group)), weight).flatten(-2)


class A3Module(nn.Module):
    """A³ (token learner): ``num_slots`` weighted averages of the encoder's tokens.

    LayerNorm, then a grouped 1×1 convolution and a 1×1 convolution score every token for every slot (softmax over
    the tokens); a grouped 1×1 convolution gives the token features that the scores average; a final LayerNorm.

    Args:
        dim: token width.
        num_slots: output slots.
        groups: groups of the grouped convolutions (must divide ``dim``).
        norm_eps: epsilon of both LayerNorms.
    """

    def __init__(self, dim: int, num_slots: int, groups: int = 8, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f'A3 module: embed_dim {dim} is not a multiple of a3_groups={groups}')
        self.token_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.select = nn.Sequential(GroupedPointwise(dim, dim, groups), GroupedPointwise(dim, num_slots))
        self.feat = GroupedPointwise(dim, dim, groups)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, dim) tokens -> (N, num_slots, dim) slot features and (N, num_slots, T) selection weights."""
        x = self.token_norm(tokens)
        weights = self.select(x).transpose(1, 2).softmax(-1)
        slots = torch.bmm(weights, self.feat(x))
        return self.norm(slots), weights


class MGPSTR(ViTEncoder):
    """The MGP-STR network: a :class:`~strhub.models.modules.ViTEncoder` with a class token and no final norm, three
    A³ modules and their heads.

    Args:
        num_classes: head -> classes (``char``, ``bpe``, ``wordpiece``).
        max_label_length: longest label in characters; the A³ modules produce ``max_label_length + 2`` slots (start
            slot, characters, end token).
        img_size, patch_size: (height, width) of the input and of a patch; the patch must divide the image.
        embed_dim: token width.
        depth: transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        qkv_bias: biases in the attention projections.
        drop_path_rate: stochastic depth of the last block (linearly increasing from 0 over the blocks).
        norm_eps: LayerNorm epsilon of the blocks (1e-6 as published with timm; the Hugging Face port uses 1e-5).
        a3_groups: groups of the A³ modules' grouped convolutions.
        a3_norm_eps: LayerNorm epsilon of the A³ modules.
    """

    def __init__(
        self,
        num_classes: Mapping[str, int],
        max_label_length: int,
        img_size: Sequence[int] = (32, 128),
        patch_size: Sequence[int] = (4, 4),
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        a3_groups: int = 8,
        a3_norm_eps: float = 1e-5,
    ) -> None:
        if sorted(num_classes) != sorted(HEADS):
            raise ValueError(f'num_classes must give the classes of the heads {list(HEADS)}; got {dict(num_classes)}')
        if max_label_length < 1:
            raise ValueError(f'max_label_length must be >= 1, got {max_label_length}')
        super().__init__(
            img_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
            qkv_bias=qkv_bias,
            prefix_tokens=1,
            norm_eps=norm_eps,
            final_norm=False,
            drop_path_rate=drop_path_rate,
        )
        self.max_label_length = max_label_length
        self.num_slots = max_label_length + 2
        self.a3 = nn.ModuleDict({h: A3Module(embed_dim, self.num_slots, a3_groups, a3_norm_eps) for h in HEADS})
        self.heads = nn.ModuleDict({h: nn.Linear(embed_dim, num_classes[h]) for h in HEADS})
        # timm's ViT initialisation for the encoder and every linear layer (the A³ modules' included).
        self.init_vit_weights()

    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, 1 + num_patches, embed_dim) tokens, the class token first (no final norm)."""
        check_images(images, self.img_size)
        return self.forward_features(images)

    def num_read_slots(self, max_length: int | None) -> int:
        """Slots read for labels of up to ``max_length`` characters (all slots when None)."""
        length = self.max_label_length if max_length is None else min(max(max_length, 0), self.max_label_length)
        return length + 2

    def forward_heads(
        self, images: Tensor, max_length: int | None = None, heads: Sequence[str] = HEADS
    ) -> MGPSTROutput:
        """Every head's logits for the first ``num_read_slots(max_length)`` slots, and the A³ weights of all slots.

        ``heads`` limits the computation to some heads.
        """
        tokens = self.encode(images)
        slots = self.num_read_slots(max_length)
        logits, attentions = {}, {}
        for head in heads:
            features, attentions[head] = self.a3[head](tokens)
            logits[head] = self.heads[head](features[:, :slots])
        return MGPSTROutput(logits, attentions)

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L + 2, char classes) character-head logits, ``L = min(max_length,
        max_label_length)``: the start slot, one slot per character and one for the end token."""
        return self.forward_heads(images, max_length, heads=('char',)).logits['char']

    def attention_grid(self, attentions: Tensor) -> Tensor:
        """(N, S, 1 + num_patches) A³ weights -> (N, S, grid height, grid width) over the image patches (the class
        token's weight is left out)."""
        return attentions[..., 1:].unflatten(-1, self.grid_size)
