"""ViTSTR's LightningModule: per-position cross-entropy on top of the shared base system."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from strhub.models.base import CrossEntropySystem
from strhub.models.registry import register_system
from strhub.models.vitstr.model import ViTSTR


@register_system
class ViTSTRSystem(CrossEntropySystem):
    """ViTSTR (Atienza, ICDAR 2021).

    Args:
        arch: :class:`ViTSTR` constructor arguments (patch size and transformer sizes).
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
        # The head predicts EOS and the charset, never BOS or padding.
        self.model = self.build_model(
            ViTSTR,
            arch,
            num_classes=len(self.tokenizer) - 2,
            max_label_length=max_label_length,
            img_size=tuple(img_size),
        )

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        # As published: the loss of the validation path, reading only as many positions as the longest label needs.
        return self.forward_logits_loss(images, labels)[1]
