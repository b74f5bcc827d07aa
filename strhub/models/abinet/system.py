"""ABINet's LightningModule: the published training schedule and losses, and language-model pre-training on text.

Training follows the reference recipe:

1. Vision pre-training (the first ``vision_pretrain_fraction`` of the optimizer steps; 8 of 18 epochs as
   published): the vision model learns from the images alone. The language model learns, independently, to
   re-predict the ground-truth labels (``pretrain_lm_on_labels``; or stays frozen, e.g. after pre-training it on
   text), and the fusion learns on detached features, only so that every parameter is used (a DDP requirement).
2. Joint training: the full iterative model; the fusion is re-initialised once at the start of this phase.

The loss of each phase is the weighted sum of the vision, language and alignment cross-entropies, each averaged
over the iterations. The language model has its own learning rate (``l_lr``).

``lm_only`` trains the language model alone on labels (``+experiment=tune_abinet-lm`` feeds it a word list); its
checkpoints initialise the language model of a full ABINet through ``pretrained=<checkpoint>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from strhub.models.abinet.model import ABINet
from strhub.models.base import CrossEntropySystem
from strhub.models.modules import init_weights
from strhub.models.registry import register_system

log = logging.getLogger(__name__)

# Checkpoint entry: the fusion was trained during vision pre-training and still has to be re-initialised.
ALIGNMENT_RESET_KEY = 'abinet_alignment_reset_pending'


@register_system
class ABINetSystem(CrossEntropySystem):
    """ABINet (Fang et al., CVPR 2021) and ABINet-SV.

    Args:
        arch: :class:`ABINet` constructor arguments (sizes, read-out, ``iter_size``).
        l_lr: base learning rate of the language model (scaled like ``lr``).
        v_loss_weight / l_loss_weight / a_loss_weight: weights of the vision, language and alignment losses.
        vision_pretrain_fraction: fraction of the optimizer steps spent on vision pre-training (0 = joint training
            from the start, e.g. when fine-tuning a trained ABINet).
        pretrain_lm_on_labels: during vision pre-training, train the language model on the ground-truth labels
            (the published recipe); false keeps it (and the fusion) out of that phase, for which DDP then searches
            for unused parameters (:attr:`ddp_find_unused_parameters`, set automatically by ``trainer=ddp``).
        lm_only: train only the language model, on labels (images are ignored and may be absent); it then uses
            ``lr``, the learning rate that sweeps and ``model.lr=`` act on.
        **kwargs: see :class:`BaseSystem`.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        l_lr: float = 3e-4,
        v_loss_weight: float = 1.0,
        l_loss_weight: float = 1.0,
        a_loss_weight: float = 1.0,
        vision_pretrain_fraction: float = 8 / 18,
        pretrain_lm_on_labels: bool = True,
        lm_only: bool = False,
        img_size: Sequence[int] = (32, 128),
        max_label_length: int = 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        if not 0.0 <= vision_pretrain_fraction <= 1.0:
            raise ValueError(f'vision_pretrain_fraction must be in [0, 1], got {vision_pretrain_fraction}')
        tok = self.tokenizer
        self.model = self.build_model(
            ABINet,
            arch,
            num_classes=len(tok.charset) + 1,  # EOS + charset; the head never predicts BOS or padding
            max_label_length=max_label_length,
            eos_id=tok.eos_id,
            img_size=tuple(img_size),
        )
        self.l_lr = l_lr
        self.loss_weights = {'vision': v_loss_weight, 'language': l_loss_weight, 'alignment': a_loss_weight}
        self.vision_pretrain_fraction = vision_pretrain_fraction
        self.pretrain_lm_on_labels = pretrain_lm_on_labels
        self.lm_only = lm_only
        self.alignment_reset_pending = False
        if lm_only:
            self.model.vision.requires_grad_(False)
            self.model.alignment.requires_grad_(False)

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """The language model and the fusion get no gradient during vision pre-training without
        ``pretrain_lm_on_labels``, nor in joint training with ``iter_size`` 0."""
        if self.lm_only:
            return False  # the frozen parts have requires_grad off, which DDP skips
        pretraining_without_lm = self.vision_pretrain_fraction > 0 and not self.pretrain_lm_on_labels
        return pretraining_without_lm or self.model.iter_size == 0

    # -- schedule -----------------------------------------------------------------------------------------------

    @property
    def in_vision_pretraining(self) -> bool:
        """Whether the current optimizer step belongs to the vision pre-training phase."""
        if self.lm_only or self.vision_pretrain_fraction <= 0:
            return False
        return self.global_step < self.vision_pretrain_fraction * self.trainer.estimated_stepping_batches

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.alignment_reset_pending and not self.in_vision_pretraining:
            log.info('vision pre-training ends at step %d: re-initialising the fusion model', self.global_step)
            self.reset_alignment()

    def reset_alignment(self) -> None:
        """Fresh fusion weights (and no optimizer moments left from training it on the pre-training objective)."""
        init_weights(self.model.alignment)
        for optimizer in self.trainer.optimizers:
            for param in self.model.alignment.parameters():
                optimizer.state.pop(param, None)
        self.alignment_reset_pending = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[ALIGNMENT_RESET_KEY] = self.alignment_reset_pending

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.alignment_reset_pending = bool(checkpoint.get(ALIGNMENT_RESET_KEY, False))

    # -- optimisation -------------------------------------------------------------------------------------------

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The shared weight-decay groups, with the language model's parameters split off at ``l_lr``."""
        language = {id(p) for p in self.model.language.parameters()}
        # In lm_only mode the language model is all that trains, at ``lr`` (the rate sweeps and model.lr act on).
        lm_lr = {} if self.lm_only else {'lr': self.effective_lr(self.l_lr)}
        groups = []
        for group in super().param_groups(weight_decay):
            others = [p for p in group['params'] if id(p) not in language]
            lm = [p for p in group['params'] if id(p) in language]
            if others:
                groups.append({**group, 'params': others})
            if lm:
                groups.append({**group, 'params': lm, **lm_lr})
        return groups

    # -- losses -------------------------------------------------------------------------------------------------

    def targets(self, labels: list[str]) -> Tensor:
        """(N, T) class ids without BOS, padded to every prediction's length T = max_label_length + 1."""
        targets = self.tokenizer.encode(labels, self.device)[:, 1:]
        length = self.model.max_length
        if targets.shape[1] > length:
            raise ValueError(
                f'a label is longer than max_label_length={self.max_label_length}; filter labels first '
                '(the data modules do)'
            )
        return F.pad(targets, (0, length - targets.shape[1]), value=self.tokenizer.pad_id)

    def label_inputs(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Targets as language-model input: one-hot distributions (padding as EOS) and lengths including EOS."""
        pad_id, eos_id = self.tokenizer.pad_id, self.tokenizer.eos_id
        ids = targets.masked_fill(targets == pad_id, eos_id)
        tokens = F.one_hot(ids, len(self.tokenizer.charset) + 1).float()
        return tokens, (targets != pad_id).sum(1)

    def _cross_entropy(self, logits: Tensor | Sequence[Tensor], targets: Tensor) -> Tensor:
        """Mean over predictions of each prediction's mean token cross-entropy."""
        logits = [logits] if isinstance(logits, Tensor) else logits
        losses = [
            F.cross_entropy(x.flatten(end_dim=1), targets.flatten(), ignore_index=self.tokenizer.pad_id) for x in logits
        ]
        return torch.stack(losses).mean()

    def _weighted_sum(self, losses: Mapping[str, Tensor]) -> Tensor:
        return sum(self.loss_weights[name] * loss for name, loss in losses.items())

    def pretraining_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Vision pre-training: the vision model on the images; the language model on the labels alone (or not
        at all); the fusion on detached features. Returns the total and the per-part losses."""
        targets = self.targets(labels)
        vision = self.model.vision(images)
        losses = {'vision': self._cross_entropy(vision.logits, targets)}
        if self.pretrain_lm_on_labels:
            language = self.model.language(*self.label_inputs(targets))
            losses['language'] = self._cross_entropy(language.logits, targets)
            alignment = self.model.alignment(language.feature.detach(), vision.feature.detach())
            losses['alignment'] = self._cross_entropy(alignment, targets)
            self.alignment_reset_pending = True
        return self._weighted_sum(losses), losses

    def joint_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The full iterative model: vision, every iteration's language and alignment predictions."""
        targets = self.targets(labels)
        out = self.model.forward_iterations(images)
        losses = {'vision': self._cross_entropy(out.vision.logits, targets)}
        if out.language:
            losses['language'] = self._cross_entropy([lm.logits for lm in out.language], targets)
            losses['alignment'] = self._cross_entropy(out.alignment, targets)
        return self._weighted_sum(losses), losses

    def language_logits_loss(self, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        """The language model alone, re-predicting the labels: ``(logits (N, T, C), mean loss, loss elements)``."""
        targets = self.targets(labels)
        logits = self.model.language(*self.label_inputs(targets)).logits
        loss = self._cross_entropy(logits, targets)
        return logits, loss, int((targets != self.tokenizer.pad_id).sum())

    def training_loss(self, images: Tensor | None, labels: list[str]) -> Tensor:
        if self.lm_only:
            return self.language_logits_loss(labels)[1]
        if self.in_vision_pretraining:
            loss, parts = self.pretraining_loss(images, labels)
        else:
            loss, parts = self.joint_loss(images, labels)
        for name, value in parts.items():
            self.log(f'loss_{name}', value, batch_size=len(labels))
        return loss

    def forward_logits_loss(self, images: Tensor | None, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        if self.lm_only:
            return self.language_logits_loss(labels)
        return super().forward_logits_loss(images, labels)
