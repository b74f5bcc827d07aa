#!/usr/bin/env python3
"""Read the text in word images.

./read.py pretrained=parseq --images demo/*.png
./read.py outputs/parseq/<run>/checkpoints/last.ckpt --images a.jpg b.png refine_iters:int=2
./read.py pretrained=parseq --images demo/*.png --device cpu --options int8
./read.py got-ocr2.ckpt --images page.png --crops 6 --format      (GOT-OCR2 prompts: --box, --color, --format, --crops)
./read.py mgp-str.ckpt --images demo/*.png --attention attention/   # MGP-STR: A3 attention maps as PNGs
"""

import argparse
import logging
import sys

from strhub.cli_args import checkpoint_spec, parse_runtime_args, resolve_device, run_cli, split_runtime_args
from strhub.inference import with_options
from strhub.models.loading import load
from strhub.reading import open_image, read_images, save_attention_maps


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='checkpoint path/URL, or pretrained=<name>')
    parser.add_argument('--images', nargs='+', required=True, help='image files')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--device', default='auto')
    parser.add_argument(
        '--options', default='none', help='inference options: none, int8, compile, bf16, fp16, or +-joined'
    )
    got = parser.add_argument_group('GOT-OCR2 prompts (one image at a time)')
    got.add_argument('--box', type=float, nargs=4, metavar=('X1', 'Y1', 'X2', 'Y2'), help='read only this pixel box')
    got.add_argument('--color', choices=['red', 'green', 'blue'], help='read only the text boxed in this colour')
    got.add_argument('--format', action='store_true', help='formatted output (markdown / LaTeX)')
    got.add_argument('--crops', type=int, default=1, help='tile into at most N crops plus a thumbnail')
    parser.add_argument(
        '--attention', metavar='OUT_DIR', help='save the attention maps of each head over each image as PNGs (MGP-STR)'
    )
    argv, runtime = split_runtime_args(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    options = parse_runtime_args(runtime)
    print(f'Additional keyword arguments: {options}', file=sys.stderr)
    system = load(checkpoint_spec(args.checkpoint), device=resolve_device(args.device), **options)
    system = with_options(system, args.options, copy_system=False)
    if args.box or args.color or args.format or args.crops > 1:
        failures = []
        for path in args.images:
            try:
                with open_image(path) as img:
                    text, confidence = system.read_prompted(img, args.box, args.color, args.format, args.crops)
            except ValueError as e:
                failures.append((path, str(e)))
                continue
            print(f'{path}: {text} ({confidence:.4f})')
        return report_failures(failures, len(args.images))
    failures: list[tuple[str, str]] = []
    for path, text, confidence in read_images(system, args.images, args.batch_size, failures):
        print(f'{path}: {text} ({confidence:.4f})', flush=True)
    if args.attention:
        readable = [p for p in args.images if p not in {path for path, _ in failures}]
        saved = save_attention_maps(system, readable, args.attention, args.batch_size)
        print(f'{len(saved)} attention map(s) saved under {args.attention}')
    return report_failures(failures, len(args.images))


def report_failures(failures: list[tuple[str, str]], total: int) -> int:
    """Lists the files that could not be read (on stderr); 1 when there were any, else 0."""
    for _, reason in failures:
        print(f'error: {reason}', file=sys.stderr)
    if failures:
        print(f'{len(failures)} of {total} file(s) could not be read', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
