"""strhub: scene text recognition toolkit.

import strhub
system = strhub.load('parseq')                        # a release name, a checkpoint, or
system = strhub.load('alibaba-damo/mgp-str-base')     # a Hugging Face repository
texts, confidences = system.predict(images)
"""

from __future__ import annotations

from typing import Any


def load(spec: Any, device: Any = 'cpu', **runtime: Any) -> Any:
    """A trained system in eval mode: see :func:`strhub.models.loading.load` (imported on first use, so that
    ``import strhub`` stays light)."""
    from strhub.models.loading import load as _load

    return _load(spec, device=device, **runtime)
