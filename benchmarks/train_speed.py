"""Training samples/s of any model configuration on random images (forward + backward + AdamW step).

python benchmarks/train_speed.py +experiment=parseq-tiny --batch-size 32 --steps 5
"""

from __future__ import annotations

import argparse
import random
import string
import time

import torch
from omegaconf import OmegaConf

from strhub.config import compose_config
from strhub.models.loading import build_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('overrides', nargs='*', help='config overrides, e.g. +experiment=parseq-tiny')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(args.overrides)
    system = build_system(OmegaConf.to_container(cfg.model, resolve=True)).train()
    rng = random.Random(0)
    alphabet = ''.join(c for c in string.ascii_lowercase + string.digits if c in system.charset_train)
    labels = [''.join(rng.choice(alphabet) for _ in range(rng.randint(3, 12))) for _ in range(args.batch_size)]
    images = torch.rand(args.batch_size, 3, *cfg.model.img_size) * 2 - 1
    optimizer = torch.optim.AdamW(system.parameters(), lr=1e-4)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = system.training_loss(images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    params = sum(p.numel() for p in system.model.parameters()) / 1e6
    print(
        f'{cfg.model.name} ({params:.1f}M params), batch {args.batch_size}, {torch.get_num_threads()} threads: '
        f'{median * 1e3:.0f} ms/step median, {args.batch_size / median:.1f} training samples/s'
    )


if __name__ == '__main__':
    main()
