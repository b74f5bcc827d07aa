"""TrOCR's LightningModule: teacher-forced cross-entropy, encoder freezing, generation-based prediction and
checkpoint import, on top of the shared cross-entropy system."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from strhub.data.tokenizer import Tokenizer
from strhub.models.base import CrossEntropySystem, check_kwargs
from strhub.models.registry import register_system
from strhub.models.trocr.model import TrOCR
from strhub.models.trocr.tokenizer import MissingTokenizer, SubwordTokenizer, TokenizerConfig, TrOCRCharTokenizer

log = logging.getLogger(__name__)

# Token ids a character tokenizer fixes; a char model's arch may not set them.
_TOKEN_ARGS = ('vocab_size', 'decoder_start_id', 'eos_id', 'pad_id')


@register_system
class TrOCRSystem(CrossEntropySystem):
    """TrOCR (Li et al., 2021).

    Args:
        arch: :class:`TrOCR` constructor arguments. With a sub-word tokenizer they include the vocabulary size and
            special-token ids of the published weights (checked against the tokenizer files); with ``kind: char``
            these follow from the charset. ``max_length`` (tokens decoded by default) defaults to the most tokens a
            label of ``max_label_length`` characters can take.
        tokenizer: ``model.tokenizer`` section, see :class:`~strhub.models.trocr.tokenizer.TokenizerConfig`.
        label_smoothing: label smoothing of the training cross-entropy.
        freeze_encoder_blocks: keep the encoder embeddings and its first N blocks fixed (N = depth: the whole
            encoder).
        **kwargs: see :class:`BaseSystem`.
    """

    exportable = False
    export_unsupported_reason = (
        'generation drops sequences from the batch as they end (data-dependent shapes and in-place updates), which'
        ' the tracing exporter cannot record; use the PyTorch model'
    )

    def __init__(
        self,
        arch: Mapping[str, Any],
        tokenizer: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        freeze_encoder_blocks: int = 0,
        img_size: Sequence[int] = (384, 384),
        max_label_length: int = 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, max_label_length=max_label_length, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        # null token ids in an overlay of the sub-word base config mean "not set" (char experiments).
        arch = {k: v for k, v in dict(arch).items() if not (k in _TOKEN_ARGS and v is None)}
        arch = {**self._token_args(arch), **arch}
        arch.setdefault('max_length', self._default_max_length(max_label_length))
        self.model = self.build_model(TrOCR, arch, img_size=tuple(img_size))
        self._check_tokenizer_matches_model()
        self.model.encoder.freeze(freeze_encoder_blocks)
        self.label_smoothing = label_smoothing

    def build_tokenizer(self) -> Tokenizer:
        """The ``model.tokenizer`` section's tokenizer: the charset's characters or a sub-word vocabulary, whose
        ``tokenizer.json`` then goes into the hyperparameters so that checkpoints load where its files are not."""
        section = dict(self.hparams.get('tokenizer') or {})
        check_kwargs(TokenizerConfig, section, 'model.tokenizer')
        spec = TokenizerConfig(**section)
        tokenizer = spec.build(self.charset_train, self.hparams.name)
        if isinstance(tokenizer, SubwordTokenizer) and spec.json is None:
            self.hparams['tokenizer'] = {**section, 'json': tokenizer.to_json()}
        return tokenizer

    def _token_args(self, arch: Mapping[str, Any]) -> dict[str, int]:
        tok = self.tokenizer
        if not isinstance(tok, TrOCRCharTokenizer):
            return {}  # the published vocabulary: arch holds its ids
        fixed = sorted(set(arch) & set(_TOKEN_ARGS))
        if fixed:
            raise ValueError(
                f'model.arch sets {fixed}, but with model.tokenizer.kind=char they follow from the charset; '
                'remove them (or use a sub-word tokenizer)'
            )
        ids = {'decoder_start_id': tok.decoder_start_id, 'eos_id': tok.eos_id, 'pad_id': tok.pad_id}
        return {'vocab_size': len(tok), **ids}

    def _default_max_length(self, max_label_length: int) -> int:
        tok = self.tokenizer
        if isinstance(tok, SubwordTokenizer):
            return len(tok.prefix_ids) + max_label_length * tok.max_tokens_per_char(self.charset_train)
        if isinstance(tok, MissingTokenizer):
            # Without the vocabulary assume one byte-level token per character (true of ASCII labels) and BOS.
            return max_label_length + 1
        return max_label_length

    def _check_tokenizer_matches_model(self) -> None:
        tok, model = self.tokenizer, self.model
        if not isinstance(tok, SubwordTokenizer):
            return
        if len(tok) > model.vocab_size:
            raise ValueError(
                f'the tokenizer has {len(tok)} tokens but model.arch.vocab_size is {model.vocab_size}; '
                'use the tokenizer files of these weights or set vocab_size to match'
            )
        ours = {'decoder_start_id': tok.decoder_start_id, 'eos_id': tok.eos_id, 'pad_id': tok.pad_id}
        theirs = {k: getattr(model, k) for k in ours}
        if ours != theirs:
            raise ValueError(
                f'special token ids of the tokenizer {ours} differ from model.arch {theirs}; set model.arch to the '
                "tokenizer's ids or the model.tokenizer.*_token names to the model's tokens"
            )

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """Teacher-forced cross-entropy (with ``label_smoothing``) of every target token after the decoder start."""
        tokens = self.tokenizer.encode(labels, self.device)
        logits = self.model.decode(tokens[:, :-1], self.model.encode(images))
        return F.cross_entropy(
            logits.flatten(end_dim=1),
            tokens[:, 1:].flatten(),
            ignore_index=self.tokenizer.pad_id,
            label_smoothing=self.label_smoothing,
        )

    @torch.inference_mode()
    def predict(self, images: Tensor) -> tuple[list[str], list[Tensor]]:
        """Images -> decoded strings and the probabilities of their tokens (EOS included), with the model's current
        ``beam_size``: the tokens are those decoding chose, not the argmax of per-position logits."""
        generation = self.model.generate(images)
        return self.tokenizer.decode_tokens(generation.tokens, generation.token_log_probs.exp())
