"""PARSeq's LightningModule: permutation language modelling on top of the shared base system."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from strhub.models.base import CrossEntropySystem
from strhub.models.parseq.model import PARSeq
from strhub.models.parseq.permutation import plm_loss
from strhub.models.registry import register_system


@register_system
class PARSeqSystem(CrossEntropySystem):
    """PARSeq (Bautista & Atienza, ECCV 2022).

    Args:
        arch: :class:`PARSeq` constructor arguments (sizes, decoding mode).
        perm_num: permutations per batch for permutation language modelling.
        perm_forward: always include the left-to-right permutation.
        perm_mirrored: pair every permutation with its mirror image.
        decode_ar / refine_iters: when not None, override ``arch``'s (the reference's ``model.decode_ar=false``).
        **kwargs: see :class:`BaseSystem`.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        perm_num: int = 6,
        perm_forward: bool = True,
        perm_mirrored: bool = True,
        img_size: Sequence[int] = (32, 128),
        max_label_length: int = 25,
        decode_ar: bool | None = None,
        refine_iters: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        # model.decode_ar / model.refine_iters, the reference implementation's names, override model.arch's.
        arch = {
            **dict(arch),
            **{k: v for k, v in (('decode_ar', decode_ar), ('refine_iters', refine_iters)) if v is not None},
        }
        tok = self.tokenizer
        self.model = self.build_model(
            PARSeq,
            arch,
            num_tokens=len(tok),
            max_label_length=max_label_length,
            img_size=tuple(img_size),
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
        )
        self.perm_num = perm_num
        self.perm_forward = perm_forward
        self.perm_mirrored = perm_mirrored

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        tgt = self.tokenizer.encode(labels, self.device)
        loss, _ = plm_loss(
            self.model,
            images,
            tgt,
            perm_num=self.perm_num,
            perm_forward=self.perm_forward,
            perm_mirrored=self.perm_mirrored,
        )
        return loss
