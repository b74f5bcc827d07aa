"""The device benchmark scripts run their code paths on the CPU (no GPU in CI): every option, both data modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_word_lmdb

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL_PARSEQ = [
    'model.arch.embed_dim=32',
    'model.arch.enc_depth=1',
    'model.arch.enc_num_heads=2',
    'model.arch.dec_num_heads=2',
]


def run_script(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, 'benchmarks/vs_reference.py', '--models', 'parseq-tiny', '--device', 'cpu', *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)


@pytest.mark.parametrize(
    'options',
    [
        pytest.param(['--precision', 'bf16', '--fused', '--channels-last'], id='bf16-fused-channels-last'),
        pytest.param(['--compile'], id='compile'),
    ],
)
def test_vs_reference_trains_ours_on_cpu(options, tmp_path):
    data = make_word_lmdb(tmp_path / 'words', 16)
    proc = run_script(
        '--batch-size', '4', '--steps', '2', '--warmup', '1', '--rounds', '1', '--data', str(data), '--workers', '1',
        *options, '--set', *SMALL_PARSEQ,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(proc.stdout.splitlines()[0].split(maxsplit=2)[2])
    assert first['samples_per_s'] > 0 and first['workers'] == 1 and first['device'].startswith('cpu')
    assert 'training, batch 4' in proc.stdout and 'LMDB, with augmentation' in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith('| parseq-tiny |')


def test_vs_reference_side_reports_a_finite_loss(tmp_path):
    proc = run_script(
        '--batch-size', '2', '--steps', '1', '--warmup', '0', '--side', 'ours', '--model', 'parseq-tiny',
        '--workdir', str(tmp_path), '--workers', '0', '--set', *SMALL_PARSEQ,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['samples_per_s'] > 0 and 0 < result['final_loss'] < 20
    assert result['device'].startswith('cpu')


def test_vs_reference_times_inference_of_ours_on_cpu():
    proc = run_script('--task', 'infer', '--batch-sizes', '1', '3', '--steps', '2', '--warmup', '1', '--rounds', '1',
                      '--set', *SMALL_PARSEQ)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'ms at batch 1, ours' in proc.stdout and 'ms at batch 3, ours' in proc.stdout
    row = proc.stdout.strip().splitlines()[-1]
    assert row.startswith('| parseq-tiny |') and row.rstrip(' |').endswith('nan')  # no reference: nothing compared


def test_vs_reference_refuses_a_folder_without_the_reference(tmp_path):
    proc = run_script('--reference', str(tmp_path), '--steps', '1')
    assert proc.returncode == 2 and 'has no strhub/ package' in proc.stderr


def test_num_workers_auto_is_sized_to_the_machine(monkeypatch):
    from strhub.data.module import resolve_num_workers

    monkeypatch.setattr('os.sched_getaffinity', lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr('torch.cuda.device_count', lambda: 1)
    assert resolve_num_workers('auto') == 8
    monkeypatch.setattr('torch.cuda.device_count', lambda: 4)
    assert resolve_num_workers('auto') == 3  # 4 cores per GPU, one of them trains
    monkeypatch.setattr('os.sched_getaffinity', lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr('torch.cuda.device_count', lambda: 0)
    assert resolve_num_workers('auto') == 1 and resolve_num_workers(0) == 0
    with pytest.raises(ValueError, match=r"data.num_workers must be a number >= 0 or 'auto', got 'many'"):
        resolve_num_workers('many')
