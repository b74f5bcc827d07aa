"""Per-character boxes (the optional ``boxes-%09d`` LMDB key) on their way to a model.

A stored box belongs to a character of the stored label. Label normalisation (see :class:`LabelFilter`) may remove,
fold or expand characters, so boxes are re-aligned to the filtered label or dropped for that sample; and since
they are not carried through augmentation, ops that move pixels are left out of a policy used with boxes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from strhub.data.augment import AugmentConfig
from strhub.data.labels import LabelFilter

log = logging.getLogger(__name__)

Box = list[float]

# Ops that move pixels: after them a stored box no longer covers its character.
GEOMETRIC_OPS = frozenset({'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y', 'perspective', 'curve'})


def parse_boxes(raw: bytes | str) -> list[Box] | None:
    """The JSON of a ``boxes-%09d`` entry as a list of ``[x0, y0, x1, y1]``, or None when it is not one."""
    try:
        boxes = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(boxes, list):
        return None
    parsed = []
    for box in boxes:
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int | float) for v in box):
            return None
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            return None
        parsed.append([x0, y0, x1, y1])
    return parsed


def align_boxes(raw_label: str, label: str, boxes: Sequence[Box], label_filter: LabelFilter | None) -> list[Box] | None:
    """The boxes of ``label`` (``raw_label`` after ``label_filter``), given one box per character of ``raw_label``.

    Each stored character is filtered on its own; the boxes of characters that are removed are dropped. Returns
    None when the characters do not map one to one onto ``label`` (a character expanded to several, e.g. the
    ligature ``ﬁ`` -> ``fi``, or a normalisation that depends on the neighbours), or when the box count does not
    match ``raw_label``.
    """
    if len(boxes) != len(raw_label):
        return None
    if label_filter is None:
        return [list(b) for b in boxes] if label == raw_label else None
    pieces = [label_filter(char)[0] or '' for char in raw_label]
    if any(len(piece) > 1 for piece in pieces) or ''.join(pieces) != label:
        return None
    return [list(box) for box, piece in zip(boxes, pieces, strict=True) if piece]


def without_geometric_ops(cfg: AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig | None:
    """``cfg`` with the ops of :data:`GEOMETRIC_OPS` left out (and ``num_ops`` capped to the remaining pool), for
    training with boxes; None stays None."""
    if cfg is None:
        return None
    if not isinstance(cfg, AugmentConfig):
        cfg = AugmentConfig.from_dict(cfg)
    if not cfg.enabled:
        return cfg
    ops = tuple(op for op in cfg.ops if op not in GEOMETRIC_OPS)
    extra_ops = {name: extra for name, extra in cfg.extra_ops.items() if name not in GEOMETRIC_OPS}
    removed = sorted({*cfg.ops, *cfg.extra_ops} - {*ops, *extra_ops})
    if removed:
        log.info('training with per-character boxes: augmentation ops %s are left out (they move pixels)', removed)
    return dataclasses.replace(cfg, ops=ops, extra_ops=extra_ops, num_ops=min(cfg.num_ops, len(ops)))
