"""Importing GOT-OCR2 weights: Hugging Face ``GotOcr2ForConditionalGeneration`` (current ``model.*`` and legacy
``vision_tower.*`` / ``language_model.*`` layouts) and the original ``stepfun-ai/GOT-OCR2_0`` release.

Our system's keys are Hugging Face's current ones (``model.vision_tower.*``, ``model.multi_modal_projector.*``,
``model.language_model.*``); the output head is tied to the token embedding, so ``lm_head.weight`` is dropped.

Convert a download into a file for ``./train.py +experiment=got-ocr2 pretrained=<file>``::

    python -m strhub.models.gotocr2.convert model-00001-of-00002.safetensors model-00002-of-00002.safetensors \\
        got-ocr2.pt

or, with ``--config``, into a complete checkpoint for ``./test.py`` / ``./read.py`` (config embedded)::

    python -m strhub.models.gotocr2.convert model.safetensors got-ocr2.ckpt --config got-ocr2 \\
        --set model.tokenizer=/path/to/tokenizer.json charset=94_full
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from strhub.models.registry import StateDict, register_importer

log = logging.getLogger(__name__)

HEAD_KEYS = ('lm_head.weight', 'language_model.lm_head.weight')
EMBED_KEY = 'model.language_model.embed_tokens.weight'

_ORIGINAL_RULES: tuple[tuple[str, str], ...] = (
    (r'^model\.vision_tower_high\.patch_embed\.proj\.', 'model.vision_tower.patch_embed.projection.'),
    (r'^model\.vision_tower_high\.pos_embed$', 'model.vision_tower.pos_embed'),
    (r'^model\.vision_tower_high\.blocks\.(\d+)\.norm(\d)\.', r'model.vision_tower.layers.\1.layer_norm\2.'),
    (r'^model\.vision_tower_high\.blocks\.(\d+)\.(attn|mlp)\.', r'model.vision_tower.layers.\1.\2.'),
    (r'^model\.vision_tower_high\.neck\.0\.', 'model.vision_tower.neck.conv1.'),
    (r'^model\.vision_tower_high\.neck\.1\.', 'model.vision_tower.neck.layer_norm1.'),
    (r'^model\.vision_tower_high\.neck\.2\.', 'model.vision_tower.neck.conv2.'),
    (r'^model\.vision_tower_high\.neck\.3\.', 'model.vision_tower.neck.layer_norm2.'),
    (r'^model\.vision_tower_high\.net_2\.', 'model.multi_modal_projector.conv_upsampler1.'),
    (r'^model\.vision_tower_high\.net_3\.', 'model.multi_modal_projector.conv_upsampler2.'),
    (r'^model\.mm_projector_vary\.', 'model.multi_modal_projector.multimodal_projector.'),
    (r'^model\.(embed_tokens|layers|norm)\.', r'model.language_model.\1.'),
)
_LEGACY_RULES: tuple[tuple[str, str], ...] = (
    (r'^vision_tower\.', 'model.vision_tower.'),
    (r'^multi_modal_projector\.', 'model.multi_modal_projector.'),
    (r'^language_model\.model\.', 'model.language_model.'),
)
_CURRENT_RULES: tuple[tuple[str, str], ...] = (
    (r'^model\.(vision_tower|multi_modal_projector|language_model)\.', r'model.\1.'),
)


def _rename(state: StateDict, rules: Sequence[tuple[str, str]], layout: str) -> StateDict:
    head = next((state[k] for k in HEAD_KEYS if k in state), None)
    out, unknown = {}, []
    for key, value in state.items():
        if key in HEAD_KEYS:
            continue
        for pattern, replacement in rules:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'{len(unknown)} key(s) do not belong to the {layout} layout of GOT-OCR2: {unknown[:5]}')
    embed = out.get(EMBED_KEY)
    if head is not None and embed is not None and not head.is_meta and not torch.equal(head, embed):
        log.warning('lm_head.weight differs from the token embedding; our model ties them, so it is ignored')
    return out


@register_importer('got_ocr2_hf')
def import_hf(state: StateDict) -> StateDict:
    """Hugging Face ``GotOcr2ForConditionalGeneration`` (transformers >= 4.52: ``model.*`` and ``lm_head``)."""
    return _rename(state, _CURRENT_RULES, 'current Hugging Face')


@register_importer('got_ocr2_hf_legacy')
def import_hf_legacy(state: StateDict) -> StateDict:
    """Hugging Face files written before the ``model.`` prefix (``vision_tower.*``, ``language_model.model.*``)."""
    return _rename(state, _LEGACY_RULES, 'legacy Hugging Face')


@register_importer('got_ocr2_original')
def import_original(state: StateDict) -> StateDict:
    """The original ``stepfun-ai/GOT-OCR2_0`` release (``model.vision_tower_high.*``, ``model.layers.*``)."""
    return _rename(state, _ORIGINAL_RULES, 'original stepfun-ai')


IMPORTERS: dict[str, Callable[[StateDict], StateDict]] = {
    'got_ocr2_original': import_original,
    'got_ocr2_hf_legacy': import_hf_legacy,
    'got_ocr2_hf': import_hf,
}


def detect_layout(state: StateDict) -> str:
    """The importer name for a GOT-OCR2 state dict's layout."""
    keys = list(state)
    if any(k.startswith('model.vision_tower_high.') for k in keys):
        return 'got_ocr2_original'
    if any(k.startswith('language_model.model.') for k in keys):
        return 'got_ocr2_hf_legacy'
    if any(k.startswith('model.language_model.') for k in keys):
        return 'got_ocr2_hf'
    raise ValueError(f'not a GOT-OCR2 checkpoint (first keys: {keys[:5]})')


def import_state(state: StateDict) -> StateDict:
    """Any supported GOT-OCR2 layout -> our keys."""
    return IMPORTERS[detect_layout(state)](state)


def read_state(paths: Sequence[str | Path]) -> StateDict:
    """The merged tensors of one or more ``.safetensors`` / ``.bin`` / ``.pt`` files (sharded downloads)."""
    state: StateDict = {}
    for path in map(Path, paths):
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            data = torch.load(path, map_location='cpu', weights_only=True)
            state.update(data.get('state_dict', data))
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Convert GOT-OCR2 weights to strhub keys (for pretrained=<file>).')
    parser.add_argument('inputs', nargs='+', help='weight files (all shards of one checkpoint)')
    parser.add_argument('output', help='output file')
    parser.add_argument('--config', help='model config name: write a complete strhub checkpoint (for test.py/read.py)')
    parser.add_argument(
        '--set', nargs='*', default=[], metavar='OVERRIDE', help='config overrides, e.g. charset=94_full'
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    state = read_state(args.inputs)
    layout = detect_layout(state)
    converted = IMPORTERS[layout](state)
    if args.config is None:
        torch.save({'state_dict': converted}, args.output)
    else:
        from strhub.config import model_config
        from strhub.models.base import SYSTEM_KEY
        from strhub.models.loading import build_system
        from strhub.models.registry import system_name

        system = build_system(model_config(args.config, args.set))
        system.load_state_dict(converted, strict=True)
        checkpoint = {
            'state_dict': system.state_dict(),
            'hyper_parameters': dict(system.hparams),
            SYSTEM_KEY: system_name(type(system)),
        }
        torch.save(checkpoint, args.output)
    log.info('%s layout, %d tensors -> %s', layout, len(state), args.output)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
