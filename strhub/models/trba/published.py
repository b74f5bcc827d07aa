"""TRBA's published weights: the baudm/parseq v1.0.0 release file (a whole reference LightningModule, our
keys), trained on the 94-character charset."""

from __future__ import annotations

from strhub.models.registry import RELEASE, register_release

register_release('trba', f'{RELEASE}/trba-cfaed284.pt', 'trba', 'strhub_system', ('charset=94_full',))
