"""A self-contained HTML report of an evaluation (``./test.py ... --report DIR``): the results table, a filterable
gallery of wrong predictions with character-level diffs, accuracy by label length and by confidence (calibration),
the most frequent character confusions and, for models that offer them, attention maps; the figures also as PNGs.

The page embeds everything (images as data URIs, its script and style inline), so it opens from disk without a
server. Filters can be preset in the address: ``index.html#set=SVT&min_conf=0.5&max_len=8&sort=conf``.
"""

from __future__ import annotations

import base64
import difflib
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup, escape
from PIL import Image

from strhub.data.lmdb_dataset import shared_readonly_env
from strhub.data.lmdb_writer import image_key
from strhub.data.preprocess import Preprocess, convert_mode
from strhub.evaluation import Evaluation, Prediction, format_skipped
from strhub.metrics import COMBINED, TextNormalizer

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / 'templates'
# Wrong predictions shown per set (all are counted in the figures); the page stays light enough to open anywhere.
MAX_GALLERY_PER_SET = 300
MAX_ATTENTION_SAMPLES = 12
STORED_THUMBNAIL = (256, 96)  # largest size a stored crop is shown at, (width, height)
CONFIDENCE_BINS = 10
TOP_CONFUSIONS = 20
# The character a deletion or insertion is paired with in the confusion counts.
NOTHING = '∅'


@dataclass
class Figures:
    """The report's figures: name -> PNG bytes, and the data they show."""

    png: dict[str, bytes]
    by_length: list[dict]
    calibration: list[dict]
    confusions: list[tuple[str, str, int]]


def diff_html(truth: str, prediction: str) -> tuple[Markup, Markup]:
    """``truth`` and ``prediction`` as HTML with the characters that differ marked: ``<del>`` in the truth (missed or
    misread), ``<ins>`` in the prediction (inserted or misread)."""
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, truth, prediction, autojunk=False).get_opcodes():
        a, b = escape(truth[i1:i2]), escape(prediction[j1:j2])
        if op == 'equal':
            left.append(a)
            right.append(b)
        else:
            left.append(Markup('<del>{}</del>').format(a) if a else '')
            right.append(Markup('<ins>{}</ins>').format(b) if b else '')
    return Markup('').join(left), Markup('').join(right)


