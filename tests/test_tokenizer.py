"""Tokenizers: id conventions of the published checkpoints and greedy decoding on hand-made outputs."""

import pytest
import torch

from strhub.data.charsets import STANDARD_CHARSETS, read_charset_file, resolve_charset
from strhub.data.tokenizer import CharTokenizer, CTCTokenizer


def one_hot(ids, num_classes, p=0.9):
    probs = torch.full((len(ids), num_classes), (1 - p) / (num_classes - 1))
    probs[torch.arange(len(ids)), torch.tensor(ids)] = p
    return probs


def test_char_tokenizer_ids_match_published_layout():
    tok = CharTokenizer(STANDARD_CHARSETS['94_full'])
    assert len(tok) == 97 and tok.eos_id == 0 and tok.bos_id == 95 and tok.pad_id == 96
    assert tok.stoi['0'] == 1 and tok.stoi['a'] == 11 and tok.stoi['~'] == 94
    ids = tok.encode(['ab', 'c'])
    assert ids.tolist() == [[95, 11, 12, 0], [95, 13, 0, 96]]


def test_char_decode_stops_at_first_eos():
    tok = CharTokenizer('abc')  # [E]=0, a=1, b=2, c=3
    probs = torch.stack([one_hot([1, 2, 0, 3, 0], 4), one_hot([3, 3, 3, 3, 3], 4), one_hot([0, 1, 1, 1, 1], 4)])
    texts, confs = tok.decode(probs)
    assert texts == ['ab', 'ccccc', '']
    assert [len(c) for c in confs] == [3, 5, 1]  # the EOS probability counts towards the confidence
    assert torch.allclose(confs[0], torch.full((3,), 0.9))
    raw, _ = tok.decode(probs, raw=True)
    assert raw[0] == 'ab[E]c[E]'


def test_ctc_tokenizer_collapses_repeats_and_blanks():
    tok = CTCTokenizer('abc')  # blank=0, a=1, b=2, c=3
    assert tok.encode(['ab', 'c']).tolist() == [[1, 2], [3, 0]]
    probs = torch.stack([one_hot([1, 1, 0, 1, 2, 2, 0, 0], 4), one_hot([0, 0, 0, 0, 0, 0, 0, 0], 4)])
    texts, confs = tok.decode(probs)
    assert texts == ['aab', '']
    assert len(confs[0]) == 8


def test_bad_labels_and_charsets(tmp_path):
    with pytest.raises(ValueError, match="character 'x' outside the charset"):
        CharTokenizer('abc').encode(['ax'])
    with pytest.raises(ValueError, match='repeated'):
        CharTokenizer('abca')
    lines = tmp_path / 'chars.txt'
    lines.write_text('а\nб\n \nв\n', encoding='utf-8')
    assert read_charset_file(lines) == 'аб в'
    assert resolve_charset(f'file:{lines}') == 'аб в'
    assert resolve_charset('36_lowercase') == STANDARD_CHARSETS['36_lowercase']
    with pytest.raises(FileNotFoundError, match='standard charsets'):
        resolve_charset('file:/nonexistent/chars.txt')
