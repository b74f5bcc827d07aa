"""Reading text from image files with a trained system: the logic behind ``./read.py``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from strhub.data.preprocess import Preprocess
from strhub.models.base import BaseSystem


def preprocess_for(system: BaseSystem) -> Preprocess:
    """The preprocessing preset a system was trained with."""
    hp = system.hparams
    return Preprocess(img_size=list(hp.img_size), **dict(hp.preprocess or {}))


@torch.inference_mode()
def read_images(
    system: BaseSystem, paths: Sequence[str | Path], batch_size: int = 64
) -> Iterator[tuple[str, str, float]]:
    """Yields ``(path, text, confidence)`` for each image, in batches."""
    preprocess = preprocess_for(system)
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        images = []
        for path in chunk:
            try:
                with Image.open(path) as img:
                    images.append(preprocess(img))
            except (OSError, SyntaxError) as e:
                raise ValueError(f'cannot read image {path}: {e}') from e
        texts, probs = system.predict(torch.stack(images).to(system.device))
        for path, text, p in zip(chunk, texts, probs):
            yield path, text, float(p.prod())
