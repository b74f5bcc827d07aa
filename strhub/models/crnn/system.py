"""CRNN's LightningModule: the shared CTC system around :class:`CRNN`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from strhub.models.base import CTCSystem
from strhub.models.crnn.model import CRNN
from strhub.models.registry import register_system


@register_system
class CRNNSystem(CTCSystem):
    """CRNN (Shi et al., TPAMI 2017) trained with CTC.

    Args:
        arch: :class:`CRNN` constructor arguments (``hidden_size``, ``leaky_relu``, ``cnn_channels``).
        img_size: (height, width) of the input.
        **kwargs: see :class:`BaseSystem`.
    """

    def __init__(self, arch: Mapping[str, Any], img_size: Sequence[int] = (32, 128), **kwargs: Any) -> None:
        super().__init__(img_size=img_size, **kwargs)
        self.model = self.build_model(CRNN, arch, num_classes=len(self.tokenizer), img_size=tuple(img_size))
