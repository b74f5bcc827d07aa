"""Recognition metrics: exact figures on hand-made cases, comparison modes, combination and DDP merging."""

from __future__ import annotations

import math

import pytest
import torch

from strhub.metrics import (
    COMBINED,
    RecognitionMetrics,
    TextNormalizer,
    WordRecognitionMetric,
    combine_results,
    format_table,
    one_minus_ned,
)

# Three datasets of different sizes with mixed errors: ('pred', 'gt', confidence).
SAMPLES = {
    'small': [('cat', 'cat', 0.5), ('dg', 'dog', 0.25)],
    'medium': [('house', 'house', 1.0), ('', 'tree', 0.0), ('carrots', 'carrot', 0.75)],
    'large': [('a', 'a', 1.0), ('bb', 'ab', 0.5), ('xyz', 'xyz', 1.0), ('hello', 'hallo', 0.25), ('', '', 0.5)],
}


def _columns(samples: list[tuple[str, str, float]]) -> tuple[list[str], list[str], list[float]]:
    preds, gts, confidences = zip(*samples, strict=True)
    return list(preds), list(gts), list(confidences)


def _metric_over(samples: list[tuple[str, str, float]], **kwargs) -> WordRecognitionMetric:
    metric = WordRecognitionMetric(**kwargs)
    metric.update(*_columns(samples))
    return metric


def _assert_results_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    assert actual['num_samples'] == expected['num_samples']
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=1e-12), key


def test_perfect_predictions() -> None:
    result = _metric_over([('hello', 'hello', 0.5), ('ab12', 'ab12', 1.0)]).compute()
    assert result == {
        'num_samples': 2,
        'accuracy': 100.0,
        'one_minus_ned': 100.0,
        'confidence': 75.0,
        'label_length': 4.5,
        'gt_label_length': 4.5,
    }


def test_one_substitution() -> None:
    result = _metric_over([('hello', 'hello', 1.0), ('wprld', 'world', 0.5)]).compute()
    assert result['accuracy'] == 50.0
    # The wrong word scores 1 - 1/5 = 0.8, the right one 1.
    assert result['one_minus_ned'] == pytest.approx(90.0)
    assert result['confidence'] == 75.0


@pytest.mark.parametrize(
    ('pred', 'gt', 'expected'),
    [
        ('', 'abc', 0.0),
        ('abc', '', 0.0),
        ('', '', 1.0),
        ('abcdef', 'abc', 0.5),  # longer prediction: 3 insertions over max length 6
        ('kitten', 'sitting', 1 - 3 / 7),
    ],
)
def test_one_minus_ned_edge_cases(pred: str, gt: str, expected: float) -> None:
    assert one_minus_ned(pred, gt) == pytest.approx(expected)


def test_empty_prediction_and_both_empty_in_metric() -> None:
    result = _metric_over([('', 'word', 0.5), ('', '', 0.5)]).compute()
    assert result['accuracy'] == 50.0
    assert result['one_minus_ned'] == 50.0
    assert result['label_length'] == 0.0
    assert result['gt_label_length'] == 2.0


def test_longer_prediction_counts_its_length() -> None:
    result = _metric_over([('abcdef', 'abc', 1.0)]).compute()
    assert result['one_minus_ned'] == 50.0
    assert result['label_length'] == 6.0
    assert result['gt_label_length'] == 3.0


@pytest.mark.parametrize(
    ('options', 'accuracy', 'one_minus_ned_percent'),
    [
        ({}, 100.0, 100.0),  # 'hello' vs 'hello'
        ({'cased': True}, 0.0, 80.0),  # 'Hello' vs 'hello'
        ({'punctuation': True}, 0.0, 100 * 5 / 6),  # 'hello!' vs 'hello'
        ({'cased': True, 'punctuation': True}, 0.0, 100 * 4 / 6),  # 'Hello!' vs 'hello'
    ],
)
def test_comparison_modes(options: dict, accuracy: float, one_minus_ned_percent: float) -> None:
    metric = WordRecognitionMetric(TextNormalizer.from_options(**options))
    metric.update(['Hello!'], ['hello'], [1.0])
    result = metric.compute()
    assert result['accuracy'] == accuracy
    assert result['one_minus_ned'] == pytest.approx(one_minus_ned_percent)


