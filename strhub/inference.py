"""Faster inference options: ``torch.compile``, autocast to bf16 / fp16, dynamic int8 quantisation of linear layers.

An option set is written as a string for the command line: ``none``, ``int8``, ``compile``, ``bf16``, ``fp16`` or a
``+``-joined combination (``int8+compile``). ``./bench.py options=[none,int8,compile]`` times each;
``./test.py ... --options none int8`` reports each one's accuracy and its change from the first.

int8 uses ``torch.ao.quantization.quantize_dynamic``: deprecated in favour of torchao's ``quantize_`` API, but still
shipped (and working) in torch 2.14, whereas torchao is an extra dependency.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from strhub.tables import render_table

log = logging.getLogger(__name__)

PRECISIONS = {'bf16': torch.bfloat16, 'fp16': torch.float16}
QUANTIZATIONS = ('int8',)
OPTION_NAMES = ('none', 'compile', *QUANTIZATIONS, *PRECISIONS)


@dataclass(frozen=True)
class InferenceOptions:
    """One combination of the options (see :func:`parse_options`)."""

    compile: bool = False
    quantize: str | None = None
    precision: str | None = None

    def __str__(self) -> str:
        parts = [p for p in (self.quantize, self.precision) if p] + (['compile'] if self.compile else [])
        return '+'.join(parts) or 'none'


def parse_options(spec: str) -> InferenceOptions:
    """``'int8+compile'`` -> ``InferenceOptions(compile=True, quantize='int8')``; ``'none'`` -> no option."""
    compile_, quantize, precision = False, None, None
    for part in str(spec).split('+'):
        part = part.strip().lower()
        if part == 'none':
            continue
        if part == 'compile':
            compile_ = True
        elif part in QUANTIZATIONS:
            quantize = part
        elif part in PRECISIONS:
            if precision is not None:
                raise ValueError(f'{spec!r} names two precisions; pick one of {sorted(PRECISIONS)}')
            precision = part
        else:
            raise ValueError(
                f'unknown inference option {part!r} in {spec!r}; valid: {list(OPTION_NAMES)}, joined with + '
                '(e.g. int8+compile)'
            )
    return InferenceOptions(compile_, quantize, precision)


class AutocastModel(nn.Module):
    """Runs a model under ``torch.autocast`` and returns float32 logits.

    Attribute look-ups that the wrapper does not answer go to the wrapped model, so runtime options such as
    ``refine_iters`` still read and write the model's own.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(images, max_length).float()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__('model'), name)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a dynamically quantised int8 one (weights int8,
    activations quantised per batch at run time). CPU only."""
    with warnings.catch_warnings():
        # The deprecation notices point to torchao; the API works in this torch and needs no extra package.
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def optimize_model(
    model: nn.Module,
    device: torch.device | str,
    compile: bool = False,
    quantize: str | None = None,
    precision: str | None = None,
) -> nn.Module:
    """``model`` (eval mode, on ``device``) with the inference options applied; the original is left as it is when
    quantising, and wrapped otherwise.

    Args:
        compile: ``torch.compile`` the result (the first calls are slow while it compiles).
        quantize: ``int8``: dynamic int8 quantisation of the linear layers (CPU only).
        precision: ``bf16`` or ``fp16``: autocast (fp16 needs a GPU).
    """
    device = torch.device(device)
    model = model.eval()
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise ValueError(f'unknown quantisation {quantize!r}; valid: {list(QUANTIZATIONS)}')
        if device.type != 'cpu':
            raise ValueError(
                f'int8 dynamic quantisation runs on the CPU only, not on {device}; use --device cpu, or bf16 / fp16 '
                'on a GPU'
            )
        model = quantize_int8(model)
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f'unknown precision {precision!r}; valid: {sorted(PRECISIONS)}')
        if precision == 'fp16' and device.type == 'cpu':
            raise ValueError('fp16 autocast needs a GPU; on the CPU use bf16 or int8')
        model = AutocastModel(model, device.type, PRECISIONS[precision])
    if compile:
        model = torch.compile(model)
    return model


def apply_inference_options(
    system: nn.Module,
    compile: bool = False,
    quantize: str | None = None,
    precision: str | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Applies the options to a loaded system's network in place (``system.model``) and returns the system; its
    :meth:`predict` (and thus ``read.py`` / ``test.py``) then runs the optimised network. Set runtime options such
    as ``refine_iters`` before this call."""
    device = torch.device(device) if device is not None else system.device
    system.model = optimize_model(system.model, device, compile, quantize, precision)
    return system


def with_options(system: nn.Module, options: InferenceOptions | str, copy_system: bool = True) -> nn.Module:
    """``system`` with ``options`` (an :class:`InferenceOptions` or a string such as ``'int8+compile'``) applied: to a
    copy (the original keeps its network), or in place with ``copy_system=False`` (``./read.py``)."""
    options = parse_options(options) if isinstance(options, str) else options
    if options == InferenceOptions():
        return system
    target = copy.deepcopy(system) if copy_system else system
    return apply_inference_options(target, options.compile, options.quantize, options.precision)


def compare_options(system: nn.Module, options: Sequence[str], evaluate: Callable[[nn.Module], Any]) -> dict[str, Any]:
    """Runs ``evaluate`` (system -> anything, e.g. :func:`strhub.evaluation.evaluate` on fixed loaders) once per
    option set, each on its own copy of ``system`` (``none`` on ``system`` itself); returns option name -> result,
    in the given order."""
    results = {}
    for spec in options:
        name = str(parse_options(spec))
        log.info('evaluating with inference option %s', name)
        results[name] = evaluate(with_options(system, spec))
    return results


def accuracy_change_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A markdown table of accuracy per option and dataset, with the change from the first option in brackets."""
    options = list(results)
    baseline = results[options[0]]
    datasets = list(baseline)
    rows = []
    for option in options:
        cells = []
        for dataset in datasets:
            accuracy = results[option][dataset]['accuracy']
            delta = accuracy - baseline[dataset]['accuracy']
            cells.append(f'{accuracy:.2f}' if option == options[0] else f'{accuracy:.2f} ({delta:+.2f})')
        rows.append([option, *cells])
    return render_table(['Option', *datasets], rows)
