"""ABINet (Fang et al., CVPR 2021): vision model, bidirectional language model and their gated fusion, iterated.

The vision model reads the image; its character distributions go (without gradient) to the language model, which
re-predicts each character from its context; a gate fuses language and vision features into the alignment
prediction, which is fed back to the language model ``iter_size`` times. The last alignment prediction is the
output. Decoding is non-autoregressive: every step processes all positions at once, and the sequence length the
language model masks with is the first EOS of the previous prediction, found with tensor ops (no host sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from strhub.models.abinet.language import BCNLanguageModel, LanguageOutput
from strhub.models.abinet.vision import VisionModel, VisionOutput
from strhub.models.modules import check_images, init_weights


def sequence_lengths(logits: Tensor, eos_id: int) -> Tensor:
    """(N, T, C) logits -> (N,) lengths up to and including the first predicted EOS (T where there is none)."""
    is_eos = logits.argmax(-1) == eos_id
    first_eos = is_eos.to(torch.uint8).argmax(-1)  # argmax returns the first maximum
    return torch.where(is_eos.any(-1), first_eos + 1, logits.shape[1])


class Alignment(nn.Module):
    """Gated fusion of language and vision features: ``g * vision + (1 - g) * language``, g = sigmoid(W [l; v])."""

    def __init__(self, num_classes: int, d_model: int = 512) -> None:
        super().__init__()
        self.w_att = nn.Linear(2 * d_model, d_model)
        self.cls = nn.Linear(d_model, num_classes)

    def forward(self, l_feature: Tensor, v_feature: Tensor) -> Tensor:
        """(N, T, E) language and vision features -> (N, T, num_classes) logits."""
        gate = torch.sigmoid(self.w_att(torch.cat((l_feature, v_feature), dim=2)))
        return self.cls(gate * v_feature + (1 - gate) * l_feature)


class ABINetOutput(NamedTuple):
    """Everything one forward pass predicts: the vision output, then per iteration the language output and the
    alignment logits (N, T, num_classes)."""

    vision: VisionOutput
    language: list[LanguageOutput]
    alignment: list[Tensor]

    @property
    def logits(self) -> Tensor:
        """The final prediction: the last alignment (the vision logits when ``iter_size`` is 0)."""
        return self.alignment[-1] if self.alignment else self.vision.logits


class ABINet(nn.Module):
    """ABINet.

    Args:
        num_classes: output classes (EOS + charset; the head predicts no BOS / padding).
        max_label_length: longest label; every prediction has ``max_label_length + 1`` positions (EOS included).
        eos_id: class id of EOS.
        img_size: (H, W) of the input; H a multiple of 32 and W of 64 for position attention.
        d_model, nhead, d_inner, dropout, activation: shared transformer sizes.
        v_num_layers: transformer encoder layers of the vision backbone.
        v_attention: vision read-out, ``position`` (ABINet) or ``attention`` (ABINet-SV).
        v_attention_mode: upsampling mode of position attention.
        l_num_layers: language model layers.
        l_use_self_attn: self-attention in the language model layers.
        l_detach: no gradient from the language model into its input distributions.
        iter_size: iterations of language correction + fusion at inference (a runtime option; 0 = vision only).
    """

    def __init__(
        self,
        num_classes: int,
        max_label_length: int,
        eos_id: int = 0,
        img_size: Sequence[int] = (32, 128),
        d_model: int = 512,
        nhead: int = 8,
        d_inner: int = 2048,
        dropout: float = 0.1,
        activation: str = 'relu',
        v_num_layers: int = 3,
        v_attention: str = 'position',
        v_attention_mode: str = 'nearest',
        l_num_layers: int = 4,
        l_use_self_attn: bool = False,
        l_detach: bool = True,
        iter_size: int = 3,
    ) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.max_label_length = max_label_length
        self.max_length = max_label_length + 1  # positions: characters + EOS
        self.eos_id = eos_id
        self.iter_size = iter_size
        shared = dict(d_model=d_model, nhead=nhead, d_inner=d_inner, dropout=dropout, activation=activation)
        self.vision = VisionModel(
            num_classes,
            self.max_length,
            self.img_size,
            attention=v_attention,
            attention_mode=v_attention_mode,
            num_layers=v_num_layers,
            **shared,
        )
        self.language = BCNLanguageModel(
            num_classes,
            self.max_length,
            num_layers=l_num_layers,
            detach=l_detach,
            use_self_attn=l_use_self_attn,
            **shared,
        )
        self.alignment = Alignment(num_classes, d_model)
        init_weights(self)

    def no_weight_decay(self) -> set[str]:
        # The language model's input projection acts like an embedding table.
        return {'language.proj.weight'}

    def language_lengths(self, logits: Tensor) -> Tensor:
        """Lengths for the language model from a prediction: up to the first EOS, at least 2 (so every position has
        context), at most T."""
        return sequence_lengths(logits, self.eos_id).clamp(2, self.max_length)

    def forward_iterations(self, images: Tensor) -> ABINetOutput:
        """The vision prediction and ``iter_size`` rounds of language correction and fusion."""
        check_images(images, self.img_size)
        if self.iter_size < 0:
            raise ValueError(f'iter_size must be >= 0, got {self.iter_size}')
        vision = self.vision(images)
        logits = vision.logits
        language, alignment = [], []
        for _ in range(self.iter_size):
            lm = self.language(logits.softmax(-1), self.language_lengths(logits))
            logits = self.alignment(lm.feature, vision.feature)
            language.append(lm)
            alignment.append(logits)
        return ABINetOutput(vision, language, alignment)

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, L, num_classes) logits of the final alignment, L = min(max_length,
        max_label_length) + 1 (the positions after it are cut)."""
        max_length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        return self.forward_iterations(images).logits[:, : max_length + 1]
