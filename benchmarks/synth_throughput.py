"""Single-process throughput of the synthetic word renderer, in images per second per core.

    python benchmarks/synth_throughput.py [--charset 94_full] [--height 32] [--warmup 3000] [--num 1000] [--rounds 3]

The first samples fill the per-process glyph cache; a long dataset run spends nearly all its time in the warm
state, so the figure is measured after ``--warmup`` samples. Reported: rendering alone, and rendering plus the
encoding that ``generate_lmdb`` stores, each as the median and best of ``--rounds`` rounds on new sample indices
(the best is the least disturbed by other processes on the machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from strhub.data.charsets import resolve_charset
from strhub.data.synth import RenderConfig, SyntheticWordGenerator
from strhub.data.synth.generate import encoded_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--charset', default='94_full', help='charset name, file or characters')
    parser.add_argument('--height', type=int, default=32, help='output image height in pixels')
    parser.add_argument('--warmup', type=int, default=3000, help='samples rendered before timing')
    parser.add_argument('--num', type=int, default=1000, help='samples timed per round')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds, each on new sample indices')
    args = parser.parse_args()

    start = time.perf_counter()
    generator = SyntheticWordGenerator(resolve_charset(args.charset), cfg=RenderConfig(height=args.height))
    print(
        f'generator construction: {time.perf_counter() - start:.2f} s ({len(generator.fonts)} font faces, '
        f'{len(generator.words)} words)'
    )
    for i in range(args.warmup):
        generator.sample(i)

    next_index = args.warmup
    for name, render in (
        ('render only', generator.sample),
        ('render and encode', lambda i: encoded_sample(generator, i)),
    ):
        rates = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for i in range(next_index, next_index + args.num):
                render(i)
            rates.append(args.num / (time.perf_counter() - start))
            next_index += args.num
        print(f'{name:18s} {np.median(rates):7.1f} images/s per core (median of {args.rounds}; best {max(rates):.1f})')

    probe = range(next_index, next_index + 200)
    widths = [generator.sample(i)[0].width for i in probe]
    stored = [len(encoded_sample(generator, i)[0]) for i in probe]
    print(
        f'image size: {args.height} x {np.mean(widths):.0f} px on average (widths {min(widths)}-{max(widths)}); '
        f'{np.mean(stored) / 1024:.1f} KiB stored'
    )


if __name__ == '__main__':
    main()
