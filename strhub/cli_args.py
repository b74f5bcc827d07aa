"""Command-line helpers shared by test.py, read.py and bench.py."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lmdb
import torch

_TYPES = {'int': int, 'float': float, 'str': str, 'bool': lambda v: _parse_bool(v)}


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ('1', 'true', 'yes', 'on'):
        return True
    if lowered in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError(f'not a boolean: {value!r} (use true/false)')


_RUNTIME_ARG = re.compile(r'^(?!pretrained=)[A-Za-z_]\w*(:\w+)?=')


def split_runtime_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates ``name:type=value`` model options from the other arguments, wherever they appear."""
    runtime = [a for a in argv if _RUNTIME_ARG.match(a)]
    return [a for a in argv if not _RUNTIME_ARG.match(a)], runtime


def parse_runtime_args(args: list[str]) -> dict[str, Any]:
    """``['refine_iters:int=2', 'decode_ar:bool=false']`` -> ``{'refine_iters': 2, 'decode_ar': False}``."""
    options = {}
    for arg in args:
        try:
            name_type, value = arg.split('=', 1)
            name, type_name = name_type.split(':', 1)
            options[name] = _TYPES[type_name](value)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f'bad model option {arg!r}: expected name:type=value with type one of {sorted(_TYPES)} '
                f'(e.g. refine_iters:int=2 decode_ar:bool=false); {e}'
            ) from None
    return options


def checkpoint_spec(arg: str) -> str:
    """``pretrained=parseq`` -> ``parseq``; a path or URL is returned unchanged."""
    return arg.split('=', 1)[1] if arg.startswith('pretrained=') else arg


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the GPU where present, else the CPU."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f'bad device {device!r}: use auto, cpu, cuda or cuda:N') from e
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} requested but no CUDA GPU is available; use --device cpu')
    return resolved


# Errors that come from what a user gave (a path, a file's contents, an option): shown as one line, not a traceback.
USER_ERRORS = (OSError, ValueError, LookupError, AttributeError, lmdb.Error)
DEBUG_FLAG = '--debug'


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs a script's ``main(argv)``; a user error prints one ``error: ...`` line on stderr and exits with 2.
    ``--debug`` (anywhere in ``argv``) or ``STRHUB_DEBUG=1`` shows the full traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get('STRHUB_DEBUG', '') not in ('', '0')
    argv = [a for a in argv if a != DEBUG_FLAG]
    if debug:
        return main(argv)
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        print(f'(run again with {DEBUG_FLAG} for the full traceback)', file=sys.stderr)
        return 2


def hydra_user_errors(main: Callable[..., None]) -> Callable[..., None]:
    """For Hydra scripts (train.py, bench.py), what :func:`run_cli` does for the others: a user error prints one
    ``error: ...`` line on stderr and exits with 2. Their arguments are config overrides, so the full traceback is
    asked for with ``STRHUB_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) instead of ``--debug``."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        if any(os.environ.get(v, '') not in ('', '0') for v in ('STRHUB_DEBUG', 'HYDRA_FULL_ERROR')):
            return main(*args, **kwargs)
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            print(f'error: {e}', file=sys.stderr)
            print('(set STRHUB_DEBUG=1 for the full traceback)', file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