def character_confusions(pairs: Sequence[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """(truth character, predicted character) counts over aligned (truth, prediction) strings; a missed character
    pairs with ``∅`` on the right, an inserted one with ``∅`` on the left."""
    counts: Counter[tuple[str, str]] = Counter()
    for truth, prediction in pairs:
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, truth, prediction, autojunk=False).get_opcodes():
            if op == 'equal':
                continue
            a, b = truth[i1:i2], prediction[j1:j2]
            for k in range(max(len(a), len(b))):
                counts[(a[k] if k < len(a) else NOTHING, b[k] if k < len(b) else NOTHING)] += 1
    return counts


def _png(figure) -> bytes:
    buf = io.BytesIO()
    figure.savefig(buf, format='png', dpi=110)
    return buf.getvalue()


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def make_figures(samples: Sequence[Prediction], normalizer: TextNormalizer) -> Figures:
    """Accuracy by label length, calibration (accuracy per confidence bin against its mean confidence) and the most
    frequent character confusions, over every scored sample."""
    by_length: dict[int, list[bool]] = defaultdict(list)
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(CONFIDENCE_BINS)]
    for s in samples:
        by_length[len(normalizer(s.label))].append(s.correct)
        bins[min(int(s.confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)].append((s.confidence, s.correct))
    length_rows = [
        {'length': n, 'samples': len(v), 'accuracy': 100.0 * sum(v) / len(v)} for n, v in sorted(by_length.items())
    ]
    calibration = [
        {
            'bin': f'{i / CONFIDENCE_BINS:.1f}-{(i + 1) / CONFIDENCE_BINS:.1f}',
            'samples': len(b),
            'confidence': 100.0 * float(np.mean([c for c, _ in b])),
            'accuracy': 100.0 * sum(ok for _, ok in b) / len(b),
        }
        for i, b in enumerate(bins)
        if b
    ]
    wrong = [(normalizer(s.label), normalizer(s.prediction)) for s in samples if not s.correct]
    confusions = [(a, b, n) for (a, b), n in character_confusions(wrong).most_common(TOP_CONFUSIONS)]

    png = {}
    figure = _figure()
    ax = figure.add_subplot()
    positions = range(len(length_rows))
    ax.bar(positions, [r['accuracy'] for r in length_rows], color='#4878a8')
    ax.set_xticks(positions, [str(r['length']) for r in length_rows])
    for i, r in enumerate(length_rows):
        ax.annotate(str(r['samples']), (i, r['accuracy']), ha='center', va='bottom', fontsize=7)
    ax.set(xlabel='label length (characters; sample counts above the bars)', ylabel='word accuracy (%)', ylim=(0, 105))
    ax.set_title('Accuracy by label length', fontsize=10)
    figure.tight_layout()
    png['accuracy_by_length'] = _png(figure)

    figure = _figure(4.8, 4.4)
    ax = figure.add_subplot()
    ax.plot([0, 100], [0, 100], '--', color='grey', linewidth=1, label='perfectly calibrated')
    ax.plot([r['confidence'] for r in calibration], [r['accuracy'] for r in calibration], 'o-', color='#c8553d')
    ax.set(xlabel='mean confidence in the bin (%)', ylabel='word accuracy in the bin (%)', xlim=(0, 100), ylim=(0, 100))
    ax.set_title('Calibration (10 confidence bins)', fontsize=10)
    ax.legend(fontsize=8, loc='upper left')
    figure.tight_layout()
    png['calibration'] = _png(figure)

    figure = _figure(6.4, max(2.0, 0.25 * len(confusions) + 1))
    ax = figure.add_subplot()
    labels = [f'{a} → {b}' for a, b, _ in confusions] or ['(no confusions)']
    positions = range(len(labels))
    ax.barh(positions, [n for _, _, n in confusions][::-1] or [0], color='#6a994e')
    ax.set_yticks(positions, labels[::-1])
    ax.set(xlabel='occurrences among the wrong predictions')
    ax.set_title('Most frequent character confusions (truth → prediction)', fontsize=10)
    figure.tight_layout()
    png['confusions'] = _png(figure)
    return Figures(png, length_rows, calibration, confusions)


def _data_uri(data: bytes, mime: str = 'image/png') -> str:
    return f'data:{mime};base64,{base64.b64encode(data).decode("ascii")}'


def _encode(img: Image.Image) -> str:
    buf = io.BytesIO()
    convert_mode(img, 'RGB').save(buf, format='PNG')
    return _data_uri(buf.getvalue())


def stored_image(sample: Prediction) -> Image.Image | None:
    """The sample's image as stored in its LMDB, or None when it has no LMDB location or does not decode."""
    if not sample.root:
        return None
    with shared_readonly_env(sample.root).begin(buffers=True) as txn:
        raw = txn.get(image_key(sample.index))
        data = bytes(raw) if raw is not None else None
    if data is None:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError):
        return None
    return img


