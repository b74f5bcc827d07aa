"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared() -> Path | None:
    env = os.environ.get('STRHUB_SHARED')
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / 'shared')
    return next((c for c in candidates if (c / 'data').is_dir()), None)


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """The project's shared reference data (../shared); tests that need it skip when it is absent."""
    found = _find_shared()
    if found is None:
        pytest.skip('../shared (real crops and reference outputs) is not present next to this checkout; '
                    'set STRHUB_SHARED=/path/to/shared to run this test')
    return found
