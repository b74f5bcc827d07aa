"""A leaderboard from several runs: ``test.py --results`` files (accuracy per set) and ``bench.py +json=`` files
(parameters, FLOPs, latency) joined by model name into one table, and the accuracy-against-cost plots.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strhub.metrics import COMBINED
from strhub.tables import render_table

log = logging.getLogger(__name__)

THROUGHPUT_BATCH = 64  # the batch size whose throughput the table reports (the largest measured one up to it)


@dataclass
class Entry:
    """One model's figures gathered from its files."""

    model: str
    accuracy: dict[str, float] = field(default_factory=dict)
    one_minus_ned: float | None = None
    params_m: float | None = None
    gflops: float | None = None
    latency_ms: float | None = None
    throughput: float | None = None
    throughput_batch: int | None = None
    device: str = ''
    sources: list[str] = field(default_factory=list)


def _model_name(data: dict, path: Path) -> str:
    if data.get('model'):
        return str(data['model'])
    checkpoint = str(data.get('checkpoint', ''))
    return Path(checkpoint).parent.parent.name or path.stem if checkpoint else path.stem


def read_entries(paths: Sequence[str | Path]) -> list[Entry]:
    """Entries by model name, in the order the models first appear; a results file and a bench file of the same
    model fill one entry.

    Raises:
        ValueError: a file is neither a test.py results file nor a bench.py JSON file.
    """
    entries: dict[str, Entry] = {}
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise ValueError(f'{path}: not a readable JSON file ({e})') from None
        if not isinstance(data, dict) or not ({'results', 'latency'} & set(data)):
            raise ValueError(
                f'{path}: neither a test.py results file (--results) nor a bench.py file (+json=); it has no '
                '"results" or "latency" entry'
            )
        name = _model_name(data, path)
        entry = entries.setdefault(name, Entry(name))
        entry.sources.append(str(path))
        if 'results' in data:
            results = data['results']
            entry.accuracy.update({k: float(v['accuracy']) for k, v in results.items() if k != COMBINED})
            if COMBINED in results:
                entry.accuracy[COMBINED] = float(results[COMBINED]['accuracy'])
                entry.one_minus_ned = float(results[COMBINED]['one_minus_ned'])
        if 'latency' in data:
            plain = [row for row in data['latency'] if row.get('option', 'none') == 'none'] or data['latency']
            batch1 = [row for row in plain if row['batch_size'] == 1]
            entry.latency_ms = float(batch1[0]['median_ms']) if batch1 else None
            upto = [row for row in plain if row['batch_size'] <= THROUGHPUT_BATCH] or plain
            best = max(upto, key=lambda row: row['batch_size'])
            entry.throughput, entry.throughput_batch = float(best['images_per_s']), int(best['batch_size'])
            entry.device = f'{data.get("device", "")}' + (
                f' ({data["threads"]} threads)' if data.get('threads') else ''
            )
            total = next((row for row in data.get('compute') or [] if row.get('module') == 'total'), None)
            if total is not None:
                entry.params_m, entry.gflops = float(total['params_M']), float(total['gflops'])
    return list(entries.values())


def _columns(entries: Sequence[Entry]) -> list[str]:
    sets = list(dict.fromkeys(name for e in entries for name in e.accuracy if name != COMBINED))
    return sets + ([COMBINED] if any(COMBINED in e.accuracy for e in entries) else [])


def table_rows(entries: Sequence[Entry]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard (best Combined accuracy first); '' where a figure is missing."""
    sets = _columns(entries)

    def number(value: float | None, fmt: str) -> str:
        return '' if value is None else format(value, fmt)

    header = ['Model', 'Params (M)', 'GFLOPs', 'Latency b1 (ms)', f'Images/s (b{THROUGHPUT_BATCH})', 'Device']
    header += [f'{name} acc' for name in sets] + ['1 - NED']
    ordered = sorted(entries, key=lambda e: -e.accuracy.get(COMBINED, float('-inf')))
    rows = []
    for e in ordered:
        throughput = number(e.throughput, '.1f')
        if throughput and e.throughput_batch != THROUGHPUT_BATCH:
            throughput += f' (b{e.throughput_batch})'
        rows.append(
            [e.model, number(e.params_m, '.3f'), number(e.gflops, '.3f'), number(e.latency_ms, '.2f'), throughput]
            + [e.device]
            + [number(e.accuracy.get(name), '.2f') for name in sets]
            + [number(e.one_minus_ned, '.2f')]
        )
    return header, rows


def markdown(entries: Sequence[Entry]) -> str:
    return render_table(*table_rows(entries))


def csv_text(entries: Sequence[Entry]) -> str:
    return render_table(*table_rows(entries), fmt='csv') + '\n'


def plot(entries: Sequence[Entry], path: str | Path) -> Path:
    """A PNG of Combined accuracy against batch-1 latency and against parameters, one labelled point per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    panels = [
        ('latency_ms', 'latency at batch 1 (ms, log scale)', 'Accuracy against latency'),
        ('params_m', 'parameters (M, log scale)', 'Accuracy against size'),
    ]
    for i, (attribute, xlabel, title) in enumerate(panels, start=1):
        ax = figure.add_subplot(1, 2, i)
        points = [(getattr(e, attribute), e.accuracy[COMBINED], e.model) for e in entries]
        points = [(x, y, name) for x, y, name in points if x is not None and x > 0 and y is not None]
        for x, y, name in points:
            ax.scatter([x], [y], s=30)
            ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
        if points:
            ax.set_xscale('log')
        else:
            ax.text(0.5, 0.5, 'no model has both figures', ha='center', transform=ax.transAxes)
        ax.set(xlabel=xlabel, ylabel='Combined word accuracy (%)', title=title)
        ax.grid(True, alpha=0.3)
    devices = sorted({e.device for e in entries if e.device})
    if devices:
        figure.suptitle('measured on ' + '; '.join(devices), fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def missing_figures(entries: Sequence[Entry]) -> list[str]:
    """A line per model that lacks accuracy or cost figures (it is in the table, not in the plot)."""
    lines = []
    for e in entries:
        if COMBINED not in e.accuracy:
            lines.append(f'{e.model}: no test.py results file (accuracy)')
        if e.latency_ms is None:
            lines.append(f'{e.model}: no bench.py file with a batch-1 latency')
    return lines