def test_normalizer_charsets() -> None:
    assert len(TextNormalizer.from_options().charset) == 36
    assert len(TextNormalizer.from_options(cased=True).charset) == 62
    assert len(TextNormalizer.from_options(punctuation=True).charset) == 68
    assert len(TextNormalizer.from_options(cased=True, punctuation=True).charset) == 94
    # Space is not among the 94 characters, so it is removed even in the widest mode.
    assert TextNormalizer.from_options(cased=True, punctuation=True)('New York!') == 'NewYork!'


def test_normalizer_charset_test_overrides_flags() -> None:
    lowercase_only = TextNormalizer.from_options(cased=True, charset_test='abc')
    assert lowercase_only.lowercase
    assert lowercase_only('AbCd-1') == 'abc'
    mixed_case = TextNormalizer.from_options(charset_test='aBc')
    assert not mixed_case.lowercase
    assert mixed_case('AbBc') == 'Bc'


def test_normalizer_unicode() -> None:
    normalize = TextNormalizer.from_options()
    assert normalize('\ufb01ve') == 'five'  # NFKC splits the 'fi' ligature
    assert normalize('\uff21\uff22\uff11') == 'ab1'  # full-width letters and digits
    assert normalize('Café') == 'cafe'  # accent folded to a charset letter
    assert normalize('東京x') == 'x'  # characters with no base in the charset are removed
    assert TextNormalizer.from_options(charset_test='é')('CAFÉ') == 'é'
    # NFKC composes 'e' + combining acute into the charset's precomposed letter instead of dropping the accent.
    assert TextNormalizer.from_options(charset_test='acfeé')('cafe\u0301') == 'café'


def test_normalizer_rejects_empty_charset() -> None:
    with pytest.raises(ValueError, match='non-empty comparison charset'):
        TextNormalizer('')


def test_confidences_as_tensor_or_list_agree() -> None:
    preds, gts, confidences = _columns(SAMPLES['large'])
    from_tensor = WordRecognitionMetric()
    from_tensor.update(preds, gts, torch.tensor(confidences, dtype=torch.float32))
    assert from_tensor.compute() == _metric_over(SAMPLES['large']).compute()


def test_combined_equals_union() -> None:
    metrics = RecognitionMetrics(list(SAMPLES))
    for name, samples in SAMPLES.items():
        metrics.update(name, *_columns(samples))
    results = metrics.compute()
    assert list(results) == [*SAMPLES, COMBINED]
    union = _metric_over([s for samples in SAMPLES.values() for s in samples]).compute()
    _assert_results_equal(results[COMBINED], union)
    assert results[COMBINED]['num_samples'] == 10
    # Not the unweighted mean of the datasets' accuracies (50, 33.3, 60): the large dataset counts more.
    assert results[COMBINED]['accuracy'] == pytest.approx(50.0)
    for name, samples in SAMPLES.items():
        _assert_results_equal(results[name], _metric_over(samples).compute())


@pytest.mark.filterwarnings('ignore:The ``compute`` method of metric WordRecognitionMetric was called before')
def test_combined_skips_empty_datasets() -> None:
    metrics = RecognitionMetrics(['seen', 'unseen'])
    metrics.update('seen', *_columns(SAMPLES['small']))
    results = metrics.compute()
    assert results['unseen']['num_samples'] == 0
    assert math.isnan(results['unseen']['accuracy'])
    _assert_results_equal(results[COMBINED], results['seen'])


def test_reset_clears_all_datasets() -> None:
    metrics = RecognitionMetrics(['small'])
    metrics.update('small', *_columns(SAMPLES['small']))
    metrics.reset()
    metrics.update('small', ['dog'], ['dog'], [1.0])
    assert metrics.compute()['small']['num_samples'] == 1


