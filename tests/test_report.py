"""Results to look at: the HTML report opened in a real headless browser, the leaderboard, the sweep plot, and the
plain progress lines of a training run whose output is not a terminal."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from strhub.leaderboard import read_entries
from strhub.report import character_confusions, diff_html
from strhub.tune import TrialRow, plot_trials
from tests.conftest import REPO_ROOT, TINY_PARSEQ, make_word_lmdb
from tests.test_user_paths import script, train_tiny


@pytest.fixture(scope='module')
def checkpoint(word_data, tmp_path_factory) -> Path:
    return train_tiny(word_data, tmp_path_factory.mktemp('run') / 'tiny')


@pytest.fixture(scope='module')
def report(checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('sets')
    make_word_lmdb(root / 'IIIT5k', 12, seed=5)
    make_word_lmdb(root / 'SVT', 6, seed=6, size=(140, 40))
    out = root.parent / (root.name + '-report')
    assert script('test')([str(checkpoint), '--test_dirs', str(root), '--num_workers', '0', '--report', str(out),
                           '--results', str(out / 'results.json')]) == 0  # fmt: skip
    return out


def test_the_diff_marks_misread_missed_and_inserted_characters():
    truth, pred = diff_html('street', 'stret5')
    assert str(truth) == 'stre<del>e</del>t' and str(pred) == 'stret<ins>5</ins>'
    truth, pred = diff_html('a<b', 'a<c')  # text is escaped, markup is not
    assert str(truth) == 'a&lt;<del>b</del>' and str(pred) == 'a&lt;<ins>c</ins>'
    assert character_confusions([('cat', 'cot'), ('cat', 'ca'), ('cat', 'cot')]) == {('a', 'o'): 2, ('t', '∅'): 1}


def wrong(report: Path, name: str = 'Combined') -> int:
    """How many predictions of set ``name`` were wrong, from the run's results file."""
    row = json.loads((report / 'results.json').read_text())['results'][name]
    return round(row['num_samples'] * (1 - row['accuracy'] / 100))


def test_report_files(report):
    assert {p.name for p in report.iterdir()} >= {'index.html', 'accuracy_by_length.png', 'calibration.png',
                                                   'confusions.png'}  # fmt: skip
    page = (report / 'index.html').read_text()
    assert wrong(report) > 0 and page.count('class="card"') == wrong(report)  # one card per wrong prediction
    assert 'src="data:image/png;base64,' in page and 'http' not in page.split('<body>')[1].split('<script>')[0]


def _chromium() -> str:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip('no Chromium here (make test installs the distribution package where it can: apt-get, as root)')


def _open(page: Path, fragment: str = '') -> tuple[str, str]:
    """The DOM after the page's scripts ran, and the browser's log (console messages included)."""
    proc = subprocess.run(
        [_chromium(), '--headless=new', '--no-sandbox', '--disable-gpu', '--enable-logging=stderr', '--v=0',
         '--virtual-time-budget=3000', '--dump-dom', page.as_uri() + fragment],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def test_the_report_works_in_a_real_browser(report):
    dom, log = _open(report / 'index.html')
    console = [line for line in log.splitlines() if ':CONSOLE' in line]
    assert any('"report-ready"' in line for line in console), log[-2000:]  # the page's script ran to the end
    assert not [line for line in console if 'Uncaught' in line or 'Error' in line], console
    assert re.search(r'<td>Combined</td><td>18</td>', dom)  # the results table
    total, svt = wrong(report), wrong(report, 'SVT')
    assert f'id="shown-count">{total} of {total} shown' in dom
    assert 'class="model-input" src="data:image/png;base64,' in dom  # a gallery image
    # The filter: one set, then a confidence range that nothing of a random model reaches.
    dom, _ = _open(report / 'index.html', '#set=SVT&sort=conf')
    assert f'id="shown-count">{svt} of {total} shown' in dom and f'data-shown="{svt}"' in dom and svt < total
    dom, _ = _open(report / 'index.html', '#min_conf=0.999')
    assert f'id="shown-count">0 of {total} shown' in dom


def test_leaderboard_joins_results_and_bench_files(report, tmp_path):
    results = json.loads((report / 'results.json').read_text())
    other = {**results, 'model': 'parseq-other', 'results': {
        k: {**v, 'accuracy': 50.0} for k, v in results['results'].items()}}  # fmt: skip
    (tmp_path / 'other.json').write_text(json.dumps(other))

    def bench(model: str, ms: float, params: float) -> dict:
        latency = [{'option': 'none', 'batch_size': b, 'median_ms': ms * b, 'iqr_ms': 0.1, 'images_per_s': 1000 / ms}
                   for b in (1, 64)]  # fmt: skip
        return {'model': model, 'device': 'cpu', 'threads': 2, 'latency': latency,
                'compute': [{'module': 'total', 'params_M': params, 'gflops': 0.5, 'mactivations': 1.0}]}  # fmt: skip

    (tmp_path / 'b1.json').write_text(json.dumps(bench(results['model'], 3.0, 0.03)))
    (tmp_path / 'b2.json').write_text(json.dumps(bench('parseq-other', 9.0, 23.8)))
    files = [str(report / 'results.json'), str(tmp_path / 'other.json'), str(tmp_path / 'b1.json'),
             str(tmp_path / 'b2.json')]  # fmt: skip
    entries = read_entries(files)
    assert [e.model for e in entries] == [results['model'], 'parseq-other']
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'leaderboard.py'), *files, '--csv', str(tmp_path / 'b.csv'),
         '--plot', str(tmp_path / 'b.png')],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [re.sub(' +', ' ', line) for line in proc.stdout.splitlines()]  # padded to the columns
    assert lines[0].startswith('| Model | Params (M) | GFLOPs | Latency b1 (ms) | Images/s (b64) | Device |')
    assert lines[2].startswith('| parseq-other | 23.800 | 0.500 | 9.00 |')  # best Combined accuracy first
    assert lines[3].startswith(f'| {results["model"]} | 0.030 |') and lines[4].startswith('plot: ')
    assert (tmp_path / 'b.png').stat().st_size > 10_000 and len((tmp_path / 'b.csv').read_text().splitlines()) == 3
    (tmp_path / 'bad.json').write_text('{"x": 1}')
    assert subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'leaderboard.py'), str(tmp_path / 'bad.json')],
                          capture_output=True, timeout=120).returncode == 2  # fmt: skip


