"""Training samples/s of this project beside the public reference code (baudm/parseq), same model, batch and device.

Each side runs in its own process (both packages are called ``strhub``), rounds alternate, every figure is printed.
Made to be run in one short call on a lent GPU, after extracting the reference (README, "Speed"):

    python benchmarks/train_vs_reference.py --reference /tmp/parseq_ref --model parseq --batch-size 384 \\
        --precision bf16 --compile --fused                      # pure training step, inputs already on the GPU
    python benchmarks/train_vs_reference.py --reference /tmp/parseq_ref --data data/demo/train/generated \\
        --precision bf16 --fused --workers auto                 # fed by each side's own LMDB loader and augmentation

Options: ``--precision bf16`` (autocast), ``--compile`` (torch.compile of the model's parts), ``--fused`` (fused
AdamW on CUDA), ``--channels-last`` (images and weights in NHWC; helps convolutional encoders, not ViTs), ``--data``
(batches from a DataLoader with ``--workers`` processes, ``auto`` = sized to this machine, and pinned memory on CUDA).
Without ``--reference`` only this project is timed. The same code paths run on the CPU in tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import time
from pathlib import Path

import torch

from strhub.data.module import resolve_num_workers

REPO_ROOT = Path(__file__).resolve().parent.parent
CHARSET_94 = string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation


def random_batch(batch_size: int, img_size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(0)
    labels = [''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10))) for _ in range(batch_size)]
    return torch.rand(batch_size, 3, *img_size, generator=torch.Generator().manual_seed(0)) * 2 - 1, labels


def build_ours(model: str, data: str | None, batch_size: int, workers: int, augment: bool, overrides: list[str]):
    """(system, loss_fn(images, labels), DataLoader or None)."""
    from strhub.config import model_config
    from strhub.models.loading import build_system

    system = build_system(model_config(model, ['charset=94_full', *overrides]))
    loader = None
    if data:
        from strhub.data.module import SceneTextDataModule

        module = SceneTextDataModule(
            root_dir=str(Path(data).parent),
            train=[{'name': 'bench', 'paths': [Path(data).name]}],
            charset_train='94_full',
            preprocess=system.preprocessing,
            augment=augment,
            batch_size=batch_size,
            num_workers=workers,
            cache_dir=None,
        )
        module.setup('fit')
        loader = module.train_dataloader()
    return system, system.training_loss, loader


def build_reference(reference: str, model: str, data: str | None, batch_size: int, workers: int, augment: bool):
    """The same from the reference's own code: its Hydra experiment config, its system and its loader."""
    sys.path.insert(0, reference)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = ['charset=94_full'] + ([f'+experiment={model}'] if model != 'parseq' else [])
    with initialize_config_dir(config_dir=str(Path(reference, 'configs').resolve()), version_base='1.2'):
        cfg = compose(config_name='main', overrides=overrides)
    system = instantiate(cfg.model)
    system.log = lambda *args, **kwargs: None

    def loss_fn(images, labels):
        out = system.training_step((images, labels), 0)
        return out['loss'] if isinstance(out, dict) else out

    loader = None
    if data:
        from strhub.data.dataset import LmdbDataset

        from strhub.data.module import SceneTextDataModule

        try:
            transform = SceneTextDataModule.get_transform(tuple(cfg.model.img_size), augment=augment)
        except ModuleNotFoundError as e:  # its augmentation imports imgaug, which our requirements leave out
            sys.exit(f"the reference's augmentation needs {e.name} (pip install {e.name}); or time both: --no-augment")
        dataset = LmdbDataset(data, CHARSET_94, cfg.model.max_label_length, transform=transform)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )
    return system, loss_fn, loader


