"""Tokenizers for multi-granularity recognition heads (MGP-STR): characters, BPE and WordPiece in one slot layout.

A head reads a label from a fixed number of output *slots*. As published for MGP-STR, slot 0 holds a start token,
then come the label's tokens, an end token, and padding that the loss ignores::

    characters  [GO] h e l l o [s] [GO] ...      [GO] = 0 (also the padding), [s] = 1, then the charset
    GPT-2 BPE   "    hello     #   !    ...      the published start / end / padding ids 1 / 2 / 0 ('"', '#', '!')
    BERT WP     [CLS] hello [SEP] [PAD] ...      looked up by name in the vocabulary

Decoding is greedy from slot 1 on, up to the first end token; a prediction's confidence is the product of the
maximum probabilities of its slots including the end token, and 0 when no end token was read (as published).

Sub-word vocabularies come from the `tokenizers` library, either loaded from the published files (GPT-2
``vocab.json`` + ``merges.txt``, BERT uncased ``vocab.txt``) or trained from training labels with a chosen size
(character-level BPE and WordPiece over the charset: the way to support other languages and scripts).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

from strhub.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SERIALIZATION_FORMAT = 'strhub-subword-1'
END_DISPLAY = '[end]'


def decode_slots(probs: Tensor, end_id: int, raw: bool = False) -> tuple[list[list[int]], list[Tensor]]:
    """Greedy slot decoding shared by every head.

    Args:
        probs: (N, S, C) class probabilities; slot 0 is the start slot and is never read.
        end_id: the end token's id.
        raw: keep every slot after the start slot (no cut at the end token).

    Returns:
        Per row, the ids before the first end token and the maximum probabilities of those slots and of the end
        slot (1-D, on the CPU). A row without an end token gets its slot probabilities followed by a 0, so that the
        product (the confidence) is 0, as published.
    """
    max_probs, ids = probs.detach().float().max(-1)
    ids, max_probs = ids[:, 1:].cpu(), max_probs[:, 1:].cpu()
    if raw:
        return ids.tolist(), list(max_probs)
    is_end = ids == end_id
    found = is_end.any(1)
    ends = torch.where(found, is_end.to(torch.uint8).argmax(1), ids.shape[1]).tolist()
    rows, confidences = [], []
    for row, p, end, has_end in zip(ids.tolist(), max_probs, ends, found.tolist()):
        rows.append(row[:end])
        confidences.append(p[: end + 1] if has_end else torch.cat([p, p.new_zeros(1)]))
    return rows, confidences


class SlotLayout(ABC):
    """Encoding and decoding of the MGP-STR slot layout (see the module docstring) for one vocabulary.

    Subclasses set ``start_id``, ``end_id``, ``pad_id`` and ``name`` and map labels to token ids and back.
    """

    start_id: int
    end_id: int
    pad_id: int
    name: str
    _warned_truncation = False

    @abstractmethod
    def token_ids(self, label: str) -> list[int]:
        """The ids of a label's tokens (no start or end token)."""

    @abstractmethod
    def ids_to_text(self, ids: Sequence[int]) -> str:
        """Text of a sequence of token ids (special tokens are skipped)."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of one id (for display)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the vocabulary uses (the head may be larger)."""

    def encode(
        self, labels: Sequence[str], device: torch.device | str | None = None, length: int | None = None
    ) -> Tensor:
        """(N, length) target ids: start, tokens, end, then padding.

        ``length`` defaults to the longest encoded label. A label with more tokens than ``length - 2`` keeps its
        first ``length - 2`` tokens (the published WordPiece targets are truncated the same way), with a warning.
        """
        rows = [self.token_ids(label) for label in labels]
        if length is None:
            length = max((len(r) for r in rows), default=0) + 2
        if length < 2:
            raise ValueError(f'length={length} leaves no room for the start and end tokens; use at least 2')
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) > length - 2:
                if not self._warned_truncation:
                    log.warning(
                        '%s: label %r has %d tokens but only %d slots are read; its targets are truncated (raise '
                        'max_label_length to avoid this)',
                        self.name,
                        labels[i],
                        len(row),
                        length - 2,
                    )
                    self._warned_truncation = True
                row = row[: length - 2]
            out[i, : len(row) + 2] = torch.as_tensor([self.start_id, *row, self.end_id])
        return out.to(device)

    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        """(N, S, C) probabilities -> N strings and their slot probabilities (see :func:`decode_slots`)."""
        rows, confidences = decode_slots(probs, self.end_id, raw)
        return [self.ids_to_text(row) for row in rows], confidences

    def slot_tokens(self, scores: Tensor) -> list[list[str]]:
        """(N, S, C) logits or probabilities -> the greedy token of every slot from slot 1 up to the end token
        (shown as ``[end]``), for display."""
        ids = scores.detach().argmax(-1)[:, 1:].cpu().tolist()
        out = []
        for row in ids:
            end = row.index(self.end_id) + 1 if self.end_id in row else len(row)
            out.append([END_DISPLAY if i == self.end_id else self.id_to_token(i) for i in row[:end]])
        return out


