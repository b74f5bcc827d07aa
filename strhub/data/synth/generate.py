"""Writing a synthetic dataset to LMDB, rendered by a pool of worker processes.

Images are stored as JPEG at quality 95 without chroma subsampling. On 32-pixel-high samples this is about half
the size of PNG (3.3 vs 6.2 KiB) and encodes five times faster (0.09 vs 0.46 ms), for a mean error of 1.6 grey
levels, well below the noise the renderer adds itself. Encoders are deterministic, so the bytes still depend only
on (seed, index).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from strhub.data.lmdb_writer import LmdbWriter
from strhub.data.synth.config import RenderConfig
from strhub.data.synth.generator import SyntheticWordGenerator

JPEG_QUALITY = 95
_CHUNK_SIZE = 32

# The generator of a worker process, set once by the pool's initializer.
_worker_generator: SyntheticWordGenerator | None = None


def encode_image(image: Image.Image) -> bytes:
    """The stored form of an image: JPEG bytes at the dataset's quality, full-resolution colour."""
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def encoded_sample(generator: SyntheticWordGenerator, index: int) -> tuple[bytes, str, list[list[float]]]:
    """Sample ``index`` of ``generator`` as (encoded image, label, boxes)."""
    try:
        image, label, boxes = generator.sample(index)
    except Exception as error:
        raise RuntimeError(f'rendering synthetic sample {index} (seed {generator.seed}) failed: {error}') from error
    return encode_image(image), label, boxes


def generate_lmdb(
    out_dir: str | os.PathLike,
    num_samples: int,
    charset: str,
    *,
    words: str | os.PathLike | Iterable[str] | None = None,
    fonts: Iterable[str | os.PathLike] | None = None,
    cfg: RenderConfig | None = None,
    random_ratio: float = 0.2,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Renders ``num_samples`` labelled word images into a new LMDB at ``out_dir`` and returns its path.

    The arguments after ``charset`` up to ``seed`` are those of :class:`SyntheticWordGenerator`. LMDB sample
    ``k`` (1-based) is generator sample ``k - 1``, with its per-character boxes; the dataset is identical for
    any number of ``workers`` (processes rendering in parallel while this one writes in index order).
    """
    generator = SyntheticWordGenerator(charset, words=words, fonts=fonts, cfg=cfg, seed=seed, random_ratio=random_ratio)
    return write_generated_lmdb(generator, out_dir, num_samples, workers=workers, overwrite=overwrite)


def write_generated_lmdb(
    generator: SyntheticWordGenerator,
    out_dir: str | os.PathLike,
    num_samples: int,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Writes samples 0 to ``num_samples - 1`` of ``generator`` into a new LMDB; see :func:`generate_lmdb`."""
    if num_samples < 1:
        raise ValueError(f'num_samples is {num_samples}; ask for at least one sample')
    if workers < 1:
        raise ValueError(f'workers is {workers}; use 1 to render in this process, more for a process pool')
    with LmdbWriter(out_dir, overwrite=overwrite) as writer, tqdm(total=num_samples, desc='synth', unit='img') as bar:
        for image, label, boxes in _rendered(generator, num_samples, workers):
            writer.add(image, label, boxes)
            bar.update()
    return Path(out_dir)


def _rendered(
    generator: SyntheticWordGenerator, num_samples: int, workers: int
) -> Iterator[tuple[bytes, str, list[list[float]]]]:
    if workers == 1:
        yield from (encoded_sample(generator, i) for i in range(num_samples))
        return
    # Fresh interpreters rather than forks: the parent holds an open LMDB environment, and possibly threads of
    # torch or a DataLoader, that a forked child must not inherit.
    context = multiprocessing.get_context('spawn')
    with context.Pool(workers, initializer=_init_worker, initargs=(generator,)) as pool:
        yield from pool.imap(_render_in_worker, range(num_samples), chunksize=_CHUNK_SIZE)


def _init_worker(generator: SyntheticWordGenerator) -> None:
    global _worker_generator
    _worker_generator = generator


def _render_in_worker(index: int) -> tuple[bytes, str, list[list[float]]]:
    return encoded_sample(_worker_generator, index)
