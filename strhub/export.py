"""Exporting a trained recogniser for deployment: the logic behind ``tools/export.py``.

The exported graph is the whole recogniser, ``images (N, C, H, W) float32 -> logits (N, L, num_classes)``, with
decoding fixed to ``max_label_length`` steps: data-dependent early stopping (which makes the output length depend on
the input) is off, so an autoregressive decoder becomes a loop of fixed length whose logits equal those of
``model(images, max_length=max_label_length)``. Everything a consumer needs to prepare images and decode the logits
without strhub (image size, resize mode, normalisation, the id -> token table, the decoding rule) is written into
the file as ``strhub.*`` metadata: ONNX ``metadata_props``, or ``strhub_metadata.json`` in a TorchScript archive.
:mod:`strhub.runtime` is a reader that uses only that metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from strhub.data.preprocess import NORMALIZATIONS, Preprocess
from strhub.data.tokenizer import CTCTokenizer
from strhub.models.base import BaseSystem
from strhub.models.loading import set_runtime_options

log = logging.getLogger(__name__)

FORMATS = ('onnx', 'torchscript')
# auto: the TorchScript-based exporter (fast, and its graphs run in onnxruntime for every zoo model), then the
# torch.export-based one if the first fails to export or its graph fails verification.
EXPORTERS = ('auto', 'legacy', 'dynamo')
DEFAULT_OPSET = 17
METADATA_VERSION = '1'
TORCHSCRIPT_METADATA_FILE = 'strhub_metadata.json'
# Exported and PyTorch logits must agree to this (absolute) tolerance, and decode to the same strings.
VERIFY_ATOL = 1e-4


class ExportError(RuntimeError):
    """A model cannot be exported with the requested options; the message names the reason and what to change."""


def model_name(system: BaseSystem) -> str:
    return str(system.hparams.get('name', type(system.model).__name__))


def check_exportable(system: BaseSystem) -> None:
    """Raises :class:`ExportError` when the system or its model class declares ``exportable = False``.

    A model that cannot be exported says so with the class attributes ``exportable = False`` and
    ``export_unsupported_reason = '<why>'`` (on its system or its ``nn.Module``).
    """
    for obj in (system, system.model):
        if not getattr(obj, 'exportable', True):  # declared on the system, or on a model class
            reason = getattr(obj, 'export_unsupported_reason', None) or 'no reason given'
            raise ExportError(f'{model_name(system)} ({type(obj).__name__}) does not support export: {reason}')


def configure_decoding(system: BaseSystem, decode: str | None = None, refine_iters: int | None = None) -> None:
    """Sets the decoding mode to export: ``decode`` ``ar`` / ``nar`` (models with ``decode_ar``, e.g. PARSeq) and
    ``refine_iters`` (iterative refinement passes); None keeps the checkpoint's setting."""
    options: dict[str, Any] = {}
    if decode is not None:
        if decode not in ('ar', 'nar'):
            raise ExportError(f"--decode must be 'ar' or 'nar', got {decode!r}")
        options['decode_ar'] = decode == 'ar'
    if refine_iters is not None:
        if refine_iters < 0:
            raise ExportError(f'--refine-iters must be >= 0, got {refine_iters}')
        options['refine_iters'] = refine_iters
    try:
        set_runtime_options(system, options)
    except AttributeError as e:
        raise ExportError(
            f'{model_name(system)}: {e}. --decode and --refine-iters apply to models with those decoding options '
            '(PARSeq); leave them out for this model'
        ) from None


class ExportedRecognizer(nn.Module):
    """The graph that gets exported: images -> logits with decoding fixed at ``max_length`` steps.

    Args:
        model: the system's network (``forward(images, max_length)``).
        max_length: the label length every decoding runs to (``max_label_length``): passing it turns early stopping
            off, so the output shape depends on the batch size only.
    """

    def __init__(self, model: nn.Module, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.max_length = max_length

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) normalised images -> (N, L, num_classes) logits."""
        return self.model(images, self.max_length)


def _mean_std(preprocess: Preprocess) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, exactly as the preset specifies them."""
    if isinstance(preprocess.normalization, str):
        mean, std = NORMALIZATIONS[preprocess.normalization]
    else:
        mean, std = preprocess.normalization['mean'], preprocess.normalization['std']
    return [float(m) for m in mean[: preprocess.channels]], [float(s) for s in std[: preprocess.channels]]