def test_sweep_plot(tmp_path):
    rows = [TrialRow(f't{i}', 'completed', {'model.lr': lr}, {'val_NED': ned}) for i, (lr, ned) in
            enumerate([(1e-4, 0.5), (1e-3, 0.7), (3e-3, 0.6)])]  # fmt: skip
    rows.append(TrialRow('t9', 'failed', {'model.lr': 1e-2}, {'val_NED': math.nan}))
    plot_trials(rows, ['model.lr'], 'val_NED', tmp_path / 'trials.png', {'model.lr'})
    assert (tmp_path / 'trials.png').stat().st_size > 5_000
    plot_trials(rows[3:], ['model.lr'], 'val_NED', tmp_path / 'none.png', set())
    assert not (tmp_path / 'none.png').exists()  # nothing to plot: no file


def test_progress_lines_when_the_output_is_not_a_terminal(word_data, tmp_path):
    run_dir = tmp_path / 'run'
    overrides = TINY_PARSEQ + ['dataset=generated', f'data.root_dir={word_data}', 'trainer.max_steps=4',
                               'trainer.val_check_interval=2', 'progress.every_n_steps=2']  # fmt: skip
    proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), *overrides, f'hydra.run.dir={run_dir}'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run_dir / 'train.log').read_text()
    step = re.search(
        r'step 2/4 \| loss [\d.]+ \| lr [\d.e-]+ \| [\d.]+ samples/s \| elapsed \d+:\d\d \| left \d+:\d\d', log
    )
    assert step and 'step 4/4' in log, log[-2000:]
    assert re.search(r'validation at step 2: NED [\d.]+, accuracy [\d.]+', log)
    assert 'step 2/4' in proc.stdout + proc.stderr  # the console gets them too


def test_attention_maps_in_the_report_of_a_model_that_offers_them(tmp_path):
    from tests.conftest import training_losses
    from tests.test_mgpstr import TINY_MGPSTR

    make_word_lmdb(tmp_path / 'data' / 'train' / 'generated' / 'p0', 32)
    make_word_lmdb(tmp_path / 'data' / 'val' / 'generated', 8, seed=1)
    make_word_lmdb(tmp_path / 'sets' / 'IIIT5k', 4, seed=3)
    training_losses(TINY_MGPSTR, tmp_path / 'data', tmp_path / 'run', steps=2)
    ckpt = tmp_path / 'run' / 'checkpoints' / 'last.ckpt'
    args = [str(ckpt), '--test_dirs', str(tmp_path / 'sets'), '--num_workers', '0', '--report', str(tmp_path / 'r')]
    assert script('test')(args) == 0
    page = (tmp_path / 'r' / 'index.html').read_text()
    # Per wrong prediction (up to 12), one figure per MGP-STR head (char, bpe, wordpiece).
    assert page.count('alt="attention') == 3 * min(12, page.count('class="card"')) > 0
