"""Reading text from image files with a trained system: the logic behind ``./read.py``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from strhub.models.base import BaseSystem


@torch.inference_mode()
def read_images(
    system: BaseSystem,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    failures: list[tuple[str, str]] | None = None,
) -> Iterator[tuple[str, str, float]]:
    """Yields ``(path, text, confidence)`` for each image, in batches. With ``failures`` given, an unreadable file
    is appended to it as ``(path, reason)`` and the others are still read; without, it raises a ValueError."""
    preprocess = system.preprocessing
    for start in range(0, len(paths), batch_size):
        images, readable = [], []
        for path in (str(p) for p in paths[start : start + batch_size]):
            try:
                with open_image(path) as img:
                    images.append(preprocess(img))
            except ValueError as e:
                if failures is None:
                    raise
                failures.append((path, str(e)))
                continue
            readable.append(path)
        if not images:
            continue
        texts, probs = system.predict(torch.stack(images).to(system.device))
        for path, text, p in zip(readable, texts, probs):
            yield path, text, float(p.prod())


def open_image(path: str | Path) -> Image.Image:
    """Opens an image file (the first frame of an animation); an unreadable one raises a ValueError naming it."""
    if Path(path).is_dir():
        raise ValueError(f'cannot read image {path}: it is a directory; pass the image files in it (e.g. {path}/*)')
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise ValueError(f'cannot read image {path}: no such file') from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f'cannot read image {path}: {e}') from None
    if min(img.size) < 1:
        raise ValueError(f'cannot read image {path}: it has no pixels ({img.width}x{img.height})')
    return img


# Layout of the attention figures: slots per row, and the size of one slot's panel in inches.
ATTENTION_COLUMNS = 3
ATTENTION_PANEL_INCHES = (2.4, 0.9)


@torch.inference_mode()
def save_attention_maps(
    system: BaseSystem, paths: Sequence[str | Path], out_dir: str | Path, batch_size: int = 64
) -> list[Path]:
    """Saves, for each image and prediction head, the attention of every slot read (up to the end token) over the
    image as ``<out_dir>/<image name>_<head>.png`` (one panel per slot, titled by the token read there).

    The system must expose ``attention_maps(images) -> {head: (tokens per image, (N, slots, h, w) maps)}`` (MGP-STR's
    A³ modules); token ``j`` is read from slot ``j + 1``. Returns the files written.
    """
    if not system.offers_attention_maps:
        raise ValueError(
            f'{type(system).__name__} has no attention maps to save; --attention works with models that read through '
            'spatial attention slots (MGP-STR)'
        )
    preprocess = system.preprocessing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems: dict[str, int] = {}
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        shown, inputs = [], []
        for path in chunk:
            with open_image(path) as img:
                shown.append(np.asarray(preprocess.resize_image(img).convert('RGB')))
                inputs.append(preprocess(img))
        maps = system.attention_maps(torch.stack(inputs).to(system.device))
        for i, path in enumerate(chunk):
            count = stems.get(path.stem, 0)
            stems[path.stem] = count + 1
            stem = path.stem if count == 0 else f'{path.stem}-{count}'
            for head, (tokens, grids) in maps.items():
                figure = attention_figure(shown[i], tokens[i], grids[i], f'{path.name}: {head}')
                target = out_dir / f'{stem}_{head}.png'
                figure.savefig(target, dpi=100)
                written.append(target)
    return written


def attention_figure(shown: np.ndarray, tokens: Sequence[str], grids: torch.Tensor, title: str):
    """A matplotlib Figure: one panel per token read, the (H, W, 3) image ``shown`` under the attention of the slot
    that read it (``grids``: (slots, h, w); token ``j`` is read from slot ``j + 1``), titled by the token."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = shown.shape[:2]
    panels = list(tokens) or ['(nothing read)']
    rows = -(-len(panels) // ATTENTION_COLUMNS)
    panel_w, panel_h = ATTENTION_PANEL_INCHES
    figure = Figure(figsize=(ATTENTION_COLUMNS * panel_w, rows * panel_h + 0.3))
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=9)
    for j, token in enumerate(panels):
        ax = figure.add_subplot(rows, ATTENTION_COLUMNS, j + 1)
        ax.imshow(shown)
        if tokens:
            grid = grids[j + 1].float().cpu().numpy()
            ax.imshow(grid, cmap='jet', alpha=0.5, extent=(0, width, height, 0), interpolation='bilinear')
        # '$' would start matplotlib's math mode.
        ax.set_title(token.replace('$', r'\$'), fontsize=8)
        ax.axis('off')
    figure.tight_layout()
    return figure
