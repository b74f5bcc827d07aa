"""TrOCR's tokenizers behind the common :class:`~strhub.data.tokenizer.Tokenizer` interface.

- :class:`TrOCRCharTokenizer`: one token per character (the :class:`CharTokenizer` layout), for training from scratch.
- :class:`SubwordTokenizer`: the published checkpoints' sub-word vocabularies through the ``tokenizers`` library, from
  local files: RoBERTa byte-level BPE (``vocab.json`` + ``merges.txt``) or any ``tokenizer.json`` (e.g. the
  sentencepiece-derived one of trocr-small).

Both encode a label as ``[decoder start] [BOS]? tokens [EOS] [PAD]...`` (the Hugging Face TrOCR convention: the
decoder starts from EOS and first predicts BOS; the character tokenizer starts from ``[B]`` and has no BOS to predict)
and decode generated ids (:meth:`decode_tokens`) or per-position probabilities (:meth:`decode`) into strings and the
probabilities of the tokens up to and including the first EOS.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
from tokenizers import decoders, models, normalizers, pre_tokenizers
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from strhub.data.tokenizer import CharTokenizer, Tokenizer


def _decode_sequences(
    ids: Tensor, probs: Tensor, eos_id: int, to_text: Callable[[list[int]], str], raw: bool
) -> tuple[list[str], list[Tensor]]:
    """(N, L) ids and their (N, L) probabilities -> texts of the ids before the first EOS, and the probabilities up to
    and including it (every position with ``raw``)."""
    n, length = ids.shape
    if raw:
        ends = keep = [length] * n
    else:
        is_eos = ids == eos_id
        ends_t = torch.where(is_eos.any(1), is_eos.to(torch.uint8).argmax(1), length)
        ends = ends_t.tolist()
        keep = (ends_t + 1).clamp(max=length).tolist()
    probs = probs.detach().float().cpu()
    rows = ids.cpu().tolist()
    return [to_text(row[:end]) for row, end in zip(rows, ends)], [p[:k] for p, k in zip(probs, keep)]


class TrOCRCharTokenizer(CharTokenizer):
    """Characters of ``charset`` as tokens (``[E]`` = 0, the charset, ``[B]``, ``[P]``); decoding starts at ``[B]``."""

    prefix_ids: tuple[int, ...] = ()
    max_tokens_per_char = 1

    @property
    def decoder_start_id(self) -> int:
        return self.bos_id

    def decode_tokens(self, ids: Tensor, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        """(N, L) generated ids and their probabilities -> strings and per-token probabilities (see
        :meth:`Tokenizer.decode`)."""
        return _decode_sequences(ids, probs, self.eos_id, self.ids2tok, raw)


def _special_ids(backend: tokenizers.Tokenizer, names: dict[str, str], source: str) -> dict[str, int]:
    ids = {}
    for role, token in names.items():
        token_id = backend.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f'{source} has no {role} token {token!r}; set model.tokenizer.{role}_token to the one it uses'
            )
        ids[role] = token_id
    return ids


class SubwordTokenizer(Tokenizer):
    """A ``tokenizers`` vocabulary (BPE, unigram ...) with TrOCR's special-token conventions.

    Args:
        backend: the loaded ``tokenizers.Tokenizer`` (see :func:`load_subword_backend`).
        bos_token, eos_token, pad_token: the special tokens' strings (RoBERTa / XLM-R: ``<s>``, ``</s>``, ``<pad>``).
        decoder_start_token: the first decoder input (Hugging Face TrOCR: ``</s>``).
        add_bos: targets start with BOS (the Hugging Face TrOCR processor's labels do).
        source: where the vocabulary came from, for error messages.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_token: str = '<s>',
        eos_token: str = '</s>',
        pad_token: str = '<pad>',
        decoder_start_token: str = '</s>',
        add_bos: bool = True,
        source: str = 'the tokenizer',
    ) -> None:
        # Not Tokenizer.__init__: that builds a character table, and these tokens are not characters.
        self.backend = backend
        self.charset = ''
        names = {'bos': bos_token, 'eos': eos_token, 'pad': pad_token, 'decoder_start': decoder_start_token}
        special = _special_ids(backend, names, source)
        self.bos_id, self.eos_id, self.pad_id = special['bos'], special['eos'], special['pad']
        self.decoder_start_id = special['decoder_start']
        self.prefix_ids = (self.bos_id,) if add_bos else ()
        # Marked special so that decoding skips them (a vocab.json lists them as ordinary entries).
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in dict.fromkeys(names.values())])

    def __len__(self) -> int:
        return self.backend.get_vocab_size()

    def ids2tok(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def max_tokens_per_char(self, charset: str) -> int:
        """The most tokens one character of ``charset`` encodes to (a bound on tokens per label character)."""
        encoded = self.backend.encode_batch(list(charset), add_special_tokens=False) if charset else []
        return max((len(e.ids) for e in encoded), default=1)

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """(N, 2 + len(prefix) + max tokens) ids: decoder start, BOS (if ``add_bos``), tokens, EOS, then padding."""
        head, tail = [self.decoder_start_id, *self.prefix_ids], [self.eos_id]
        encoded = self.backend.encode_batch(list(labels), add_special_tokens=False)
        batch = [torch.as_tensor(head + e.ids + tail, dtype=torch.long) for e in encoded]
        return pad_sequence(batch, batch_first=True, padding_value=self.pad_id).to(device)

    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        max_probs, ids = probs.detach().float().max(-1)
        return self.decode_tokens(ids, max_probs, raw)

    def decode_tokens(self, ids: Tensor, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        """(N, L) generated ids and their probabilities -> strings (special tokens dropped) and per-token
        probabilities up to and including EOS."""
        return _decode_sequences(ids, probs, self.eos_id, self.ids2tok, raw)

    def to_json(self) -> str:
        """The vocabulary as a self-contained ``tokenizer.json`` string (stored in checkpoints)."""
        return self.backend.to_str()


class MissingTokenizer(Tokenizer):
    """Stands in when a sub-word model is built without its vocabulary files (benchmarking, counting parameters):
    the network works, turning labels into ids or ids into text raises an error that says what to set."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.charset = ''

    def _fail(self):
        raise ValueError(
            f'{self.model_name}: no tokenizer files are set, so labels and outputs cannot be converted. Set '
            'model.tokenizer.path to the tokenizer.json of the checkpoint, or to the directory holding its '
            'tokenizer.json or vocab.json + merges.txt'
        )

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        self._fail()

    def decode(self, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        self._fail()

    def decode_tokens(self, ids: Tensor, probs: Tensor, raw: bool = False) -> tuple[list[str], list[Tensor]]:
        self._fail()


def byte_level_bpe(vocab_file: str | Path, merges_file: str | Path) -> tokenizers.Tokenizer:
    """RoBERTa's tokenizer (GPT-2 byte-level BPE without a prefix space) from its ``vocab.json`` and ``merges.txt``."""
    backend = tokenizers.Tokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def load_subword_backend(path: str | Path) -> tokenizers.Tokenizer:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, a ``vocab.json`` next to its ``merges.txt``, or a
    directory holding either."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / 'tokenizer.json', path / 'vocab.json']
        path = next((c for c in candidates if c.is_file()), path / 'tokenizer.json')
    if not path.is_file():
        raise FileNotFoundError(
            f'tokenizer file {path} does not exist; set model.tokenizer.path to a tokenizer.json, or to a '
            'vocab.json with merges.txt beside it, or to the directory holding them'
        )
    if path.name == 'vocab.json':
        merges = path.with_name('merges.txt')
        if not merges.is_file():
            raise FileNotFoundError(f'{path} needs the merges.txt of the same BPE vocabulary beside it ({merges})')
        return byte_level_bpe(path, merges)
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception for every kind of bad file
        raise ValueError(f'{path} is not a tokenizers tokenizer.json file ({e})') from e


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _protobuf_fields(data: bytes) -> list[tuple[int, int | float | bytes]]:
    """The ``(field number, value)`` pairs of a serialised protobuf message (varints, 32-bit floats, 64-bit and
    length-delimited values as raw bytes): enough to read a sentencepiece model without its generated classes."""
    fields, pos = [], 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack('<f', data[pos : pos + 4])[0], pos + 4
        else:
            raise ValueError(f'unsupported protobuf wire type {wire}')
        fields.append((number, value))
    return fields


def sentencepiece_backend(path: str | Path) -> tokenizers.Tokenizer:
    """An XLM-RoBERTa-style tokenizer from a sentencepiece unigram model (trocr-small's ``sentencepiece.bpe.model``),
    as ``transformers.XLMRobertaTokenizer`` builds it: fairseq ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
    then the model's pieces after its own three specials, then ``<mask>``), the model's normalisation table, and
    "▁" word boundaries."""
    path = Path(path)
    try:
        fields = _protobuf_fields(path.read_bytes())
        pieces = []
        for number, value in fields:
            if number == 1:  # ModelProto.pieces: SentencePiece {1: piece, 2: score, 3: type}
                piece = dict(_protobuf_fields(value))
                pieces.append((piece[1].decode('utf-8'), float(piece.get(2, 0.0))))
        trainer = dict(_protobuf_fields(next((v for n, v in fields if n == 2), b'')))
        normalizer = dict(_protobuf_fields(next((v for n, v in fields if n == 3), b'')))
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, struct.error) as e:
        raise ValueError(f'{path} is not a sentencepiece model ({e})') from e
    if trainer.get(3, 1) != 1:  # TrainerSpec.model_type: 1 = unigram
        raise ValueError(f'{path}: only sentencepiece unigram models are supported (XLM-R / trocr-small)')
    if len(pieces) < 4:
        raise ValueError(f'{path} holds {len(pieces)} pieces: not a sentencepiece vocabulary')
    vocab = [('<s>', 0.0), ('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), *pieces[3:], ('<mask>', 0.0)]
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    charsmap = normalizer.get(2)  # NormalizerSpec.precompiled_charsmap
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='always')]
    )
    backend.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='always')
    backend.add_special_tokens(['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
    return backend


@dataclass
class TokenizerConfig:
    """The ``model.tokenizer`` section.

    Attributes:
        kind: ``char`` (the training charset, one token per character) or ``subword`` (a vocabulary file).
        path: sub-word vocabulary: a tokenizer.json, a vocab.json (with merges.txt beside it) or their directory.
        json: the vocabulary as a tokenizer.json string; set by the system from ``path`` so that checkpoints carry
            their tokenizer, and used instead of ``path`` when present.
        bos_token, eos_token, pad_token, decoder_start_token, add_bos: see :class:`SubwordTokenizer`.
    """

    kind: str = 'char'
    path: str | None = None
    json: str | None = None
    bos_token: str = '<s>'
    eos_token: str = '</s>'
    pad_token: str = '<pad>'
    decoder_start_token: str = '</s>'
    add_bos: bool = True

    def build(self, charset: str, model_name: str) -> Tokenizer:
        """The tokenizer this section describes (``charset``: the training charset, for ``kind: char``)."""
        if self.kind == 'char':
            if self.path or self.json:
                raise ValueError('model.tokenizer.kind is char: its tokens come from the charset, so leave path unset')
            return TrOCRCharTokenizer(charset)
        if self.kind != 'subword':
            raise ValueError(f"unknown model.tokenizer.kind {self.kind!r}; valid: 'char', 'subword'")
        if self.json is not None:
            backend, source = tokenizers.Tokenizer.from_str(self.json), 'the embedded tokenizer'
        elif self.path is not None:
            backend, source = load_subword_backend(self.path), str(self.path)
        else:
            return MissingTokenizer(model_name)
        return SubwordTokenizer(
            backend,
            self.bos_token,
            self.eos_token,
            self.pad_token,
            self.decoder_start_token,
            self.add_bos,
            source,
        )
