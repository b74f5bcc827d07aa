"""Exports a trained recogniser (images in, logits out) to ONNX or TorchScript for deployment.

The file carries the preprocessing preset and the token table as metadata, so that ``python -m strhub.runtime``
(numpy + Pillow + onnxruntime only) or any other consumer can prepare images and decode the logits. Decoding runs a
fixed ``max_label_length`` steps (no early stop); the export is checked against PyTorch in onnxruntime.

Examples::

    python tools/export.py pretrained=parseq --format onnx --dynamic-batch --out parseq.onnx
    python tools/export.py pretrained=parseq --decode nar --refine-iters 2 --out parseq-nar.onnx
    python tools/export.py outputs/crnn/<run>/checkpoints/last.ckpt --format torchscript --out crnn.pt
"""

from __future__ import annotations

import argparse
import logging
import sys

from strhub.cli_args import checkpoint_spec, run_cli
from strhub.export import DEFAULT_OPSET, EXPORTERS, FORMATS, ExportError, export
from strhub.models.loading import load

log = logging.getLogger('export')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='checkpoint path/URL, or pretrained=<name>')
    parser.add_argument('--out', required=True, help='output file (.onnx or .pt)')
    parser.add_argument('--format', choices=FORMATS, default='onnx')
    parser.add_argument('--dynamic-batch', action='store_true', help='symbolic batch dimension (default: batch 1)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument(
        '--exporter',
        choices=EXPORTERS,
        default='auto',
        help='ONNX exporter: legacy (TorchScript-based), dynamo, or auto',
    )
    parser.add_argument('--decode', choices=('ar', 'nar'), help='PARSeq: autoregressive or non-autoregressive')
    parser.add_argument('--refine-iters', type=int, help='PARSeq: iterative refinement passes')
    parser.add_argument('--no-verify', action='store_true', help='skip the check against PyTorch')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args = parse_args(argv)
    system = load(checkpoint_spec(args.checkpoint), device='cpu')
    try:
        summary = export(
            system,
            args.out,
            args.format,
            decode=args.decode,
            refine_iters=args.refine_iters,
            dynamic_batch=args.dynamic_batch,
            verify=not args.no_verify,
            opset=args.opset,
            exporter=args.exporter,
        )
    except ExportError as e:
        log.error('%s', e)
        return 1
    diff = summary['max_abs_diff']
    checked = 'not verified' if diff is None else f'max |logit difference| vs PyTorch {diff:.2e}'
    print(f'wrote {summary["path"]} ({args.format}, {summary["exporter"]}; {checked})')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
