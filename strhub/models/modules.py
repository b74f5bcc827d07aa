"""Building blocks shared by several architectures (one implementation each, used by every model that needs it).

Parameter names follow the published strhub release files, so models built from these blocks load those files
with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

# ResNet-45 (Shi et al., ASTER; Fang et al., ABINet): blocks per stage and the stride of each stage's first block.
RESNET45_BLOCKS = (3, 4, 6, 6, 3)
RESNET45_STRIDES = (2, 1, 2, 1, 1)
# Each stage doubles the width; the last stage outputs ``out_channels``.
RESNET45_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 16)
RESNET45_STRIDE = 4  # overall downsampling (two stride-2 stages)


def check_images(images: Tensor, img_size: Sequence[int]) -> None:
    """Raises a clear error unless ``images`` is an (N, 3, H, W) batch at the model's ``img_size`` (H, W)."""
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != tuple(img_size):
        raise ValueError(
            f'expected images of shape (N, 3, {img_size[0]}, {img_size[1]}), got '
            f"{tuple(images.shape)}; resize them with the model's preprocessing preset"
        )


def check_patch_grid(img_size: Sequence[int], patch_size: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(img_size, patch_size)`` as tuples; a clear error unless both are (height, width) and the patch divides the
    image."""
    img_size, patch_size = tuple(img_size), tuple(patch_size)
    if len(img_size) != 2 or len(patch_size) != 2:
        raise ValueError(f'img_size {img_size} and patch_size {patch_size} must both be (height, width)')
    if any(i % p for i, p in zip(img_size, patch_size, strict=True)):
        raise ValueError(
            f'img_size {img_size} is not a multiple of patch_size {patch_size}; '
            'pick a patch size that divides the image height and width'
        )
    return img_size, patch_size


class ViTEncoder(nn.Module):
    """The ViT image encoder of PARSeq, ViTSTR, MGP-STR and TrOCR: patch embedding, optional prefix tokens (a class
    token; DeiT adds a distillation token), learned position embedding, pre-LN timm blocks, optional final norm.

    Parameter names are timm's (``patch_embed``, ``cls_token``, ``dist_token``, ``pos_embed``, ``blocks``, ``norm``),
    which the published files of all four use: a model that is a ViT plus a head subclasses this (as timm's DeiT
    subclasses its ViT) and keeps its keys at the top level; a model with an encoder part holds one.

    Args:
        img_size, patch_size: (height, width) of the input and of a patch; the patch must divide the image.
        embed_dim, depth, num_heads, mlp_ratio: Transformer sizes.
        qkv_bias: biases on the query/key/value projections.
        prefix_tokens: 0 (no class token), 1 (class token) or 2 (class and distillation tokens), placed first.
        norm_eps: LayerNorm epsilon (1e-6 is the ViT convention most published weights were trained with).
        final_norm: a LayerNorm after the last block.
        drop_path_rate: stochastic depth of the last block, increasing linearly from 0 over the blocks.
    """

    def __init__(
        self,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        prefix_tokens: int = 0,
        norm_eps: float = 1e-6,
        final_norm: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        img_size, patch_size = check_patch_grid(img_size, patch_size)
        if prefix_tokens not in (0, 1, 2):
            raise ValueError(
                f'prefix_tokens must be 0, 1 (class token) or 2 (class + distillation), got {prefix_tokens}'
            )
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not a multiple of num_heads {num_heads}')
        self.img_size = img_size
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_prefix_tokens = prefix_tokens
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans=3, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if prefix_tokens >= 1 else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if prefix_tokens == 2 else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + prefix_tokens, embed_dim))
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *(
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dp, norm_layer=norm_layer)
                for dp in drop_path
            )
        )
        self.norm = norm_layer(embed_dim) if final_norm else None

    def init_vit_weights(self, cls_std: float = 0.02, cls_truncated: bool = True) -> None:
        """The ViT/DeiT initialisation: position embedding and class token from a (truncated) normal, every linear
        layer of this module (heads of a subclass included) truncated-normal with zero bias; convolutions and norms
        keep PyTorch's defaults."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            (nn.init.trunc_normal_ if cls_truncated else nn.init.normal_)(self.cls_token, std=cls_std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (positional parameters and prefix tokens)."""
        return {'pos_embed'} | {name for name in ('cls_token', 'dist_token') if getattr(self, name) is not None}

    def forward_features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, prefix_tokens + num_patches, embed_dim) tokens, the prefix token(s) first."""
        x = self.patch_embed(images)
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return x if self.norm is None else self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_features(images)

    def freeze(self, num_blocks: int) -> None:
        """Stops gradients to the embeddings (patch, prefix tokens, positions) and the first ``num_blocks`` blocks;
        ``num_blocks`` = depth freezes the final norm too (the whole encoder)."""
        depth = len(self.blocks)
        if not 0 <= num_blocks <= depth:
            raise ValueError(f'cannot freeze {num_blocks} encoder blocks: the encoder has {depth} (use 0..{depth})')
        if num_blocks == 0:
            return
        frozen: list[nn.Module | nn.Parameter] = [self.patch_embed, self.pos_embed]
        frozen += [t for t in (self.cls_token, self.dist_token) if t is not None]
        frozen += list(self.blocks[:num_blocks]) + (
            [self.norm] if num_blocks == depth and self.norm is not None else []
        )
        for item in frozen:
            for p in item.parameters() if isinstance(item, nn.Module) else [item]:
                p.requires_grad_(False)


def init_weights(module: nn.Module, skip: Iterable[nn.Module] = ()) -> None:
    """The initialisation the published strhub models were trained from, applied to every submodule of ``module``:
    truncated normal (std 0.02) linear layers and embeddings, Kaiming normal (fan-out) convolutions, unit-weight
    zero-bias norms, Xavier attention input projections, zero biases. Recurrent layers keep PyTorch's default.
    Modules in ``skip`` (and their children) are left as they are.
    """
    skipped = {id(m) for s in skip for m in s.modules()}
    for m in module.modules():
        if id(m) in skipped:
            continue
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
            if m.weight is not None:
                nn.init.ones_(m.weight)
        elif isinstance(m, nn.MultiheadAttention):
            # Re-drawn per layer: nn.Transformer* clone one layer, so they would otherwise start identical.
            if m.in_proj_weight is not None:
                nn.init.xavier_uniform_(m.in_proj_weight)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)
            continue
        else:
            continue
        if getattr(m, 'bias', None) is not None:
            nn.init.zeros_(m.bias)


class BidirectionalLSTM(nn.Module):
    """A bidirectional LSTM followed by a linear projection of both directions' states (CRNN, TRBA/TRBC).

    Args:
        input_size: features per time step in.
        hidden_size: LSTM state size per direction.
        output_size: features per time step out.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, input_size) -> (N, T, output_size)."""
        # After DataParallel/DDP replication or a device move the weights may no longer be one contiguous block,
        # which cuDNN needs; re-flattening is a no-op when they already are.
        self.rnn.flatten_parameters()
        return self.linear(self.rnn(x)[0])


class BasicBlock(nn.Module):
    """ResNet basic block: two convolutions with batch norm and a residual connection.

    Two published variants share this block: TRBA's ResNet (two 3x3 convolutions, ``first_kernel=3``) and ABINet's
    ResNet-45 (1x1 then 3x3, ``first_kernel=1``). The stride sits on the first 3x3 convolution of the block.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: spatial stride of the block.
        downsample: projection of the input for the residual when shape changes (conv 1x1 + BN), or None.
        first_kernel: kernel size of the first convolution, 3 or 1.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, first_kernel: int = 3
    ) -> None:
        super().__init__()
        if first_kernel not in (1, 3):
            raise ValueError(f'first_kernel must be 1 or 3, got {first_kernel}')
        first_stride = stride if first_kernel == 3 else 1
        self.conv1 = nn.Conv2d(inplanes, planes, first_kernel, first_stride, first_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride // first_stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(N, inplanes, H, W) -> (N, planes, H / stride, W / stride)."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


def downsample_projection(inplanes: int, planes: int, stride: int = 1) -> nn.Sequential | None:
    """The residual projection a :class:`BasicBlock` needs when stride or width change (conv 1x1 + BN), else None."""
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class ResNet45(nn.Module):
    """ResNet-45: a 3x3 stem and five stages of basic blocks (1x1 then 3x3 convolution); output stride 4.

    Used by ABINet (its vision backbone, published names ``conv1``, ``bn1``, ``layer1`` .. ``layer5``) and by
    ACDS-STR (its convolutional stem, which also taps the intermediate stages for a feature pyramid).

    Args:
        out_channels: channels of the last stage; the stages have 1/16, 1/8, 1/4, 1/2 and 1 times that (the
            published models: 32, 64, 128, 256, 512).
    """

    def __init__(self, out_channels: int = 512) -> None:
        super().__init__()
        if out_channels % 16:
            raise ValueError(f'ResNet-45 needs out_channels divisible by 16, got {out_channels}')
        self.widths = tuple(out_channels // 16 * m for m in RESNET45_WIDTH_MULTIPLIERS)
        self.conv1 = nn.Conv2d(3, self.widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = self.widths[0]
        for i, (planes, blocks, stride) in enumerate(zip(self.widths, RESNET45_BLOCKS, RESNET45_STRIDES, strict=True)):
            downsample = downsample_projection(inplanes, planes, stride)
            stage = [BasicBlock(inplanes, planes, stride, downsample, first_kernel=1)]
            stage += [BasicBlock(planes, planes, first_kernel=1) for _ in range(blocks - 1)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*stage))
            inplanes = planes

    def forward_stages(self, images: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> the stem's output followed by each stage's: six maps, ``(N, widths[0], H, W)`` (stem),
        then ``(N, widths[i], H / s, W / s)`` for stage ``i`` with ``s`` 2, 2, 4, 4, 4."""
        x = self.relu(self.bn1(self.conv1(images)))
        outputs = [x]
        for i in range(len(RESNET45_BLOCKS)):
            x = getattr(self, f'layer{i + 1}')(x)
            outputs.append(x)
        return outputs

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, out_channels, H / 4, W / 4)."""
        return self.forward_stages(images)[-1]
