"""Label <-> id conversion and greedy decoding of model outputs.

Id conventions follow the published strhub checkpoints, so their output heads line up:

- :class:`CharTokenizer` (attention / cross-entropy models): ``[E]`` = 0, the charset in order, then
  ``[B]`` and ``[P]``. Heads that never predict ``[B]``/``[P]`` use the first ``len(charset) + 1`` ids.
- :class:`CTCTokenizer`: blank = 0, then the charset in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


class Tokenizer(ABC):
    """Maps characters to ids and decodes per-position class probabilities into strings."""

    def __init__(self, charset: str, specials_first: Sequence[str] = (), specials_last: Sequence[str] = ()) -> None:
        if len(set(charset)) != len(charset):
            dupes = sorted({c for c in charset if charset.count(c) > 1})
            raise ValueError(f'charset has repeated characters {dupes}: each character must appear once')
        self.charset = charset
        self.itos = tuple(specials_first) + tuple(charset) + tuple(specials_last)
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def _tok2ids(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f'label {text!r} has character {e.args[0]!r} outside the charset; filter labels with '
                'the training charset first (the data module does this)'
            ) from None

    def ids2tok(self, ids: Sequence[int]) -> str:
        return ''.join(self.itos[i] for i in ids)

    @abstractmethod
    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Encodes labels into a padded id tensor for the loss."""

    @abstractmethod
    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        """Greedy decoding.

        Args:
            probs: (N, L, C) class probabilities (softmax of the logits).
            raw: keep every position (no EOS cut, no CTC collapsing); for inspection.

        Returns:
            The N strings and, per string, the probabilities of the tokens that make up the prediction
            (1-D tensors on the CPU); their product is the sequence confidence.
        """


class CharTokenizer(Tokenizer):
    """Tokenizer for autoregressive / attention models: ``[B] label [E] [P]...`` targets."""

    EOS = '[E]'
    BOS = '[B]'
    PAD = '[P]'

    def __init__(self, charset: str) -> None:
        super().__init__(charset, specials_first=(self.EOS,), specials_last=(self.BOS, self.PAD))
        self.eos_id, self.bos_id, self.pad_id = (self.stoi[s] for s in (self.EOS, self.BOS, self.PAD))

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Returns (N, 2 + max_len) ids: BOS, characters, EOS, then padding."""
        batch = [torch.as_tensor([self.bos_id] + self._tok2ids(y) + [self.eos_id], dtype=torch.long) for y in labels]
        return pad_sequence(batch, batch_first=True, padding_value=self.pad_id).to(device)

    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        max_probs, ids = probs.detach().float().max(-1)
        n, length = ids.shape
        if raw:
            ends = torch.full((n,), length, dtype=torch.long, device=ids.device)
            keep = ends
        else:
            is_eos = ids == self.eos_id
            # Position of the first EOS, or L when the model never emitted one.
            ends = torch.where(is_eos.any(1), is_eos.to(torch.uint8).argmax(1), length)
            keep = (ends + 1).clamp(max=length)  # the EOS probability counts towards the confidence
        ids, max_probs, ends, keep = ids.cpu(), max_probs.cpu(), ends.tolist(), keep.tolist()
        id_rows = ids.tolist()
        texts = [self.ids2tok(row[:end]) for row, end in zip(id_rows, ends)]
        confidences = [p[:k] for p, k in zip(max_probs, keep)]
        return texts, confidences


class CTCTokenizer(Tokenizer):
    """Tokenizer for CTC models: blank = 0; decoding collapses repeats and drops blanks."""

    BLANK = '[B]'

    def __init__(self, charset: str) -> None:
        super().__init__(charset, specials_first=(self.BLANK,))
        self.blank_id = self.stoi[self.BLANK]

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Returns (N, max_len) ids padded with the blank id (lengths come from the labels)."""
        batch = [torch.as_tensor(self._tok2ids(y), dtype=torch.long) for y in labels]
        if not batch:
            return torch.empty(0, 0, dtype=torch.long, device=device)
        return pad_sequence(batch, batch_first=True, padding_value=self.blank_id).to(device)

    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        max_probs, ids = probs.detach().float().max(-1)
        if raw:
            keep = torch.ones_like(ids, dtype=torch.bool)
        else:
            # A token is emitted where it differs from its predecessor and is not blank.
            changed = torch.ones_like(ids, dtype=torch.bool)
            changed[:, 1:] = ids[:, 1:] != ids[:, :-1]
            keep = changed & (ids != self.blank_id)
        ids, keep, max_probs = ids.cpu(), keep.cpu(), max_probs.cpu()
        texts = [self.ids2tok(row[mask].tolist()) for row, mask in zip(ids, keep)]
        # Every frame contributes to the CTC path probability, so all of them count towards the confidence.
        return texts, list(max_probs)
