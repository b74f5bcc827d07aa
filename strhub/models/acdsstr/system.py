"""ACDS-STR's LightningModule: cross-entropy over the character slots plus a weighted BCE on the core-area mask."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from strhub.models.acdsstr.masks import core_area_masks
from strhub.models.acdsstr.model import ACDSSTR
from strhub.models.base import CrossEntropySystem
from strhub.models.registry import register_system

log = logging.getLogger(__name__)

Boxes = Sequence[Sequence[Sequence[float]] | None]


@register_system
class ACDSSTRSystem(CrossEntropySystem):
    """ACDS-STR (Xue et al., IEEE TIP 2025).

    Training batches may carry per-character boxes as a third column (``data.return_boxes=true``, set by the
    ``acds-str-*`` experiments). Samples with boxes add ``mask_loss_weight`` x a weighted binary cross-entropy
    between the predicted core-area mask and the mask rasterised from their boxes; without boxes the loss is the
    recognition loss alone (logged once).

    Args:
        arch: :class:`ACDSSTR` constructor arguments.
        mask_loss_weight: weight of the mask loss (0.5 in the paper).
        mask_shrink: core size as a fraction of each character box (0.5 in the paper).
        mask_pos_weight: weight of core (positive) pixels in the BCE; None uses the batch's ratio of background to
            core pixels (the public code uses a fixed 2).
        **kwargs: see :class:`BaseSystem`.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        img_size: Sequence[int] = (32, 128),
        max_label_length: int = 25,
        mask_loss_weight: float = 0.5,
        mask_shrink: float = 0.5,
        mask_pos_weight: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        if mask_loss_weight < 0:
            raise ValueError(f'mask_loss_weight must be >= 0, got {mask_loss_weight}')
        if not 0.0 < mask_shrink <= 1.0:
            raise ValueError(f'mask_shrink is the core size as a fraction of a box, in (0, 1]; got {mask_shrink}')
        if mask_pos_weight is not None and mask_pos_weight <= 0:
            raise ValueError(f'mask_pos_weight must be > 0, or null for the batch ratio; got {mask_pos_weight}')
        self.mask_loss_weight = mask_loss_weight
        self.mask_shrink = mask_shrink
        self.mask_pos_weight = mask_pos_weight
        self.img_size = tuple(img_size)
        # The head predicts [E] and the charset, never [B] or padding.
        self.model = self.build_model(
            ACDSSTR, arch, num_classes=len(self.tokenizer) - 2, max_label_length=max_label_length, img_size=img_size
        )
        # Without guidance the mask head learns from boxes only: batches without boxes leave it without gradient.
        self.ddp_find_unused_parameters = self.model.guide_block is None and self.model.predicts_mask
        self._logged_no_boxes = False

    def training_step(self, batch: tuple, batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        boxes = batch[2] if len(batch) > 2 else None
        losses = self.training_losses(images, labels, boxes)
        n = len(labels)
        self.log('loss', losses['loss'], prog_bar=True, batch_size=n)
        self.log('loss_char', losses['char'], batch_size=n)
        if 'mask' in losses:
            self.log('loss_mask', losses['mask'], batch_size=n)
        return losses['loss']

    def training_loss(self, images: Tensor, labels: list[str], boxes: Boxes | None = None) -> Tensor:
        return self.training_losses(images, labels, boxes)['loss']

    def training_losses(self, images: Tensor, labels: list[str], boxes: Boxes | None = None) -> dict[str, Tensor]:
        """``{'loss': total, 'char': cross-entropy, 'mask': weighted BCE}``; ``mask`` only when some sample of the
        batch has boxes and the model predicts a mask.

        Args:
            images: (N, 3, H, W).
            labels: N strings.
            boxes: per sample, one ``[x0, y0, x1, y1]`` per label character in pixels of the model input, or None.
        """
        targets = self.tokenizer.encode(labels, self.device)[:, 1:]  # drop [B]: characters, [E], padding
        out = self.model.forward_all(images)
        logits = out.logits[:, 1 : targets.shape[1] + 1]  # slot 0 is MGP-STR's [GO] slot
        char_loss = F.cross_entropy(logits.flatten(end_dim=1), targets.flatten(), ignore_index=self.tokenizer.pad_id)
        losses = {'loss': char_loss, 'char': char_loss}
        if self.mask_loss_weight == 0:
            return losses
        if not self.model.predicts_mask:
            self._log_once("stem 'patch' predicts no core-area mask: training with the recognition loss alone")
            return losses
        masks, has_boxes = core_area_masks(boxes or [None] * len(labels), self.img_size, self.mask_shrink, self.device)
        if not bool(has_boxes.any()):
            self._log_once(
                'ACDS-STR: the training batches carry no per-character boxes, so training uses the recognition '
                'loss alone (no core-area mask supervision). Use data with boxes (tools/synth.py writes them) and '
                'data.return_boxes=true (+experiment=acds-str-base and acds-str-small set it)'
            )
            return losses
        mask_loss = self.mask_loss(out.mask_logits[has_boxes], masks[has_boxes])
        losses['mask'] = mask_loss
        losses['loss'] = char_loss + self.mask_loss_weight * mask_loss
        return losses

    def mask_loss(self, mask_logits: Tensor, masks: Tensor) -> Tensor:
        """Weighted BCE on logits (the public code clamps raw outputs to [0.01, 0.99], which stops the gradient of
        every pixel outside that range). Both (N, 1, H, W)."""
        if self.mask_pos_weight is None:
            positives = masks.sum()
            pos_weight = (masks.numel() - positives) / positives.clamp(min=1.0)
        else:
            pos_weight = torch.tensor(self.mask_pos_weight, device=masks.device)
        return F.binary_cross_entropy_with_logits(mask_logits, masks, pos_weight=pos_weight)

    def _log_once(self, message: str) -> None:
        if not self._logged_no_boxes:
            log.warning(message)
            self._logged_no_boxes = True