def export_metadata(system: BaseSystem, num_classes: int) -> dict[str, str]:
    """The ``strhub.*`` metadata of an export: string keys and values (lists and tables as JSON).

    Args:
        num_classes: size of the logits' last dimension; class id ``i`` is token ``tokens[i]``.
    """
    preprocess = system.preprocessing
    if preprocess.rotation:
        raise ExportError(f'{model_name(system)}: the preprocessing preset rotates images; export without rotation')
    mean, std = _mean_std(preprocess)
    tokenizer = system.tokenizer
    ctc = isinstance(tokenizer, CTCTokenizer)
    if num_classes > len(tokenizer):
        raise ExportError(f'{model_name(system)} outputs {num_classes} classes but its tokenizer has {len(tokenizer)}')
    meta = {
        'version': METADATA_VERSION,
        'model': model_name(system),
        'system': f'{type(system).__module__}.{type(system).__qualname__}',
        'input': 'images',
        'input_layout': 'NCHW float32: (pixel / 255 - mean[c]) / std[c]',
        'output': 'logits',
        'output_layout': 'N, positions, classes (unnormalised; softmax for probabilities)',
        'img_size': json.dumps(list(preprocess.img_size)),
        'channels': str(preprocess.channels),
        'color_mode': 'RGB' if preprocess.channels == 3 else 'L',
        'resize': preprocess.resize.value,
        'interpolation': preprocess.interpolation,
        'pad_value': str(preprocess.pad_value),
        'mean': json.dumps(mean),
        'std': json.dumps(std),
        'decoding': 'ctc' if ctc else 'attention',
        'tokens': json.dumps(list(tokenizer.itos[:num_classes]), ensure_ascii=False),
        'charset': tokenizer.charset,
        'max_label_length': str(system.max_label_length),
    }
    if ctc:
        meta['blank_id'] = str(tokenizer.blank_id)
    else:
        meta['eos_id'] = str(tokenizer.eos_id)
    for option in ('decode_ar', 'refine_iters', 'iter_size'):
        if hasattr(system.model, option):
            meta[option] = json.dumps(getattr(system.model, option))
    return {f'strhub.{k}': v for k, v in meta.items()}


def _example_images(system: BaseSystem, batch_size: int, seed: int = 0) -> Tensor:
    preprocess = system.preprocessing
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, preprocess.channels, *preprocess.img_size, generator=gen) * 2 - 1


@contextlib.contextmanager
def _export_context() -> Iterator[None]:
    """No gradients, no fused inference kernels, and no expected exporter chatter (tracer warnings on shape checks,
    deprecation notices).

    Without gradients, ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` take a fused "fast path" in eval
    mode that the TorchScript-based exporter cannot translate, so it is switched off while exporting.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings(), torch.no_grad():
        for category in (torch.jit.TracerWarning, FutureWarning, DeprecationWarning):
            warnings.simplefilter('ignore', category)
        # The LSTM initial state is zeros built inside the graph, so other batch sizes work (and are verified).
        warnings.filterwarnings('ignore', message='Exporting a model to ONNX with a batch_size other than 1')
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def _export_onnx_once(
    graph: ExportedRecognizer, images: Tensor, path: Path, exporter: str, opset: int, dynamic_batch: bool
) -> None:
    kwargs: dict[str, Any] = {'input_names': ['images'], 'output_names': ['logits'], 'opset_version': opset}
    if exporter == 'dynamo':
        kwargs['dynamo'] = True
        kwargs['external_data'] = False
        if dynamic_batch:
            kwargs['dynamic_shapes'] = {'images': {0: torch.export.Dim('batch')}}
    else:
        kwargs['dynamo'] = False
        if dynamic_batch:
            kwargs['dynamic_axes'] = {'images': {0: 'batch'}, 'logits': {0: 'batch'}}
    with _export_context():
        torch.onnx.export(graph, (images,), str(path), **kwargs)


def _temporary_path(path: Path) -> Path:
    """A hidden file beside ``path`` (same filesystem, so the final move is an atomic rename), same extension."""
    return path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')


def write_onnx_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Adds (or replaces) ``metadata_props`` entries of an ONNX file in place."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def decode_with_tokenizer(system: BaseSystem, logits: np.ndarray | Tensor) -> list[str]:
    return system.tokenizer.decode(torch.as_tensor(logits).float().softmax(-1))[0]


def verify_onnx(system: BaseSystem, path: str | os.PathLike, images: Tensor, atol: float = VERIFY_ATOL) -> float:
    """Runs the ONNX file in onnxruntime (CPU) and the PyTorch model on ``images``; returns the largest absolute
    logit difference. Raises :class:`ExportError` unless it is within ``atol`` and both decode to the same strings."""
    import onnxruntime as ort

    graph = ExportedRecognizer(system.model, system.max_label_length).eval()
    with torch.inference_mode():
        expected = graph(images).float().numpy()
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f'exported logits have shape {got.shape}, PyTorch gives {expected.shape}')
    diff = float(np.abs(got - expected).max())
    if diff > atol or decode_with_tokenizer(system, got) != decode_with_tokenizer(system, expected):
        raise ExportError(f'onnxruntime output differs from PyTorch (max abs logit difference {diff:.3g} > {atol})')
    return diff


def export_onnx(
    system: BaseSystem,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    exporter: str = 'auto',
    verify: bool = True,
) -> dict[str, Any]:
    """Exports ``system`` (in its current decoding mode) to an ONNX file with ``strhub.*`` metadata.

    Args:
        opset: ONNX opset; the ``dynamo`` exporter needs >= 18 and is given at least that.
        dynamic_batch: a symbolic batch dimension; otherwise the batch is fixed at 1.
        exporter: ``legacy`` (TorchScript-based ``torch.onnx.export(dynamo=False)``), ``dynamo``
            (``torch.export``-based), or ``auto``: legacy, then dynamo when legacy fails or does not verify.
        verify: check the file in onnxruntime against PyTorch (atol :data:`VERIFY_ATOL`, same strings).

    Returns:
        A summary: path, exporter used, max logit difference (None without ``verify``), metadata.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f'unknown exporter {exporter!r}; valid: {list(EXPORTERS)}')
    check_exportable(system)
    system = system.eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportedRecognizer(system.model, system.max_label_length).eval()
    # Trace with two images when the batch is dynamic, so that no size-1 dimension gets specialised.
    images = _example_images(system, 2 if dynamic_batch else 1)
    with torch.inference_mode():
        num_classes = graph(images).shape[-1]
    metadata = export_metadata(system, num_classes)
    check_images = _example_images(system, 3 if dynamic_batch else 1, seed=1)
    candidates = ['legacy', 'dynamo'] if exporter == 'auto' else [exporter]
    failures = []
    # Written under a temporary name and moved to ``path`` only once verified: an unverified file never sits at the
    # output path (not even while the next exporter is tried).
    tmp = _temporary_path(path)
    for candidate in candidates:
        try:
            _export_onnx_once(
                graph, images, tmp, candidate, max(opset, 18) if candidate == 'dynamo' else opset, dynamic_batch
            )
            write_onnx_metadata(tmp, metadata)
            diff = verify_onnx(system, tmp, check_images) if verify else None
        except Exception as e:  # noqa: BLE001 - exporters raise many unrelated types; each is reported below
            tmp.unlink(missing_ok=True)
            first_line = (str(e).strip().splitlines() or [''])[0][:300]
            failures.append(f'{candidate} exporter: {type(e).__name__}: {first_line}')
            log.info('ONNX export of %s with the %s exporter failed: %s', model_name(system), candidate, e)
            continue
        os.replace(tmp, path)
        log.info('exported %s to %s with the %s exporter', model_name(system), path, candidate)
        return {'path': str(path), 'exporter': candidate, 'max_abs_diff': diff, 'metadata': metadata}
    raise ExportError(
        f'ONNX export of {model_name(system)} ({type(system.model).__name__}) failed: ' + '; '.join(failures) + '. '
        'Try --format torchscript, another --exporter, or a simpler decoding mode (--decode nar, --refine-iters 0)'
    )