def run_side(args: argparse.Namespace) -> dict:
    """Times one side in this process; returns its figures."""
    if args.device == 'auto':
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = resolve_num_workers(args.workers if args.workers == 'auto' else int(args.workers))
    torch.manual_seed(0)
    augment = not args.no_augment
    if args.side == 'ours':
        system, loss_fn, loader = build_ours(args.model, args.data, args.batch_size, workers, augment, args.set)
    else:
        ref = args.reference
        system, loss_fn, loader = build_reference(ref, args.model, args.data, args.batch_size, workers, augment)
    system = system.to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        system = system.to(memory_format=torch.channels_last)
    if args.compile:
        # In place, per part, as train.py does (compile: true): the losses call the parts, not the model's forward.
        parts = getattr(system, 'model', system)
        for part in parts.children():
            part.compile()
    fused = args.fused and device.type == 'cuda'
    optimizer = torch.optim.AdamW(system.parameters(), lr=1e-4, fused=fused or None)
    img_size = tuple(system.hparams.img_size)
    fixed = random_batch(args.batch_size, img_size)
    batches = iter(loader) if loader is not None else None

    def next_batch():
        nonlocal batches
        if batches is None:
            return fixed
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    fixed_on_device = fixed[0].to(device, memory_format=memory_format)

    def step() -> float:
        images, labels = next_batch()
        images = fixed_on_device if loader is None else images.to(device, non_blocking=True)
        images = images.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == 'bf16'):
            loss = loss_fn(images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss = float(loss)  # waits for the device
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in system.parameters()) / 1e6
    return {
        'side': args.side,
        'samples_per_s': args.steps * args.batch_size / seconds,
        'ms_per_step': seconds / args.steps * 1e3,
        'params_m': round(params, 2),
        'device': torch.cuda.get_device_name(device)
        if device.type == 'cuda'
        else f'cpu ({torch.get_num_threads()} threads)',
        'workers': workers if loader is not None else 0,
        'final_loss': loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reference', help='extracted baudm/parseq; without it only this project is timed')
    parser.add_argument('--model', default='parseq', help='experiment name in both projects: parseq, parseq-tiny')
    parser.add_argument('--batch-size', type=int, default=384)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps first (compilation happens here)')
    parser.add_argument('--rounds', type=int, default=2, help='alternating rounds of every side')
    parser.add_argument('--device', default='auto', help='auto (CUDA where present), cuda or cpu')
    parser.add_argument('--precision', choices=['32', 'bf16'], default='32')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--fused', action='store_true', help='fused AdamW (CUDA only; ignored on the CPU)')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--data', help='an LMDB to feed the steps from (default: one fixed random batch)')
    parser.add_argument('--no-augment', action='store_true', help='with --data: both loaders without augmentation')
    parser.add_argument('--workers', default='auto', help="DataLoader processes with --data: a number or 'auto'")
    parser.add_argument('--threads', type=int, default=None, help='torch threads (CPU runs)')
    parser.add_argument('--set', nargs='*', default=[], help='config overrides for this project only (tests)')
    parser.add_argument('--side', choices=['ours', 'ref'], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args)))
        return
    sides = ['ref', 'ours'] if args.reference else ['ours']
    if args.reference and not Path(args.reference, 'strhub').is_dir():
        parser.error(f'--reference {args.reference} has no strhub/ package; extract baudm/parseq there first')
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            cmd = [sys.executable, __file__, *sys.argv[1:], '--side', side]
            # The reference must import its own strhub, not this project's (installed in editable mode).
            first = args.reference if side == 'ref' else str(REPO_ROOT)
            env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [first, os.environ.get('PYTHONPATH')]))}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f'{side} failed:\n{proc.stderr[-3000:]}')
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results[side].append(result)
            print(
                f'{side:4s} {result["samples_per_s"]:8.1f} samples/s  {result["ms_per_step"]:7.1f} ms/step  '
                f'({result["params_m"]}M params, {result["device"]}, workers {result["workers"]})',
                flush=True,
            )
    data = f'LMDB {args.data}{" without" if args.no_augment else " with"} augmentation' if args.data else 'fixed batch'
    options = [f'precision {args.precision}'] + [
        name
        for name, on in (('compile', args.compile), ('fused AdamW', args.fused), ('channels-last', args.channels_last))
        if on
    ]
    print(f'{args.model}, batch {args.batch_size}, {", ".join(options)}, {data}')
    if args.reference:
        best = {side: max(r['samples_per_s'] for r in results[side]) for side in sides}
        print(f'ours / reference (best of {args.rounds} each): {best["ours"] / best["ref"]:.2f}x')


if __name__ == '__main__':
    main()
