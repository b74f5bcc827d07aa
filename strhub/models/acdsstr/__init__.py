"""ACDS-STR (Xue et al., IEEE TIP 2025): MGP-STR's character branch with a ResNet-45 + feature-pyramid stem, a
character core-area mask learned from per-character boxes, and attention guidance by that mask."""

from .masks import core_area_masks
from .model import ACDSSTR, ACDSOutput

__all__ = ['ACDSSTR', 'ACDSOutput', 'core_area_masks']