def export_torchscript(
    system: BaseSystem, path: str | os.PathLike, dynamic_batch: bool = False, verify: bool = True
) -> dict[str, Any]:
    """Exports ``system`` as a traced TorchScript archive with the metadata in ``strhub_metadata.json``
    (``torch.jit.load(path, _extra_files={'strhub_metadata.json': ''})``).

    Tracing records the fixed-length decoding loop; with ``dynamic_batch`` the archive is checked at another batch
    size as well.
    """
    check_exportable(system)
    system = system.eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportedRecognizer(system.model, system.max_label_length).eval()
    images = _example_images(system, 2 if dynamic_batch else 1)
    tmp = _temporary_path(path)
    try:
        with _export_context():
            traced = torch.jit.trace(graph, (images,), check_trace=False)
            metadata = export_metadata(system, graph(images).shape[-1])
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    except Exception as e:  # noqa: BLE001 - the tracer raises many unrelated types
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f'TorchScript export of {model_name(system)} ({type(system.model).__name__}) failed: '
            f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:300]}. Try --format onnx'
        ) from e
    diff = None
    if verify:
        check_images = _example_images(system, 3 if dynamic_batch else 1, seed=1)
        loaded = torch.jit.load(str(tmp))
        with torch.inference_mode():
            got, expected = loaded(check_images), graph(check_images)
        diff = float((got - expected).abs().max())
        if diff > VERIFY_ATOL or decode_with_tokenizer(system, got) != decode_with_tokenizer(system, expected):
            tmp.unlink(missing_ok=True)
            raise ExportError(f'TorchScript output differs from PyTorch (max abs logit difference {diff:.3g})')
    os.replace(tmp, path)
    return {'path': str(path), 'exporter': 'torch.jit.trace', 'max_abs_diff': diff, 'metadata': metadata}


def export(
    system: BaseSystem,
    path: str | os.PathLike,
    fmt: str = 'onnx',
    decode: str | None = None,
    refine_iters: int | None = None,
    dynamic_batch: bool = False,
    verify: bool = True,
    opset: int = DEFAULT_OPSET,
    exporter: str = 'auto',
) -> dict[str, Any]:
    """Sets the decoding mode (see :func:`configure_decoding`), then exports in ``fmt`` (``onnx`` or
    ``torchscript``; ``opset`` and ``exporter`` apply to ONNX only); see :func:`export_onnx`."""
    if fmt not in FORMATS:
        raise ExportError(f'unknown format {fmt!r}; valid: {list(FORMATS)}')
    check_exportable(system)
    configure_decoding(system, decode, refine_iters)
    if fmt == 'onnx':
        return export_onnx(system, path, opset, dynamic_batch, exporter, verify)
    return export_torchscript(system, path, dynamic_batch, verify)
