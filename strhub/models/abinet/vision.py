"""ABINet's vision model: ResNet-45 + transformer encoder features, read out by attention into one vector per
character position.

Two read-outs are published: position attention (ABINet) and the parallel visual attention of SRN (ABINet-SV).
Attribute names follow the published strhub release files (``backbone.resnet.layer1.0.conv1`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from strhub.models.abinet.positional import PositionalEncoding
from strhub.models.modules import RESNET45_STRIDE, ResNet45

FEATURE_STRIDE = RESNET45_STRIDE  # overall downsampling of the backbone


class VisionOutput(NamedTuple):
    """Per-position features (N, T, E) and class logits (N, T, num_classes)."""

    feature: Tensor
    logits: Tensor


class ResNetTransformer(nn.Module):
    """ResNet-45 feature map, flattened and refined by a post-norm transformer encoder (with sinusoidal positions).

    Args:
        feature_size: (h, w) of the ResNet feature map (the image size / 4).
    """

    def __init__(
        self,
        feature_size: Sequence[int],
        d_model: int,
        nhead: int,
        d_inner: int,
        dropout: float,
        activation: str,
        num_layers: int,
    ) -> None:
        super().__init__()
        h, w = feature_size
        self.resnet = ResNet45(d_model)
        self.pos_encoder = PositionalEncoding(d_model, max_len=h * w, dropout=dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_inner, dropout, activation, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, d_model, H / 4, W / 4)."""
        features = self.resnet(images)
        n, c, h, w = features.shape
        seq = self.transformer(self.pos_encoder(features.flatten(2).transpose(1, 2)))  # (N, h * w, C), row-major
        return seq.transpose(1, 2).reshape(n, c, h, w)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