def test_merge_state_of_two_ranks_equals_one_instance() -> None:
    samples = [s for samples in SAMPLES.values() for s in samples]
    rank0, rank1 = _metric_over(samples[:3]), _metric_over(samples[3:])
    rank0.merge_state(rank1)
    _assert_results_equal(rank0.compute(), _metric_over(samples).compute())


def test_distributed_sync_sums_states_of_two_ranks() -> None:
    """Runs the real torchmetrics sync path with an all-gather that returns this rank's and a peer's states."""
    samples = [s for samples in SAMPLES.values() for s in samples]
    peer_states: dict[int, torch.Tensor] = {}

    def all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        return [tensor, peer_states[id(tensor)]]

    rank0 = WordRecognitionMetric(dist_sync_fn=all_gather, distributed_available_fn=lambda: True)
    rank0.update(*_columns(samples[:7]))
    rank1 = _metric_over(samples[7:])
    peer_states.update({id(rank0.metric_state[name]): state for name, state in rank1.metric_state.items()})
    _assert_results_equal(rank0.compute(), _metric_over(samples).compute())
    # After compute the local (unsynced) states are restored, so the rank keeps accumulating its own shard.
    assert int(rank0.num_samples) == 7


def test_format_table_markdown() -> None:
    metrics = RecognitionMetrics(['medium', 'small'])
    metrics.update('small', *_columns(SAMPLES['small']))
    metrics.update('medium', *_columns(SAMPLES['medium']))
    lines = format_table(metrics.compute()).splitlines()
    assert [cell.strip() for cell in lines[0].strip('|').split('|')] == [
        'Dataset',
        '# samples',
        'Accuracy',
        '1 - NED',
        'Confidence',
        'Label Length',
    ]
    assert set(lines[1]) <= {'|', '-', ':', ' '}
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]
    # small: 'cat'/'cat', 'dg'/'dog' -> 50 %, 1-NED (1 + 2/3)/2; medium: 1 of 3, 1-NED (1 + 0 + 6/7)/3.
    assert rows == [
        ['medium', '3', '33.33', '61.90', '58.33', '4.00'],
        ['small', '2', '50.00', '83.33', '37.50', '2.50'],
        ['Combined', '5', '40.00', '70.48', '50.00', '3.40'],
    ]
    assert len({len(line) for line in lines}) == 1


def test_format_table_derives_combined_row_and_writes_csv() -> None:
    results = {name: _metric_over(samples).compute() for name, samples in SAMPLES.items()}
    table = format_table(results, fmt='csv').splitlines()
    assert table[0] == 'Dataset,# samples,Accuracy,1 - NED,Confidence,Label Length'
    assert [line.split(',')[0] for line in table[1:]] == [*SAMPLES, COMBINED]
    combined = combine_results(results)
    assert table[-1] == f'Combined,10,50.00,{combined["one_minus_ned"]:.2f},{combined["confidence"]:.2f},2.80'


def test_format_table_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="use 'markdown' or 'csv'"):
        format_table({}, fmt='html')


@pytest.mark.parametrize(
    ('preds', 'gts', 'confidences', 'error', 'message'),
    [
        ('abc', ['abc'], [1.0], TypeError, 'not a single string'),
        (['a', 'b'], ['a'], [1.0, 1.0], ValueError, 'one entry per sample'),
        (['a'], ['a'], [[0.5, 0.5]], ValueError, 'must be 1-D'),
        (['a'], ['a'], [-2.3], ValueError, 'not log-probabilities'),
        (['a'], ['a'], [87.0], ValueError, 'or percentages'),
    ],
)
def test_bad_update_inputs(preds, gts, confidences, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        WordRecognitionMetric().update(preds, gts, confidences)


def test_unknown_or_duplicate_dataset_names() -> None:
    metrics = RecognitionMetrics(['IIIT5k', 'SVT'])
    with pytest.raises(KeyError, match="unknown dataset 'CUTE80'"):
        metrics.update('CUTE80', ['a'], ['a'], [1.0])
    with pytest.raises(ValueError, match='must be unique'):
        RecognitionMetrics(['SVT', 'SVT'])
    with pytest.raises(ValueError, match='must be unique'):
        RecognitionMetrics([COMBINED])
