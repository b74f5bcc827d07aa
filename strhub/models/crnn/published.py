"""CRNN's published weights: the baudm/parseq v1.0.0 release file (a whole reference LightningModule, our
keys), trained on the 94-character charset."""

from __future__ import annotations

from strhub.models.registry import RELEASE, register_release

register_release('crnn', f'{RELEASE}/crnn-679d0e31.pt', 'crnn', 'strhub_system', ('charset=94_full',))
