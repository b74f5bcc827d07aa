"""MGP-STR's LightningModule: three granularities of targets, the summed loss, and fused decoding.

Training sums the cross-entropies of the character, BPE and WordPiece heads (each averaged over its non-padding
target slots), as published. Inference decodes each head greedily up to its end token and keeps, per image, the
prediction of the most confident head (the published fusion). ``forward`` returns the character head's logits,
so the shared machinery (benchmarks, exports) sees a plain ``images -> logits`` model; :meth:`predict` returns the
fused strings and :meth:`predict_heads` every head's.

The sub-word vocabularies are described by ``model.bpe`` and ``model.wordpiece`` (see
:class:`strhub.models.mgpstr.tokenizer.SubwordVocabSpec`): the published GPT-2 / BERT files, or vocabularies learnt
from the training labels when training starts. They are built on first use, so a model can be built (and benchmarked)
without the files, and every checkpoint carries them, so a checkpoint loads without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from strhub.models.base import BaseSystem
from strhub.models.mgpstr.model import HEADS, MGPSTR, MGPSTROutput
from strhub.models.mgpstr.tokenizer import (
    CharSlotTokenizer,
    SlotLayout,
    SubwordTokenizer,
    SubwordVocabSpec,
    build_subword_tokenizer,
)
from strhub.models.registry import register_system

FUSED = 'fused'
SUBWORD_HEADS = ('bpe', 'wordpiece')
Prediction = tuple[list[str], list[Tensor]]


def fuse_predictions(per_head: Sequence[Prediction]) -> Prediction:
    """Per image, the prediction of the head with the highest confidence (product of its slot probabilities);
    the first head wins ties, as published (character, then BPE, then WordPiece)."""
    texts, probs = [], []
    for i in range(len(per_head[0][0])):
        scores = [float(head_probs[i].prod()) for _, head_probs in per_head]
        best = scores.index(max(scores))
        texts.append(per_head[best][0][i])
        probs.append(per_head[best][1][i])
    return texts, probs


def dataset_labels(dataset: Dataset) -> list[str]:
    """Every (filtered) label of a training dataset: LMDB datasets and concatenations or subsets of them."""
    if isinstance(dataset, ConcatDataset):
        return [label for part in dataset.datasets for label in dataset_labels(part)]
    if isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    labels = getattr(dataset, 'labels', None)
    if labels is None:
        raise TypeError(
            f'cannot read the labels of a {type(dataset).__name__} to learn sub-word vocabularies from; use LMDB '
            'training data or the published vocabularies (model.bpe.source=files, model.wordpiece.source=files)'
        )
    return list(labels)


@register_system
class MGPSTRSystem(BaseSystem):
    """MGP-STR (Wang et al., ECCV 2022).

    Args:
        arch: :class:`MGPSTR` constructor arguments (encoder sizes, A³ settings).
        bpe: the BPE head's vocabulary (:class:`SubwordVocabSpec` fields).
        wordpiece: the WordPiece head's vocabulary (:class:`SubwordVocabSpec` fields).
        **kwargs: see :class:`BaseSystem`.
    """

    exportable = False
    export_unsupported_reason = (
        "its prediction fuses three heads (characters, BPE, WordPiece) by confidence, which the ONNX reader's "
        'single-vocabulary decoding cannot reproduce; use the PyTorch model'
    )

    tokenizer_class = CharSlotTokenizer
    final_head = FUSED  # the entry of predict_heads() that predict() returns
    offers_attention_maps = True

    def __init__(
        self,
        arch: Mapping[str, Any],
        bpe: Mapping[str, Any],
        wordpiece: Mapping[str, Any],
        img_size: Sequence[int] = (32, 128),
        max_label_length: int = 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        self.vocab_specs = {
            'bpe': SubwordVocabSpec.from_mapping(bpe, 'bpe').resolve('bpe'),
            'wordpiece': SubwordVocabSpec.from_mapping(wordpiece, 'wordpiece').resolve('wordpiece'),
        }
        self._subword: dict[str, SubwordTokenizer] = {}
        num_classes = {'char': len(self.tokenizer), **{h: int(s.size) for h, s in self.vocab_specs.items()}}
        self.model = self.build_model(
            MGPSTR, arch, num_classes=num_classes, max_label_length=max_label_length, img_size=tuple(img_size)
        )

    # -- vocabularies -------------------------------------------------------------------------------------------

    def subword_tokenizer(self, head: str) -> SubwordTokenizer:
        """The vocabulary of a sub-word head, built on first use."""
        if head not in self._subword:
            self._subword[head] = build_subword_tokenizer(head, self.vocab_specs[head], self.charset_train)
        return self._subword[head]

    @property
    def head_tokenizers(self) -> dict[str, SlotLayout]:
        """Head -> its tokenizer, in the published order."""
        return {'char': self.tokenizer, **{h: self.subword_tokenizer(h) for h in SUBWORD_HEADS}}

    def setup(self, stage: str) -> None:
        # Vocabularies are resolved before the first step: learnt from the training labels where configured, and
        # missing files reported now rather than at the first batch.
        if stage != 'fit':
            return
        for head, spec in self.vocab_specs.items():
            if head in self._subword:
                continue
            labels = None
            if spec.source == 'train' and not spec.serialized:
                datamodule = self.trainer.datamodule
                if datamodule is None or not hasattr(datamodule, 'train_dataset'):
                    raise RuntimeError(
                        f'model.{head}.source=train learns the vocabulary from the training labels, which needs a '
                        'data module with a train_dataset (the default LMDB data module)'
                    )
                labels = dataset_labels(datamodule.train_dataset)
            self._subword[head] = build_subword_tokenizer(head, spec, self.charset_train, labels)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The vocabularies travel in the checkpoint's config, so that loading needs neither files nor labels.
        hparams = dict(checkpoint.get('hyper_parameters', {}))
        for head, tokenizer in self._subword.items():
            hparams[head] = {**dict(hparams.get(head, {})), 'serialized': tokenizer.to_dict()}
        checkpoint['hyper_parameters'] = hparams

    # -- losses -------------------------------------------------------------------------------------------------

    def encode_targets(self, labels: list[str]) -> dict[str, Tensor]:
        """Head -> (N, L) targets, all of the same length L: the longest encoded label, at most every slot."""
        tokenizers = self.head_tokenizers
        targets = {head: tok.encode(labels) for head, tok in tokenizers.items()}
        length = min(max(t.shape[1] for t in targets.values()), self.model.num_slots)
        for head, tok in tokenizers.items():
            if targets[head].shape[1] > length:
                targets[head] = tok.encode(labels, length=length)
            else:
                targets[head] = F.pad(targets[head], (0, length - targets[head].shape[1]), value=tok.pad_id)
        return {head: t.to(self.device) for head, t in targets.items()}

    def head_losses(self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Head -> mean cross-entropy over its non-padding target slots (logits may have more slots)."""
        losses = {}
        for head, tok in self.head_tokenizers.items():
            target = targets[head]
            head_logits = logits[head][:, : target.shape[1]]
            losses[head] = F.cross_entropy(head_logits.flatten(end_dim=1), target.flatten(), ignore_index=tok.pad_id)
        return losses

    def _forward_with_loss(
        self, images: Tensor, labels: list[str], all_slots: bool
    ) -> tuple[MGPSTROutput, Tensor, int]:
        targets = self.encode_targets(labels)
        length = next(iter(targets.values())).shape[1]
        output = self.model.forward_heads(images, None if all_slots else length - 2)
        loss = sum(self.head_losses(output.logits, targets).values())
        return output, loss, int((targets['char'] != self.tokenizer.pad_id).sum())

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        return self._forward_with_loss(images, labels, all_slots=False)[1]

    def forward_logits_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        output, loss, numel = self._forward_with_loss(images, labels, all_slots=False)
        return output.logits['char'], loss, numel

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        # Every slot is decoded: a prediction cut at the longest label would lose its end token (confidence 0).
        output, loss, numel = self._forward_with_loss(images, labels, all_slots=True)
        preds, probs = self.decode_heads(output.logits)[self.final_head]
        self.val_metrics.update('val', preds, labels, [float(p.prod()) for p in probs])
        self.log_val_loss(loss, numel)

    # -- inference ----------------------------------------------------------------------------------------------

    def decode_heads(self, logits: Mapping[str, Tensor]) -> dict[str, Prediction]:
        """Head logits (N, S, classes) -> every head's greedy prediction, then the fused one (key ``fused``)."""
        decoded = {head: tok.decode(logits[head].softmax(-1)) for head, tok in self.head_tokenizers.items()}
        decoded[FUSED] = fuse_predictions([decoded[head] for head in HEADS])
        return decoded

    @torch.inference_mode()
    def predict_heads(self, images: Tensor) -> dict[str, Prediction]:
        """Images -> head name (``char``, ``bpe``, ``wordpiece``, ``fused``) -> strings and slot probabilities."""
        return self.decode_heads(self.model.forward_heads(images).logits)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        """Images -> fused strings and the winning head's slot probabilities (their product is the confidence)."""
        return self.predict_heads(images)[self.final_head]

    @torch.inference_mode()
    def attention_maps(self, images: Tensor) -> dict[str, tuple[list[list[str]], Tensor]]:
        """Images -> head -> (per image, the greedy tokens of slots 1.. up to the end token, shown as ``[end]``;
        (N, slots, grid height, grid width) A³ weights over the patches). Token ``j`` was read from slot ``j + 1``."""
        output = self.model.forward_heads(images)
        return {
            head: (tok.slot_tokens(output.logits[head]), self.model.attention_grid(output.attentions[head]))
            for head, tok in self.head_tokenizers.items()
        }
