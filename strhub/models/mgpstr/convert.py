"""Published MGP-STR weights -> a self-contained strhub checkpoint (weights, config and vocabularies), for offline
use (a command line over :mod:`strhub.models.mgpstr.published`).

A Hugging Face repository (Hub id or local directory) needs nothing else: its vocabularies come with it::

    python -m strhub.models.mgpstr.convert alibaba-damo/mgp-str-base mgp-str-base.ckpt

Weight files alone need the GPT-2 BPE and BERT uncased WordPiece vocabularies, which are not part of them. Converting
once with local copies of those files gives a checkpoint that ``./test.py`` and ``./read.py`` load without them::

    python -m strhub.models.mgpstr.convert mgp_str_base_patch4_32_128.pth mgp-str-base.ckpt \\
        --gpt2 gpt2/vocab.json gpt2/merges.txt --bert bert-base-uncased/vocab.txt
    python -m strhub.models.mgpstr.convert pytorch_model.bin mgp-str-base.ckpt --gpt2 ... --bert ...  # Hugging Face
    python -m strhub.models.mgpstr.convert mgp_str_tiny_patch4_32_128.pth tiny.ckpt --config mgp-str-tiny ...

The layout (Hugging Face ``MgpstrForSceneTextRecognition`` or the original release) is recognised from the keys.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from strhub.config import model_config
from strhub.models import registry
from strhub.models.huggingface import is_hub_spec
from strhub.models.loading import build_system, load, read_checkpoint
from strhub.models.loading import save_checkpoint as save_checkpoint
from strhub.models.mgpstr.system import SUBWORD_HEADS, MGPSTRSystem

log = logging.getLogger(__name__)


def convert_checkpoint(
    source: str | Path,
    config: str = 'mgp-str',
    overrides: Sequence[str] = (),
    gpt2_files: Sequence[str | Path] | None = None,
    bert_vocab: str | Path | None = None,
    layout: str | None = None,
) -> MGPSTRSystem:
    """Builds model configuration ``config`` (plus Hydra ``overrides``) and loads published weights into it; a Hugging
    Face repository brings its own configuration and vocabularies (the other arguments do not apply).

    Args:
        source: a Hugging Face repository (id or directory), or a Hugging Face or original MGP-STR state dict file
            (``.bin``, ``.pth``, ``.safetensors``).
        config: the model configuration matching the weights (``mgp-str``, ``mgp-str-tiny`` ...).
        overrides: further config overrides.
        gpt2_files: GPT-2 ``vocab.json`` and ``merges.txt`` (else ``model.bpe.files`` of the config).
        bert_vocab: BERT uncased ``vocab.txt`` (else ``model.wordpiece.files`` of the config).
        layout: ``mgpstr_hf`` or ``mgpstr_original``; recognised from the keys when None.

    Returns:
        The system in eval mode, its vocabularies loaded (so that :func:`save_checkpoint` embeds them).
    """
    if is_hub_spec(source):
        system = load(source)
        if not isinstance(system, MGPSTRSystem):
            raise ValueError(f'{source} is a {type(system).__name__} model, not MGP-STR')
        return system
    cfg = model_config(config, overrides)
    if cfg.get('_target_') != f'{MGPSTRSystem.__module__}.{MGPSTRSystem.__qualname__}':
        raise ValueError(f'model configuration {config!r} is not an MGP-STR configuration')
    if gpt2_files is not None:
        cfg['bpe'].update(source='files', files=[str(p) for p in gpt2_files])
    if bert_vocab is not None:
        cfg['wordpiece'].update(source='files', files=[str(bert_vocab)])
    system = build_system(cfg)
    checkpoint = read_checkpoint(source)
    state = dict(checkpoint.get('state_dict', checkpoint))
    layout = layout or registry.detect_layout(state, packages={'strhub.models.mgpstr'})
    if layout is None:
        raise ValueError(
            f'{source}: not an MGP-STR checkpoint of a known layout (first keys: {list(state)[:5]}); expected Hugging '
            "Face 'mgp_str.embeddings.*' / '*_a3_module.*' or original '*_tokenLearner.*' keys"
        )
    system.load_state_dict(registry.importer(layout)(state), strict=True)
    for head in SUBWORD_HEADS:
        system.subword_tokenizer(head)
    log.info('loaded %s (%s layout) into %s', source, layout, cfg['name'])
    return system.eval()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', help='a Hugging Face repository (id or directory), or a weights file')
    parser.add_argument('output', help='the strhub checkpoint to write (.ckpt)')
    parser.add_argument('--config', default='mgp-str', help='model configuration of the weights (default mgp-str)')
    parser.add_argument('--gpt2', nargs=2, metavar=('VOCAB_JSON', 'MERGES_TXT'), help='GPT-2 vocabulary files')
    parser.add_argument('--bert', metavar='VOCAB_TXT', help='BERT uncased vocabulary file')
    parser.add_argument('--layout', choices=['mgpstr_hf', 'mgpstr_original'], help='default: from the keys')
    parser.add_argument('overrides', nargs='*', help='Hydra config overrides, e.g. model.max_label_length=25')
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    system = convert_checkpoint(args.source, args.config, args.overrides, args.gpt2, args.bert, args.layout)
    save_checkpoint(system, args.output)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