def _upsample_conv_bn_relu(
    in_channels: int, out_channels: int, mode: str, scale_factor: int | None = None, size: tuple[int, int] | None = None
) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(size=size, scale_factor=scale_factor, mode=mode, align_corners=None if mode == 'nearest' else True),
        nn.Conv2d(in_channels, out_channels, 3, 1, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PositionAttention(nn.Module):
    """Position attention (Fang et al.): sinusoidal queries, one per character position, attend over keys computed
    from the feature map by a small convolutional U-Net; the values are the features themselves.

    Args:
        max_length: positions read out (characters + EOS).
        feature_size: (h, w) of the feature map; h must be a multiple of 8 and w of 16 (the U-Net's strides).
        in_channels: feature channels (d_model).
        num_channels: width of the U-Net.
        mode: interpolation mode of the U-Net's upsampling.
    """

    ENCODER_STRIDES = ((1, 2), (2, 2), (2, 2), (2, 2))

    def __init__(
        self,
        max_length: int,
        feature_size: Sequence[int],
        in_channels: int = 512,
        num_channels: int = 64,
        mode: str = 'nearest',
    ) -> None:
        super().__init__()
        h, w = feature_size
        if h % 8 or w % 16:
            raise ValueError(
                f'position attention needs a feature map whose height is a multiple of 8 and width a multiple of 16 '
                f'(image height of 32k, width of 64k); got {h}x{w}'
            )
        self.k_encoder = nn.Sequential(
            _conv_bn_relu(in_channels, num_channels, self.ENCODER_STRIDES[0]),
            *(_conv_bn_relu(num_channels, num_channels, s) for s in self.ENCODER_STRIDES[1:]),
        )
        self.k_decoder = nn.Sequential(
            *(_upsample_conv_bn_relu(num_channels, num_channels, mode, scale_factor=2) for _ in range(3)),
            _upsample_conv_bn_relu(num_channels, in_channels, mode, size=(h, w)),
        )
        self.pos_encoder = PositionalEncoding(in_channels, max_len=max_length)
        self.project = nn.Linear(in_channels, in_channels)
        self.max_length = max_length

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(N, E, h, w) features -> (N, T, E) attended features and (N, T, h, w) attention maps."""
        n, e, h, w = features.shape
        keys = features
        skips = []
        for layer in self.k_encoder:
            keys = layer(keys)
            skips.append(keys)
        # U-Net: each upsampling adds the encoder output of the same resolution.
        for layer, skip in zip(self.k_decoder[:-1], reversed(skips[:-1]), strict=True):
            keys = layer(keys) + skip
        keys = self.k_decoder[-1](keys)
        queries = self.project(self.pos_encoder.encodings(self.max_length))  # (T, E), the same for every image
        scores = torch.softmax(queries @ keys.flatten(2) / e**0.5, dim=-1)  # (N, T, h * w)
        attended = scores @ features.flatten(2).transpose(1, 2)
        return attended, scores.view(n, -1, h, w)


class ParallelVisualAttention(nn.Module):
    """Parallel visual attention (SRN, Yu et al. 2020), the read-out of ABINet-SV: a learned embedding of each
    reading-order position, mixed with every feature vector through a tanh layer, scores the feature map.

    Args:
        max_length: positions read out (characters + EOS).
        num_features: h * w of the feature map.
        in_channels: feature channels (d_model).
    """

    def __init__(self, max_length: int, num_features: int, in_channels: int = 512) -> None:
        super().__init__()
        self.f0_embedding = nn.Embedding(max_length, in_channels)
        self.w0 = nn.Linear(max_length, num_features)
        self.wv = nn.Linear(in_channels, in_channels)
        self.we = nn.Linear(in_channels, max_length)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(N, E, h, w) features -> (N, T, E) attended features and (N, T, h, w) attention maps."""
        n, _, h, w = features.shape
        values = features.flatten(2).transpose(1, 2)  # (N, h * w, E)
        order = self.w0(self.f0_embedding.weight.t()).t()  # (h * w, E): reading order spread over the feature map
        scores = torch.softmax(self.we(torch.tanh(order + self.wv(values))).transpose(1, 2), dim=-1)  # (N, T, h * w)
        return scores @ values, scores.view(n, -1, h, w)


class VisionModel(nn.Module):
    """Backbone + attention read-out + classifier.

    Args:
        num_classes: output classes (EOS + charset).
        max_length: positions read out (max label length + 1 for EOS).
        img_size: (H, W) of the input images.
        attention: ``position`` (ABINet) or ``attention`` (parallel visual attention, ABINet-SV).
        attention_mode: upsampling mode of position attention.
        num_layers: transformer encoder layers on top of the ResNet.
    """

    def __init__(
        self,
        num_classes: int,
        max_length: int,
        img_size: Sequence[int],
        d_model: int = 512,
        nhead: int = 8,
        d_inner: int = 2048,
        dropout: float = 0.1,
        activation: str = 'relu',
        attention: str = 'position',
        attention_mode: str = 'nearest',
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if d_model % 16:
            raise ValueError(f'd_model must be divisible by 16 (the ResNet-45 widths are 1/16 .. 1 of it): {d_model}')
        if any(s % FEATURE_STRIDE for s in img_size):
            raise ValueError(f'img_size {tuple(img_size)} must be a multiple of {FEATURE_STRIDE} (the ResNet stride)')
        feature_size = (img_size[0] // FEATURE_STRIDE, img_size[1] // FEATURE_STRIDE)
        self.backbone = ResNetTransformer(feature_size, d_model, nhead, d_inner, dropout, activation, num_layers)
        if attention == 'position':
            self.attention = PositionAttention(max_length, feature_size, d_model, mode=attention_mode)
        elif attention == 'attention':
            self.attention = ParallelVisualAttention(max_length, feature_size[0] * feature_size[1], d_model)
        else:
            raise ValueError(f"unknown vision attention {attention!r}; valid: 'position', 'attention'")
        self.cls = nn.Linear(d_model, num_classes)

    def forward(self, images: Tensor) -> VisionOutput:
        """(N, 3, H, W) -> features (N, T, E) and logits (N, T, num_classes)."""
        feature, _ = self.attention(self.backbone(images))
        return VisionOutput(feature, self.cls(feature))
