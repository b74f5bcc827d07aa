"""GOT-OCR2's text tokenizer behind the framework's tokenizer interface.

The published model uses a byte-level BPE (Qwen) tokenizer read from a ``tokenizer.json`` with the ``tokenizers``
library. Without one (small models trained from scratch) a character tokenizer over the charset, the prompt text
and the special tokens is built in memory.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from strhub.models.gotocr2.prompts import ENDOFTEXT, IM_END, IMG_PAD, SPECIAL_TOKENS, SYSTEM

IGNORE_INDEX = -100  # target value of positions without a loss


def character_tokenizer(charset: str) -> HFTokenizer:
    """A character-level tokenizer: the special tokens first, then every printable ASCII character and newline
    (the prompt needs them), then the rest of ``charset``."""
    chars = dict.fromkeys(string.printable + SYSTEM + charset)  # ordered, unique
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=ENDOFTEXT))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.decoder = decoders.Fuse()
    return tok


class GotOcr2Tokenizer:
    """Labels <-> answer ids and greedy decoding, with the interface of :class:`strhub.data.tokenizer.Tokenizer`.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` holding the special tokens ``<|endoftext|>``, ``<|im_start|>``,
            ``<|im_end|>``, ``<img>``, ``</img>`` and ``<imgpad>``.
        answer_end: the token that ends an answer in training targets (the chat turn end).
    """

    def __init__(self, tokenizer: HFTokenizer, answer_end: str = IM_END) -> None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f'the tokenizer lacks the GOT-OCR2 special token(s) {missing}; use the tokenizer.json published '
                'with the model (or leave model.tokenizer unset for a character tokenizer)'
            )
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.token_to_id(IMG_PAD)
        self.eos_id = tokenizer.token_to_id(answer_end)
        self.pad_id = tokenizer.token_to_id(ENDOFTEXT)
        self.stop_ids = tuple(dict.fromkeys([self.eos_id, self.pad_id]))

    @classmethod
    def from_file(cls, path: str | Path) -> GotOcr2Tokenizer:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f'tokenizer file {path} not found: set model.tokenizer to the tokenizer.json that comes with the '
                'GOT-OCR2 weights'
            )
        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def for_charset(cls, charset: str) -> GotOcr2Tokenizer:
        return cls(character_tokenizer(charset))

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def text_ids(self, text: str) -> list[int]:
        """Ids of a text, special tokens included (prompts)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """(N, T) answer targets: each label's ids then the answer end, padded with ``IGNORE_INDEX``."""
        rows = [torch.as_tensor(self.text_ids(y) + [self.eos_id], dtype=torch.long) for y in labels]
        return pad_sequence(rows, batch_first=True, padding_value=IGNORE_INDEX).to(device)

    def decode_ids(self, ids: Tensor, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        """(N, T) generated ids and their probabilities -> strings (cut before the first stop id) and per-token
        probabilities (the stop token's included)."""
        ids, probs = ids.detach().cpu(), probs.detach().float().cpu()
        texts, confidences = [], []
        stops = torch.as_tensor(self.stop_ids)
        for row, p in zip(ids, probs):
            is_stop = torch.isin(row, stops)
            end = len(row) if raw or not bool(is_stop.any()) else int(is_stop.to(torch.uint8).argmax())
            keep = len(row) if raw else min(end + 1, len(row))
            texts.append(self.tokenizer.decode(row[:end].tolist(), skip_special_tokens=True))
            confidences.append(p[:keep])
        return texts, confidences

    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        """(N, L, vocab) probabilities -> greedy strings and per-token probabilities."""
        max_probs, ids = probs.detach().float().max(-1)
        return self.decode_ids(ids, max_probs, raw)
