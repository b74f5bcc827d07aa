"""TRBA's and TRBC's LightningModules: one front end, a cross-entropy (attention) or a CTC objective."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from strhub.models.base import CrossEntropySystem, CTCSystem
from strhub.models.registry import register_system
from strhub.models.trba.model import TRBA, TRBC


@register_system
class TRBASystem(CrossEntropySystem):
    """TPS-ResNet-BiLSTM-Attention (Baek et al., ICCV 2019), trained with teacher forcing.

    Validation decodes greedily for as many steps as the longest label needs (the shared
    :meth:`CrossEntropySystem.forward_logits_loss`), as the published models were validated.

    Args:
        arch: :class:`TRBA` constructor arguments (``num_fiducial``, ``output_channel``, ``hidden_size`` ...).
        img_size: (height, width) of the input.
        max_label_length: longest label decoded.
        **kwargs: see :class:`BaseSystem`.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        img_size: Sequence[int] = (32, 128),
        max_label_length: int = 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        tok = self.tokenizer
        self.model = self.build_model(
            TRBA,
            arch,
            num_classes=len(tok),
            max_label_length=max_label_length,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            img_size=tuple(img_size),
        )

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        tgt = self.tokenizer.encode(labels, self.device)  # (N, L + 2): BOS, label, EOS, padding
        logits = self.model.forward_teacher_forced(images, tgt[:, :-1])
        targets = tgt[:, 1:]
        return F.cross_entropy(logits.flatten(end_dim=1), targets.flatten(), ignore_index=self.tokenizer.pad_id)


@register_system
class TRBCSystem(CTCSystem):
    """TPS-ResNet-BiLSTM-CTC (Baek et al., ICCV 2019).

    Args:
        arch: :class:`TRBC` constructor arguments (``num_fiducial``, ``output_channel``, ``hidden_size``).
        img_size: (height, width) of the input.
        **kwargs: see :class:`BaseSystem`.
    """

    def __init__(self, arch: Mapping[str, Any], img_size: Sequence[int] = (32, 128), **kwargs: Any) -> None:
        super().__init__(img_size=img_size, **kwargs)
        self.model = self.build_model(TRBC, arch, num_classes=len(self.tokenizer), img_size=tuple(img_size))
