"""GOT-OCR2's LightningModule: teacher-forced cross-entropy on the answer tokens, greedy generation for inference."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from strhub.models.base import BaseSystem
from strhub.models.gotocr2.model import GotOcr2
from strhub.models.gotocr2.prompts import build_prompt
from strhub.models.gotocr2.tokenizer import IGNORE_INDEX, GotOcr2Tokenizer
from strhub.models.registry import register_system

log = logging.getLogger(__name__)


@register_system
class GotOcr2System(BaseSystem):
    """GOT-OCR2 (Wei et al., 2024) reading word images with the plain-OCR prompt.

    Args:
        arch: :class:`GotOcr2` constructor arguments (``vocab_size`` null: the tokenizer's size).
        tokenizer: path of the model's ``tokenizer.json``; null builds a character tokenizer over the charset
            (for models trained from scratch; published weights need their own tokenizer).
        with_format: ask for formatted output (``OCR with format``) instead of plain text.
        freeze_vision: keep the vision encoder fixed while fine-tuning (the projector and decoder still train).
        gradient_checkpointing: recompute layer activations in the backward pass to save memory.
        **kwargs: see :class:`BaseSystem`.
    """

    exportable = False
    export_unsupported_reason = (
        'it reads through prompts and a 150k-token BPE vocabulary with a growing key/value cache; the ONNX reader '
        'decodes character vocabularies only; use the PyTorch model'
    )

    def __init__(
        self,
        arch: Mapping[str, Any],
        img_size: Sequence[int] = (1024, 1024),
        max_label_length: int = 25,
        tokenizer: str | None = None,
        with_format: bool = False,
        freeze_vision: bool = False,
        gradient_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        arch = dict(arch)
        vocab_size = arch.pop('vocab_size', None) or len(self.tokenizer)
        if vocab_size < len(self.tokenizer):
            raise ValueError(
                f'model.arch.vocab_size {vocab_size} is smaller than the tokenizer ({len(self.tokenizer)} tokens); '
                'raise it or set it to null'
            )
        self.model = self.build_model(
            GotOcr2,
            arch,
            vocab_size=vocab_size,
            max_label_length=max_label_length,
            img_size=img_size,
            image_token_id=self.tokenizer.image_token_id,
            stop_ids=self.tokenizer.stop_ids,
        )
        self.model.set_prompt(
            self.tokenizer.text_ids(build_prompt(self.model.num_image_tokens, with_format=with_format))
        )
        self.model.set_gradient_checkpointing(gradient_checkpointing)
        if freeze_vision:
            self.model.vision_tower.requires_grad_(False)

    def build_tokenizer(self) -> GotOcr2Tokenizer:
        """The published tokenizer.json (``model.tokenizer``), or a character tokenizer over the charset."""
        path = self.hparams.get('tokenizer')
        if path is not None:
            return GotOcr2Tokenizer.from_file(path)
        if (self.hparams.get('arch') or {}).get('vocab_size'):
            log.warning(
                'model.tokenizer is not set: using a character tokenizer; published GOT-OCR2 weights need '
                'model.tokenizer=<their tokenizer.json>'
            )
        return GotOcr2Tokenizer.for_charset(self.charset_train)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> tuple[list[str], list[Tensor]]:
        """(N, 3, H, W) images -> strings and per-token probabilities (the stop token's included)."""
        out = self.model.generate(images)
        return self.tokenizer.decode_ids(out.ids, out.probs)

    def forward_logits_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        """Teacher forcing: the prompt then each label's tokens; the loss covers the answer and its end token only.

        Returns (N, T, vocab) logits of the answer positions, the mean loss and the number of answer tokens.
        """
        targets = self.tokenizer.encode(labels, self.device)
        prompt = self.model.prompt_ids.expand(len(labels), -1)
        answer_in = targets[:, :-1].masked_fill(targets[:, :-1] == IGNORE_INDEX, self.tokenizer.pad_id)
        input_ids = torch.cat([prompt, answer_in], dim=1)
        logits = self.model.teacher_forced_logits(images, input_ids, prompt_length=prompt.shape[1])
        loss = F.cross_entropy(logits.flatten(end_dim=1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss, int((targets != IGNORE_INDEX).sum())

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        return self.forward_logits_loss(images, labels)[1]

    def read_prompted(
        self,
        image: Image.Image,
        box: Sequence[float] | None = None,
        color: str | None = None,
        formatted: bool = False,
        crops: int = 1,
    ) -> tuple[str, float]:
        """GOT-OCR2's region, colour, format and multi-crop prompts (see :mod:`strhub.models.gotocr2.reading`)."""
        from strhub.models.gotocr2.reading import read_image  # it imports this module

        return read_image(self, image, box, color, formatted, crops)
