"""Reading one image with GOT-OCR2's other prompts: a box- or colour-guided region, formatted output, and
multi-crop tiling (tiles plus a thumbnail). ``./read.py --box/--color/--format/--crops`` call it through
:meth:`GotOcr2System.read_prompted`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from strhub.data.preprocess import convert_mode
from strhub.models.gotocr2.prompts import build_prompt, crop_tiles, normalize_box, plan_tiling
from strhub.models.gotocr2.system import GotOcr2System


def prepare_inputs(
    system: GotOcr2System,
    image: Image.Image,
    box: Sequence[float] | None = None,
    color: str | None = None,
    with_format: bool = False,
    max_crops: int = 1,
) -> tuple[Tensor, Tensor]:
    """The model inputs for one PIL image: (1, K, 3, H, W) crops and (1, P) prompt ids.

    Args:
        box: ``[x1, y1, x2, y2]`` in pixels of ``image``: read only that region.
        color: ``red``, ``green`` or ``blue``: read only the text boxed in that colour.
        with_format: formatted output (markdown / LaTeX) instead of plain text.
        max_crops: > 1 tiles the image into at most this many crops of the model's input size, plus a thumbnail.
    """
    if not isinstance(system, GotOcr2System):
        raise TypeError(f'{type(system).__name__} is not a GOT-OCR2 system; region and crop prompts need one')
    preprocess = system.preprocessing
    image = convert_mode(image, 'RGB')
    region = normalize_box(box, image.size) if box is not None else None
    if max_crops > 1:
        tiling = plan_tiling(image.size, tuple(system.model.img_size), 1, max_crops)
        crops = [
            preprocess(tile)
            for tile in crop_tiles(image, tiling, getattr(Image.Resampling, preprocess.interpolation.upper()))
        ]
    else:
        crops = [preprocess(image)]
    prompt = build_prompt(system.model.num_image_tokens, len(crops), region, color, with_format)
    prompt_ids = torch.as_tensor(system.tokenizer.text_ids(prompt), device=system.device)
    return torch.stack(crops)[None].to(system.device), prompt_ids[None]


@torch.inference_mode()
def read_image(
    system: GotOcr2System,
    image: Image.Image,
    box: Sequence[float] | None = None,
    color: str | None = None,
    with_format: bool = False,
    max_crops: int = 1,
    max_new_tokens: int | None = None,
) -> tuple[str, float]:
    """``(text, confidence)`` for one PIL image (see :func:`prepare_inputs` for the options); ``max_new_tokens``
    caps the answer length (the model's ``max_label_length + 1`` when None)."""
    images, prompt_ids = prepare_inputs(system, image, box, color, with_format, max_crops)
    out = system.model.generate(images, prompt_ids, max_new_tokens)
    (text,), (probs,) = system.tokenizer.decode_ids(out.ids, out.probs)
    return text, float(probs.prod())
