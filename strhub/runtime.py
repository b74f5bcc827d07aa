"""Reading text with an exported ONNX recogniser, using only numpy, Pillow and onnxruntime.

This module is what a deployment ships next to a ``tools/export.py`` file: it imports neither torch nor the rest of
strhub, and takes everything it needs (preprocessing, token table, decoding rule) from the file's ``strhub.*``
metadata.

    python -m strhub.runtime model.onnx word1.png word2.jpg
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image

REQUIRED_KEYS = ('img_size', 'channels', 'resize', 'interpolation', 'pad_value', 'mean', 'std', 'decoding', 'tokens')


@dataclass(frozen=True)
class RecognizerSpec:
    """What the ``strhub.*`` metadata of an export says about its input and output."""

    img_size: tuple[int, int]
    channels: int
    resize: str
    interpolation: str
    pad_value: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    decoding: str
    tokens: tuple[str, ...]
    special_id: int  # EOS (attention) or blank (CTC)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = 'model') -> RecognizerSpec:
        """Parses ``strhub.*`` metadata (as ``onnxruntime``'s ``custom_metadata_map`` returns it)."""
        meta = {k.removeprefix('strhub.'): v for k, v in metadata.items() if k.startswith('strhub.')}
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ValueError(
                f'{source} lacks the strhub metadata {missing}; export it with tools/export.py (which writes the '
                'preprocessing and token table into the file)'
            )
        decoding = meta['decoding']
        if decoding not in ('attention', 'ctc'):
            raise ValueError(f"{source}: unknown decoding {decoding!r} (this reader knows 'attention' and 'ctc')")
        special_key = 'blank_id' if decoding == 'ctc' else 'eos_id'
        if special_key not in meta:
            raise ValueError(f'{source}: {decoding} decoding needs strhub.{special_key} in the metadata')
        height, width = json.loads(meta['img_size'])
        return cls(
            img_size=(int(height), int(width)),
            channels=int(meta['channels']),
            resize=meta['resize'],
            interpolation=meta['interpolation'],
            pad_value=int(meta['pad_value']),
            mean=tuple(json.loads(meta['mean'])),
            std=tuple(json.loads(meta['std'])),
            decoding=decoding,
            tokens=tuple(json.loads(meta['tokens'])),
            special_id=int(meta[special_key]),
        )


def decode_logits(logits: np.ndarray, spec: RecognizerSpec) -> list[tuple[str, float]]:
    """Greedy decoding of (N, L, C) logits -> (text, confidence) per row.

    Attention: tokens up to the first EOS; the confidence is the product of the top probabilities up to and including
    EOS. CTC: repeated tokens collapse and blanks drop; every frame counts towards the confidence.
    """
    shifted = logits.astype(np.float32) - logits.max(-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(-1, keepdims=True)
    ids, top = probs.argmax(-1), probs.max(-1)
    results = []
    for row_ids, row_top in zip(ids, top):
        if spec.decoding == 'ctc':
            keep = np.ones(len(row_ids), dtype=bool)
            keep[1:] = row_ids[1:] != row_ids[:-1]
            keep &= row_ids != spec.special_id
            text = ''.join(spec.tokens[i] for i in row_ids[keep])
            confidence = float(np.prod(row_top, dtype=np.float64))
        else:
            eos = np.flatnonzero(row_ids == spec.special_id)
            end = int(eos[0]) if len(eos) else len(row_ids)
            text = ''.join(spec.tokens[i] for i in row_ids[:end])
            confidence = float(np.prod(row_top[: end + 1], dtype=np.float64))
        results.append((text, confidence))
    return results


class OnnxRecognizer:
    """An exported recogniser in an onnxruntime session.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ('CPUExecutionProvider',)) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'no ONNX file at {path}; export one with tools/export.py')
        self.session = ort.InferenceSession(str(path), providers=list(providers))
        self.spec = RecognizerSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # A fixed batch dimension is an int; a dynamic one is a name or None.
        self.fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        spec = self.spec
        # uint8 -> normalised float32 by table look-up, computed as strhub's preprocessing computes it (float64,
        # then float32), so the inputs are bit-identical.
        values = np.arange(256, dtype=np.float64)[None, :] / 255.0
        self._lut = ((values - np.array(spec.mean)[:, None]) / np.array(spec.std)[:, None]).astype(np.float32)
        self._resample = getattr(Image.Resampling, spec.interpolation.upper())

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """PIL image -> (C, H, W) float32 model input."""
        spec = self.spec
        img = img.convert('RGB' if spec.channels == 3 else 'L')
        height, width = spec.img_size
        if spec.resize == 'stretch':
            if img.size != (width, height):
                img = img.resize((width, height), self._resample)
        elif spec.resize == 'keep_ratio':
            scale = min(height / img.height, width / img.width)
            new_size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            canvas = Image.new(img.mode, (width, height), (spec.pad_value,) * spec.channels)
            canvas.paste(img.resize(new_size, self._resample), (0, 0))
            img = canvas
        else:
            raise ValueError(f"unknown resize mode {spec.resize!r} (this reader knows 'stretch' and 'keep_ratio')")
        arr = np.asarray(img)
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return self._lut[np.arange(chw.shape[0])[:, None, None], chw]

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, L, num_classes) logits, in chunks of the file's fixed batch size if any."""
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: images})[0]
        outputs = []
        for start in range(0, len(images), self.fixed_batch):
            chunk = images[start : start + self.fixed_batch]
            filled = len(chunk)
            if filled < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - filled, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(self.session.run(None, {self.input_name: chunk})[0][:filled])
        return np.concatenate(outputs)

    def decode(self, logits: np.ndarray) -> list[tuple[str, float]]:
        """(N, L, C) logits -> (text, confidence) per row (see :func:`decode_logits`)."""
        return decode_logits(logits, self.spec)

    def read(self, images: Iterable[Image.Image]) -> list[tuple[str, float]]:
        """PIL images -> (text, confidence) per image."""
        batch = np.stack([self.preprocess(img) for img in images])
        return self.decode(self.logits(batch))

    def read_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 64) -> list[tuple[str, float]]:
        """Image files -> (text, confidence) per file."""
        results = []
        for start in range(0, len(paths), batch_size):
            images = []
            for path in paths[start : start + batch_size]:
                try:
                    with Image.open(path) as img:
                        images.append(img.copy())
                except (OSError, SyntaxError) as e:
                    raise ValueError(f'cannot read image {path}: {e}') from e
            results.extend(self.read(images))
        return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='an .onnx file exported with tools/export.py')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--batch_size', type=int, default=64)
    args = parser.parse_args(argv)
    try:
        recognizer = OnnxRecognizer(args.model)
        results = recognizer.read_files(args.images, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for path, (text, confidence) in zip(args.images, results):
        print(f'{path}: {text} ({confidence:.4f})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