def gallery_entries(
    errors: Sequence[Prediction], preprocess: Preprocess, normalizer: TextNormalizer, per_set: int
) -> list[dict]:
    """The wrong predictions to show (the first ``per_set`` of each set), with their images as data URIs."""
    shown: Counter[str] = Counter()
    entries = []
    for sample in errors:
        if shown[sample.dataset] >= per_set:
            continue
        shown[sample.dataset] += 1
        img = stored_image(sample)
        truth, prediction = normalizer(sample.label), normalizer(sample.prediction)
        truth_html, prediction_html = diff_html(truth, prediction)
        entry = {
            'dataset': sample.dataset,
            'key': sample.key,
            'label': sample.label,
            'prediction': sample.prediction,
            'truth_html': truth_html,
            'prediction_html': prediction_html,
            'confidence': sample.confidence,
            'length': len(truth),
            'model_input': None,
            'stored': None,
            'stored_size': '',
        }
        if img is not None:
            entry['model_input'] = _encode(preprocess.resize_image(img))
            entry['stored_size'] = f'{img.width}×{img.height}'
            thumbnail = convert_mode(img, 'RGB')
            thumbnail.thumbnail(STORED_THUMBNAIL)
            entry['stored'] = _encode(thumbnail)
        entries.append(entry)
    return entries


def attention_entries(system, errors: Sequence[Prediction], preprocess: Preprocess, limit: int) -> list[dict]:
    """Attention-map figures (PNG data URIs) for the first ``limit`` wrong predictions, for systems that offer
    ``attention_maps`` (MGP-STR's A³ modules); empty for the others."""
    if not system.offers_attention_maps:
        return []
    import torch

    from strhub.reading import attention_figure

    entries = []
    for sample in errors[:limit]:
        img = stored_image(sample)
        if img is None:
            continue
        shown = np.asarray(convert_mode(preprocess.resize_image(img), 'RGB'))
        with torch.inference_mode():
            maps = system.attention_maps(preprocess(img)[None].to(system.device))
        for head, (tokens, grids) in maps.items():
            figure = attention_figure(shown, tokens[0], grids[0], f'{sample.key}: {head}')
            entries.append({'key': sample.key, 'head': head, 'png': _data_uri(_png(figure))})
    return entries


def write_report(
    evaluation: Evaluation,
    out_dir: str | Path,
    preprocess: Preprocess,
    normalizer: TextNormalizer,
    title: str,
    system=None,
    settings: Mapping[str, object] | None = None,
    per_set: int = MAX_GALLERY_PER_SET,
) -> Path:
    """Writes ``index.html`` and the figures as PNGs (``accuracy_by_length.png``, ``calibration.png``,
    ``confusions.png``) under ``out_dir``; returns the page's path.

    Args:
        evaluation: from :func:`strhub.evaluation.run_evaluation` with ``collect_errors`` and ``collect_samples``.
        preprocess: the model's preprocessing, to show each crop as the model saw it.
        normalizer: the comparison normalisation (the diffs and the figures use the compared forms).
        system: the evaluated system, for the attention maps of those that offer them.
        settings: shown in the page's header (checkpoint, comparison options ...).
    """
    if not evaluation.samples:
        raise ValueError('the evaluation has no per-sample records: run it with collect_samples=True for a report')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = make_figures(evaluation.samples, normalizer)
    for name, data in figures.png.items():
        (out_dir / f'{name}.png').write_bytes(data)
    errors = [s for s in evaluation.samples if not s.correct]
    rows = [{'name': name, **row} for name, row in evaluation.results.items() if name != COMBINED]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=jinja2.StrictUndefined
    )
    page = environment.get_template('report.html.j2').render(
        title=title,
        settings=dict(settings or {}),
        rows=rows,
        combined=evaluation.results[COMBINED],
        skipped=format_skipped(evaluation.skipped),
        datasets=[row['name'] for row in rows],
        gallery=gallery_entries(errors, preprocess, normalizer, per_set),
        num_errors=len(errors),
        per_set=per_set,
        figures={name: _data_uri(data) for name, data in figures.png.items()},
        by_length=figures.by_length,
        calibration=figures.calibration,
        confusions=figures.confusions,
        attention=attention_entries(system, errors, preprocess, MAX_ATTENTION_SAMPLES) if system is not None else [],
    )
    path = out_dir / 'index.html'
    path.write_text(page, encoding='utf-8')
    log.info('report: %s (%d wrong predictions of %d)', path, len(errors), len(evaluation.samples))
    return path