class CharSlotTokenizer(SlotLayout, Tokenizer):
    """The character head's vocabulary: ``[GO]`` = 0 (start and padding), ``[s]`` = 1 (end), then the charset."""

    GO = '[GO]'
    END = '[s]'
    name = 'char'

    def __init__(self, charset: str) -> None:
        Tokenizer.__init__(self, charset, specials_first=(self.GO, self.END))
        self.start_id = self.pad_id = self.stoi[self.GO]
        self.end_id = self.stoi[self.END]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_ids(self, label: str) -> list[int]:
        return self._tok2ids(label)

    def ids_to_text(self, ids: Sequence[int]) -> str:
        return ''.join(self.itos[i] for i in ids if i > self.end_id)

    def id_to_token(self, token_id: int) -> str:
        return self.itos[token_id]


class SubwordTokenizer(SlotLayout):
    """A `tokenizers` vocabulary (BPE or WordPiece) in the slot layout.

    Build one with :meth:`from_gpt2_files`, :meth:`from_bert_vocab`, :meth:`train_bpe` or :meth:`train_wordpiece`;
    :meth:`to_dict` / :meth:`from_dict` carry it inside checkpoints.

    Args:
        tokenizer: the `tokenizers` tokenizer (model, normalizer, pre-tokenizer and decoder).
        kind: ``gpt2``, ``bert``, ``bpe`` or ``wordpiece`` (how it was made; for messages and serialisation).
        start_id, end_id, pad_id: the slot layout's special ids.
        strip_spaces: remove spaces from decoded text (WordPiece decoding joins words with spaces; as published).
    """

    def __init__(
        self, tokenizer: HFTokenizer, kind: str, start_id: int, end_id: int, pad_id: int, strip_spaces: bool = False
    ) -> None:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for what, token_id in (('start', start_id), ('end', end_id), ('padding', pad_id)):
            if not 0 <= token_id < size:
                raise ValueError(f'{kind} vocabulary of {size} tokens has no {what} id {token_id}')
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = kind
        self.start_id, self.end_id, self.pad_id = start_id, end_id, pad_id
        self.strip_spaces = strip_spaces

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_gpt2_files(cls, vocab_file: str | Path, merges_file: str | Path) -> SubwordTokenizer:
        """GPT-2's byte-level BPE (``vocab.json`` + ``merges.txt``, 50257 tokens) with the published MGP-STR ids:
        start 1, end 2, padding 0 (the tokens ``"``, ``#`` and ``!``)."""
        vocab_file, merges_file = _existing(vocab_file, 'GPT-2 vocab.json'), _existing(merges_file, 'merges.txt')
        try:
            model = models.BPE.from_file(str(vocab_file), str(merges_file))
        except Exception as e:  # noqa: BLE001 - the Rust side raises a plain Exception for a malformed file
            raise ValueError(
                f'cannot read a GPT-2 BPE vocabulary from {vocab_file} and {merges_file}: {e}; give the vocab.json '
                'and merges.txt of openai-community/gpt2'
            ) from e
        tokenizer = HFTokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return cls(tokenizer, 'gpt2', start_id=1, end_id=2, pad_id=0)

    @classmethod
    def from_bert_vocab(cls, vocab_file: str | Path) -> SubwordTokenizer:
        """BERT uncased WordPiece (``vocab.txt``, 30522 tokens): lower-cased, accents stripped; ``[CLS]`` starts,
        ``[SEP]`` ends, ``[PAD]`` pads."""
        vocab_file = _existing(vocab_file, 'BERT vocab.txt')
        vocab = {}
        with open(vocab_file, encoding='utf-8') as f:
            for line in f:
                token = line.rstrip('\n')
                vocab.setdefault(token, len(vocab))
        missing = [t for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]') if t not in vocab]
        if missing:
            raise ValueError(f'{vocab_file} has no {missing} token(s); is it a BERT WordPiece vocab.txt?')
        tokenizer = HFTokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        tokenizer.add_special_tokens([t for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]') if t in vocab])
        return cls(tokenizer, 'bert', vocab['[CLS]'], vocab['[SEP]'], vocab['[PAD]'], strip_spaces=True)

    @classmethod
    def train_bpe(cls, labels: Iterable[str], vocab_size: int, charset: str) -> SubwordTokenizer:
        """A character-level BPE of at most ``vocab_size`` tokens learnt from ``labels``.

        Ids 0-3 are ``[PAD]``, ``[GO]`` (start), ``[s]`` (end) and ``[UNK]``, mirroring the published layout; every
        charset character is a token, so any label over the charset encodes without unknowns.
        """
        specials = ['[PAD]', '[GO]', '[s]', '[UNK]']
        _check_trainable_size('BPE', vocab_size, charset, len(specials))
        tokenizer = HFTokenizer(models.BPE(unk_token='[UNK]'))
        tokenizer.decoder = decoders.Fuse()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=sorted(set(charset)),
            limit_alphabet=len(set(charset)),
            show_progress=False,
        )
        tokenizer.train_from_iterator(labels, trainer)
        return cls(tokenizer, 'bpe', start_id=1, end_id=2, pad_id=0)

    @classmethod
    def train_wordpiece(cls, labels: Iterable[str], vocab_size: int, charset: str) -> SubwordTokenizer:
        """A WordPiece of at most ``vocab_size`` tokens learnt from ``labels`` (no case folding: the charset
        decides). Ids 0-3 are ``[PAD]``, ``[UNK]``, ``[CLS]`` (start) and ``[SEP]`` (end); every charset character
        is a token both at the start of a word and as a ``##`` continuation, so any word over the charset encodes
        without unknowns."""
        specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]']
        alphabet = sorted(set(charset))
        _check_trainable_size('WordPiece', vocab_size, charset, len(specials), per_char=2)
        tokenizer = HFTokenizer(models.WordPiece(unk_token='[UNK]'))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size - len(alphabet),  # room for the continuations added below
            special_tokens=specials,
            initial_alphabet=alphabet,
            limit_alphabet=len(alphabet),
            show_progress=False,
        )
        tokenizer.train_from_iterator(labels, trainer)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        for char in alphabet:
            vocab.setdefault('##' + char, len(vocab))
        tokenizer.model = models.WordPiece(vocab, unk_token='[UNK]')
        return cls(tokenizer, 'wordpiece', start_id=2, end_id=3, pad_id=0, strip_spaces=True)

    # -- serialisation ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (strings and ints) that :meth:`from_dict` rebuilds this tokenizer from."""
        return {
            'format': SERIALIZATION_FORMAT,
            'kind': self.kind,
            'start_id': self.start_id,
            'end_id': self.end_id,
            'pad_id': self.pad_id,
            'strip_spaces': self.strip_spaces,
            'tokenizer': self.tokenizer.to_str(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubwordTokenizer:
        if data.get('format') != SERIALIZATION_FORMAT:
            raise ValueError(
                f'not a serialised strhub sub-word vocabulary (format {data.get("format")!r}, expected '
                f'{SERIALIZATION_FORMAT!r})'
            )
        return cls(
            HFTokenizer.from_str(data['tokenizer']),
            data['kind'],
            int(data['start_id']),
            int(data['end_id']),
            int(data['pad_id']),
            bool(data['strip_spaces']),
        )

    # -- the slot layout ----------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_ids(self, label: str) -> list[int]:
        return self.tokenizer.encode(label, add_special_tokens=False).ids

    def ids_to_text(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text.replace(' ', '') if self.strip_spaces else text

    def id_to_token(self, token_id: int) -> str:
        token = self.tokenizer.id_to_token(token_id)
        if token is None:
            return '[?]'
        if self.kind == 'gpt2':
            # Byte-level symbols read as the bytes they stand for.
            return self.tokenizer.decoder.decode([token])
        return token


@dataclass
class SubwordVocabSpec:
    """Where a sub-word head's vocabulary comes from (the ``model.bpe`` / ``model.wordpiece`` config sections).

    Attributes:
        source: ``files`` (the published GPT-2 / BERT uncased vocabularies), ``train`` (learnt from the training
            labels when training starts), or ``auto``: the files where they exist, else ``train`` (see
            :meth:`resolve`).
        size: classes of the head; the vocabulary's size for ``files``, the most tokens to learn for ``train``.
        files: ``[vocab.json, merges.txt]`` (BPE) or ``[vocab.txt]`` (WordPiece), for ``files``.
        serialized: the vocabulary itself (:meth:`SubwordTokenizer.to_dict`); checkpoints carry it, and it wins
            over ``source`` and ``files``.
    """

    source: str = 'files'
    size: int = 0
    files: Sequence[str] = field(default_factory=list)
    serialized: Mapping[str, Any] | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], head: str) -> SubwordVocabSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown model.{head} key(s) {unknown}; valid keys: {sorted(known)}')
        spec = cls(**values)
        if spec.source not in ('files', 'train', 'auto'):
            raise ValueError(f"model.{head}.source={spec.source!r}: use 'files', 'train' or 'auto'")
        if int(spec.size) < 1:
            raise ValueError(f'model.{head}.size={spec.size}: give the number of classes of the {head} head')
        return spec

    def resolve(self, head: str) -> SubwordVocabSpec:
        """This spec with ``auto`` decided (the published files when every one exists, else learnt from the
        labels, said in one log line), and ``files`` checked now: a missing file is reported before any data is
        read or a model built, not when training starts."""
        if self.serialized or self.source == 'train':
            return self
        missing = [str(f) for f in self.files if not Path(f).expanduser().is_file()]
        if self.source == 'files':
            if missing:
                _existing(missing[0], 'GPT-2 vocab.json' if head == 'bpe' else 'BERT vocab.txt')
            return self
        if self.files and not missing:
            return replace(self, source='files')
        log.info(
            'model.%s: the published vocabulary (%s) is not here, so a %s vocabulary of at most %d tokens will be '
            'learnt from the training labels; to use the published one, put its files there (model.%s.files) or set '
            'model.%s.source=files',
            head,
            ', '.join(missing) or 'no files given',
            head,
            int(self.size),
            head,
            head,
        )
        return replace(self, source='train')


def build_subword_tokenizer(
    head: str, spec: SubwordVocabSpec, charset: str, labels: Iterable[str] | None = None
) -> SubwordTokenizer:
    """The vocabulary of sub-word head ``head`` (``bpe`` or ``wordpiece``) described by ``spec``.

    ``labels`` are needed (and only used) when ``spec.source`` is ``train`` and nothing is serialised yet.
    """
    if head not in ('bpe', 'wordpiece'):
        raise ValueError(f"unknown sub-word head {head!r}; valid: 'bpe', 'wordpiece'")
    if spec.serialized:
        tokenizer = SubwordTokenizer.from_dict(spec.serialized)
    elif spec.source == 'files':
        expected = 2 if head == 'bpe' else 1
        if len(spec.files) != expected:
            what = '[vocab.json, merges.txt] of GPT-2' if head == 'bpe' else '[vocab.txt] of BERT uncased'
            raise ValueError(f'model.{head}.files must list {what}; got {list(spec.files)}')
        if head == 'bpe':
            tokenizer = SubwordTokenizer.from_gpt2_files(*spec.files)
        else:
            tokenizer = SubwordTokenizer.from_bert_vocab(spec.files[0])
        if tokenizer.vocab_size != spec.size:
            raise ValueError(
                f'the {head} vocabulary in {list(spec.files)} has {tokenizer.vocab_size} tokens but the head has '
                f'model.{head}.size={spec.size} classes; set model.{head}.size={tokenizer.vocab_size}'
            )
    else:
        if labels is None:
            raise RuntimeError(
                f'the {head} vocabulary is learnt from the training labels (model.{head}.source=train) and has not '
                'been trained yet: it is trained when training starts; load a trained checkpoint to predict'
            )
        labels = list(labels)
        if not labels:
            raise ValueError(f'cannot train the {head} vocabulary: no training labels')
        train = SubwordTokenizer.train_bpe if head == 'bpe' else SubwordTokenizer.train_wordpiece
        tokenizer = train(labels, int(spec.size), charset)
        log.info('trained a %d-token %s vocabulary on %d labels', tokenizer.vocab_size, head, len(labels))
    if tokenizer.vocab_size > spec.size:
        raise ValueError(
            f'the {head} vocabulary has {tokenizer.vocab_size} tokens, more than the {spec.size} classes of the '
            f'head; set model.{head}.size={tokenizer.vocab_size}'
        )
    return tokenizer


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f'{what} not found at {path}: download the published vocabulary files (GPT-2: vocab.json and '
            'merges.txt of openai-community/gpt2; BERT: vocab.txt of google-bert/bert-base-uncased) and set '
            'model.bpe.files / model.wordpiece.files, or learn vocabularies from the labels with source=train'
        )
    return path


def _check_trainable_size(what: str, vocab_size: int, charset: str, num_specials: int, per_char: int = 1) -> None:
    needed = per_char * len(set(charset)) + num_specials
    if vocab_size < needed:
        raise ValueError(
            f'a {what} vocabulary of {vocab_size} tokens cannot hold the {per_char} x {len(set(charset))} '
            f'character tokens and {num_specials} special tokens; use a size of at least {needed}'
        )
