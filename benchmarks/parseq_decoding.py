"""PARSeq greedy decoding speed: cached decoding (``use_cache=True``) vs. the reference algorithm (``use_cache=False``).

Both run the same randomly initialised full-size ``parseq`` (94-character charset) in eval mode, autoregressive with
one refinement pass, over all 26 positions (``max_length`` is given, so there is no early stop). The decoder is timed
on precomputed image memory (the part the cache speeds up), and the whole forward pass (encoder included) as well.
Batch 1 runs on one thread, larger batches on torch's default thread count.

Reference and cached calls alternate, round after round, so that both see the same background load on a shared
machine; the per-round ratio (reference time / cached time of the same round) is the least noisy figure.

    python benchmarks/parseq_decoding.py [--batch-sizes 1 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from strhub.data.tokenizer import CharTokenizer
from strhub.models.parseq import PARSeq

CHARSET_94 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'
MAX_LABEL_LENGTH = 25
MIN_ROUNDS = 3


def alternate_timings(model: PARSeq, call: Callable[[], torch.Tensor], seconds: float) -> dict[bool, list[float]]:
    """Seconds per call for ``use_cache`` False and True, measured in alternation for about ``seconds``."""
    times = {False: [], True: []}
    for use_cache in times:  # warm-up
        model.use_cache = use_cache
        call()
    deadline = time.perf_counter() + seconds
    while len(times[True]) < MIN_ROUNDS or time.perf_counter() < deadline:
        for use_cache, samples in times.items():
            model.use_cache = use_cache
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
    return times


def bench_batch(model: PARSeq, batch_size: int, seconds: float) -> None:
    threads = 1 if batch_size == 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    images = torch.randn(batch_size, 3, *model.encoder.img_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        memory = model.encode(images)
        outputs = {}
        for use_cache in (False, True):
            model.use_cache = use_cache
            outputs[use_cache] = model.decode_memory(memory, MAX_LABEL_LENGTH)
        torch.testing.assert_close(outputs[True], outputs[False], atol=1e-4, rtol=0)

        calls = {
            'decoder': lambda: model.decode_memory(memory, MAX_LABEL_LENGTH),
            'forward': lambda: model(images, MAX_LABEL_LENGTH),
        }
        for what, call in calls.items():
            times = alternate_timings(model, call, seconds)
            for use_cache, samples in times.items():
                ms = [t * 1e3 / batch_size for t in samples]
                print(
                    f'batch {batch_size:3d}, {threads} thread(s), {what}, {"cached" if use_cache else "reference"}: '
                    f'median {statistics.median(ms):.2f} ms/image, min {min(ms):.2f} ({len(ms)} calls)',
                    flush=True,
                )
            ratios = [ref / ours for ref, ours in zip(times[False], times[True], strict=True)]
            print(
                f'batch {batch_size:3d}, {threads} thread(s), {what}: cached is {statistics.median(ratios):.2f}x '
                f'faster (median of per-round ratios; ratio of minimums {min(times[False]) / min(times[True]):.2f}x)',
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 64])
    parser.add_argument('--seconds', type=float, default=10.0, help='timing time per comparison')
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = PARSeq(len(CharTokenizer(CHARSET_94)), MAX_LABEL_LENGTH, decode_ar=True, refine_iters=1).eval()
    print(
        f'torch {torch.__version__}, {default_threads} default threads; parseq (random weights), '
        f'AR + 1 refinement, {MAX_LABEL_LENGTH + 1} steps',
        flush=True,
    )
    for batch_size in args.batch_sizes:
        torch.set_num_threads(default_threads)
        bench_batch(model, batch_size, args.seconds)


if __name__ == '__main__':
    main()
