"""GOT-OCR2 weights -> a strhub file, for offline use (a command line over :mod:`strhub.models.gotocr2.published`).

A Hugging Face repository (Hub id or its local directory) becomes a complete checkpoint (config and tokenizer path
embedded) for ``./test.py`` / ``./read.py``::

    python -m strhub.models.gotocr2.convert stepfun-ai/GOT-OCR-2.0-hf got-ocr2.ckpt

Weight files alone (any supported layout, all shards of one checkpoint) become our keys for
``./train.py +experiment=got-ocr2 pretrained=<file>``, or with ``--config`` a complete checkpoint::

    python -m strhub.models.gotocr2.convert model-00001-of-00002.safetensors model-00002-of-00002.safetensors \\
        got-ocr2.pt
    python -m strhub.models.gotocr2.convert model.safetensors got-ocr2.ckpt --config got-ocr2 \\
        --set model.tokenizer=/path/to/tokenizer.json charset=94_full
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch

from strhub.models.gotocr2.published import import_state
from strhub.models.huggingface import is_hub_spec
from strhub.models.loading import build_system, load, read_state_files, save_checkpoint

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Convert GOT-OCR2 weights to a strhub file.')
    parser.add_argument('inputs', nargs='+', help='a Hugging Face repository (id or directory), or weight files')
    parser.add_argument('output', help='output file')
    parser.add_argument('--config', help='model config name: write a complete strhub checkpoint (for test.py/read.py)')
    parser.add_argument(
        '--set', nargs='*', default=[], metavar='OVERRIDE', help='config overrides, e.g. charset=94_full'
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if len(args.inputs) == 1 and is_hub_spec(args.inputs[0]):
        save_checkpoint(load(args.inputs[0]), args.output)
        log.info('%s -> %s', args.inputs[0], args.output)
        return 0
    converted = import_state(read_state_files(args.inputs))
    if args.config is None:
        torch.save({'state_dict': converted}, args.output)
    else:
        from strhub.config import model_config

        system = build_system(model_config(args.config, args.set))
        system.load_state_dict(converted, strict=True)
        save_checkpoint(system, args.output)
    log.info('%d tensors -> %s', len(converted), args.output)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
