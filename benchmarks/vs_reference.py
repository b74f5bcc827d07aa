"""This project beside the public reference code (baudm/parseq, run unchanged): training samples/s, or inference
time and outputs with the same weights, for PARSeq and the other zoo models the reference implements.

Each side runs in its own process (both packages are called ``strhub``), rounds alternate, every figure is printed,
then one markdown table. Extract the reference first (README, "Speed against the reference code"):

    python benchmarks/vs_reference.py --reference /tmp/parseq_ref --task infer \
        --models parseq abinet trba vitstr crnn --batch-sizes 1 64          # same weights: ms per batch, max |diff|
    python benchmarks/vs_reference.py --reference /tmp/parseq_ref --models parseq-tiny --batch-size 32
    python benchmarks/vs_reference.py --reference /tmp/parseq_ref --models parseq --batch-size 384 \
        --precision bf16 --compile --fused                                   # on a lent GPU: the training step
    python benchmarks/vs_reference.py --reference /tmp/parseq_ref --data data/demo/train/generated \
        --precision bf16 --fused --workers auto                             # fed by each side's LMDB loader

Training options: ``--precision bf16`` (autocast), ``--compile`` (torch.compile of the model's parts, as
``compile=true`` in train.py), ``--fused`` (fused AdamW, CUDA only), ``--channels-last`` (NHWC images and weights;
for convolutional encoders), ``--data`` (batches from a DataLoader with ``--workers`` processes, ``auto`` = sized to
the machine, pinned memory on CUDA; ``--no-augment`` drops both sides' augmentation, the reference's needs imgaug).
Inference: eval mode, ``torch.inference_mode``, the model's default decoding; the reference writes its (random,
seeded) weights and outputs to ``--workdir`` and this project loads them through the published-layout importer.
Without ``--reference`` only this project is timed. The code paths run on the CPU in tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CHARSET_94 = string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation


def random_batch(batch_size: int, img_size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(0)
    labels = [''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10))) for _ in range(batch_size)]
    return torch.rand(batch_size, 3, *img_size, generator=torch.Generator().manual_seed(0)) * 2 - 1, labels


def build_ours(args: argparse.Namespace, workers: int):
    """(system, loss_fn(images, labels), DataLoader or None)."""
    from strhub.config import model_config
    from strhub.models.loading import build_system

    system = build_system(model_config(args.model, ['charset=94_full', *args.set]))
    loader = None
    if args.data:
        from strhub.data.module import SceneTextDataModule

        module = SceneTextDataModule(
            root_dir=str(Path(args.data).parent),
            train=[{'name': 'bench', 'paths': [Path(args.data).name]}],
            charset_train='94_full',
            preprocess=system.preprocessing,
            augment=not args.no_augment,
            batch_size=args.batch_size,
            num_workers=workers,
            cache_dir=None,
        )
        module.setup('fit')
        loader = module.train_dataloader()
    return system, system.training_loss, loader


def build_reference(args: argparse.Namespace, workers: int):
    """The same from the reference's own code: its Hydra experiment config, its system and its loader."""
    sys.path.insert(0, args.reference)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = ['charset=94_full'] + ([f'+experiment={args.model}'] if args.model != 'parseq' else [])
    with initialize_config_dir(config_dir=str(Path(args.reference, 'configs').resolve()), version_base='1.2'):
        cfg = compose(config_name='main', overrides=overrides)
    system = instantiate(cfg.model)
    system.log = lambda *a, **k: None

    def loss_fn(images, labels):
        out = system.training_step((images, labels), 0)
        return out['loss'] if isinstance(out, dict) else out

    loader = None
    if args.data:
        from strhub.data.dataset import LmdbDataset

        from strhub.data.module import SceneTextDataModule

        try:
            transform = SceneTextDataModule.get_transform(tuple(cfg.model.img_size), augment=not args.no_augment)
        except ModuleNotFoundError as e:  # its augmentation imports imgaug, which our requirements leave out
            sys.exit(f"the reference's augmentation needs {e.name} (pip install {e.name}); or time both: --no-augment")
        dataset = LmdbDataset(args.data, CHARSET_94, cfg.model.max_label_length, transform=transform)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )
    return system, loss_fn, loader


def pick_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'


