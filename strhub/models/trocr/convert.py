"""TrOCR weights -> a self-contained strhub checkpoint (weights, config, vocabulary), for offline use (a command line
over :mod:`strhub.models.trocr.published`)::

    python -m strhub.models.trocr.convert microsoft/trocr-base-str trocr-base-str.ckpt     # a Hub id or directory
    python -m strhub.models.trocr.convert model.safetensors trocr.ckpt --config trocr-base \\
        --set model.tokenizer.path=<dir with vocab.json + merges.txt>                       # weight files alone
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from strhub.config import model_config
from strhub.models.huggingface import is_hub_spec
from strhub.models.loading import build_system, load, read_state_files, save_checkpoint

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Convert TrOCR weights to a strhub checkpoint.')
    parser.add_argument('source', help='a Hugging Face repository (id or directory), or a weights file')
    parser.add_argument('output', help='the strhub checkpoint to write (.ckpt)')
    parser.add_argument('--config', default='trocr-base', help='model configuration of a weights file')
    parser.add_argument('--set', nargs='*', default=[], metavar='OVERRIDE', help='config overrides for --config')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if is_hub_spec(args.source):
        system = load(args.source)
    else:
        system = build_system(model_config(args.config, args.set))
        state = system.import_foreign_state(read_state_files([args.source]))
        system.load_state_dict(state, strict=True)
    save_checkpoint(system, args.output)
    log.info('%s -> %s', args.source, args.output)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