def time_training(args: argparse.Namespace) -> dict:
    """Training samples/s of one side, in this process."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = int(args.workers)  # resolved by the parent process (main)
    torch.manual_seed(0)
    build = build_ours if args.side == 'ours' else build_reference
    system, loss_fn, loader = build(args, workers)
    system = system.to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        system = system.to(memory_format=torch.channels_last)
    if args.compile:
        # In place, per part, as train.py does (compile: true): the losses call the parts, not the model's forward.
        for part in getattr(system, 'model', system).children():
            part.compile()
    optimizer = torch.optim.AdamW(system.parameters(), lr=1e-4, fused=(args.fused and device.type == 'cuda') or None)
    fixed_images, fixed_labels = random_batch(args.batch_size, tuple(system.hparams.img_size))
    fixed_images = fixed_images.to(device, memory_format=memory_format)
    batches = iter(loader) if loader is not None else None

    def step() -> torch.Tensor:
        nonlocal batches
        images, labels = fixed_images, fixed_labels
        if loader is not None:
            try:
                images, labels = next(batches)[:2]
            except StopIteration:
                batches = iter(loader)
                images, labels = next(batches)[:2]
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
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
    final_loss = float(loss)  # waits for the device
    seconds = time.perf_counter() - start
    return {
        'samples_per_s': args.steps * args.batch_size / seconds,
        'ms_per_step': seconds / args.steps * 1e3,
        'params_m': round(sum(p.numel() for p in system.parameters()) / 1e6, 2),
        'device': device_name(device),
        'workers': workers if loader is not None else 0,
        'final_loss': final_loss,
    }


def time_inference(args: argparse.Namespace) -> dict:
    """ms per batch of one side's default decoding, in this process, with the reference's weights. The reference
    side writes its weights and outputs to ``args.workdir``; this project's side loads them and compares."""
    device = pick_device(args.device)
    workdir = Path(args.workdir)
    weights_file, outputs_file = workdir / f'{args.model}-weights.pt', workdir / f'{args.model}-outputs.pt'
    torch.manual_seed(0)
    if args.side == 'ref':
        system, _, _ = build_reference(args, 0)
        torch.save(system.state_dict(), weights_file)
    else:
        from strhub.config import model_config
        from strhub.models import registry
        from strhub.models.loading import build_system

        system = build_system(model_config(args.model, ['charset=94_full', *args.set]))
        if weights_file.exists():
            layout = registry.releases()[args.model].layout if args.model in registry.releases() else 'strhub_system'
            system.load_state_dict(registry.importer(layout)(torch.load(weights_file)), strict=True)
    system = system.to(device).eval()
    result = {'device': device_name(device), 'params_m': round(sum(p.numel() for p in system.parameters()) / 1e6, 2)}
    outputs = {}
    for batch_size in args.batch_sizes:
        torch.set_num_threads(args.threads or (1 if batch_size == 1 else os.cpu_count() or 1))
        images = random_batch(batch_size, tuple(system.hparams.img_size))[0].to(device)
        with torch.inference_mode():
            outputs[batch_size] = system(images).float().cpu()
            for _ in range(args.warmup):
                system(images)
            times = []
            for _ in range(args.steps):
                if device.type == 'cuda':
                    torch.cuda.synchronize()
                start = time.perf_counter()
                system(images)
                if device.type == 'cuda':
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        times.sort()
        result[f'ms_b{batch_size}'] = times[len(times) // 2] * 1e3
        result[f'threads_b{batch_size}'] = torch.get_num_threads()
    if args.side == 'ref':
        torch.save(outputs, outputs_file)
    elif outputs_file.exists():
        theirs = torch.load(outputs_file)
        result['max_diff'] = max(
            (a - theirs[b]).abs().max().item() if a.shape == theirs[b].shape else float('inf')
            for b, a in outputs.items()
        )
    return result


def run_round(args: argparse.Namespace, model: str, side: str, workdir: str) -> dict:
    extra = ['--side', side, '--model', model, '--workdir', workdir, '--workers', str(args.workers)]
    cmd = [sys.executable, __file__, *sys.argv[1:], *extra]
    # The reference must import its own strhub, not this project's (installed in editable mode).
    first = args.reference if side == 'ref' else str(REPO_ROOT)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [first, os.environ.get('PYTHONPATH')]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f'{model}, {side} failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reference', help='extracted baudm/parseq; without it only this project is timed')
    parser.add_argument('--task', choices=['train', 'infer'], default='train')
    parser.add_argument('--models', nargs='+', default=['parseq'], help='experiment names in both projects')
    parser.add_argument('--batch-size', type=int, default=384, help='training batch')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 64], help='inference batches')
    parser.add_argument('--steps', type=int, default=20, help='timed training steps / inference calls')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation happens here)')
    parser.add_argument('--rounds', type=int, default=2, help='alternating rounds of every side')
    parser.add_argument('--device', default='auto', help='auto (CUDA where present), cuda or cpu')
    parser.add_argument('--threads', type=int, help='torch threads (default: all; inference: 1 at batch 1)')
    parser.add_argument('--precision', choices=['32', 'bf16'], default='32')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--fused', action='store_true', help='fused AdamW (CUDA only; ignored on the CPU)')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--data', help='an LMDB to feed the training steps from (default: one fixed random batch)')
    parser.add_argument('--no-augment', action='store_true', help='with --data: both loaders without augmentation')
    parser.add_argument('--workers', default='auto', help="DataLoader processes with --data: a number or 'auto'")
    parser.add_argument('--set', nargs='*', default=[], help='config overrides for this project only (tests)')
    parser.add_argument('--side', choices=['ours', 'ref'], help=argparse.SUPPRESS)
    parser.add_argument('--model', help=argparse.SUPPRESS)
    parser.add_argument('--workdir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps((time_training if args.task == 'train' else time_inference)(args)))
        return
    if args.data:
        args.data = str(Path(args.data).resolve())
    # This project's helper, imported here only: the reference's processes import the reference's strhub.
    from strhub.data.module import resolve_num_workers

    args.workers = resolve_num_workers(args.workers if args.workers == 'auto' else int(args.workers))
    if args.reference and not Path(args.reference, 'strhub').is_dir():
        parser.error(f'--reference {args.reference} has no strhub/ package; extract baudm/parseq there first')
    sides = ['ref', 'ours'] if args.reference else ['ours']
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models:
            results: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side in sides:
                    result = run_round(args, model, side, workdir)
                    results[side].append(result)
                    print(f'{model:12s} {side:4s} {json.dumps(result)}', flush=True)
            rows.append(summary_row(args, model, results))
    print_table(args, rows)


def summary_row(args: argparse.Namespace, model: str, results: dict[str, list[dict]]) -> list[str]:
    """Best of the rounds per side: samples/s (training) or the fastest median ms per batch (inference)."""
    if args.task == 'train':
        keys = ['samples_per_s']
        best = {side: {'samples_per_s': max(r['samples_per_s'] for r in rs)} for side, rs in results.items()}
    else:
        keys = [f'ms_b{b}' for b in args.batch_sizes]
        best = {side: {k: min(r[k] for r in rs) for k in keys} for side, rs in results.items()}
    cells = [model, str(results['ours'][0]['params_m'])]
    for key in keys:
        ours = best['ours'][key]
        if 'ref' in best:
            ref = best['ref'][key]
            ratio = ours / ref if args.task == 'train' else ref / ours
            cells.append(f'{ref:.1f} / {ours:.1f} ({ratio:.2f}x)')
        else:
            cells.append(f'{ours:.1f}')
    if args.task == 'infer':
        cells.append(f'{results["ours"][-1].get("max_diff", float("nan")):.1e}')
    return cells


def print_table(args: argparse.Namespace, rows: list[list[str]]) -> None:
    from strhub.tables import render_table

    first = 'reference / ours (ratio)' if args.reference else 'ours'
    if args.task == 'train':
        switches = (('compile', args.compile), ('fused AdamW', args.fused), ('channels-last', args.channels_last))
        options = ', '.join([f'precision {args.precision}'] + [name for name, on in switches if on])
        data = f'LMDB, {"no" if args.no_augment else "with"} augmentation' if args.data else 'fixed batch'
        header = ['model', 'params (M)', f'training samples/s, {first}']
        print(f'\ntraining, batch {args.batch_size}, {options}, {data}')
    else:
        header = ['model', 'params (M)', *[f'ms at batch {b}, {first}' for b in args.batch_sizes], 'max |ours - ref|']
        print('\ninference (eval, default decoding), same weights')
    print(render_table(header, rows))


if __name__ == '__main__':
    main()
