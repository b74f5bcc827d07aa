#!/usr/bin/env python3
"""Greedy generation latency and peak memory of strhub's GOT-OCR2 against transformers'
``GotOcr2ForConditionalGeneration.generate`` on the same small random weights (CPU).

Latency: the two implementations alternate round by round (so load changes hit both); the figure is the median
of the per-round time ratios. Memory: each implementation runs once in a fresh process, and the peak resident set
growth (``VmHWM`` after resetting it, Linux) over the generation call is reported.

    PYTHONPATH=. .venv/bin/python benchmarks/gotocr2_generation.py --rounds 15 --new_tokens 32 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import torch

VOCAB, IMAGE_TOKEN = 2000, 1999
SIZES = dict(vision_width=64, vision_depth=2, text_width=128, text_depth=4)


def build_pair(seed: int = 0):
    """A random transformers model and ours holding the same weights (``img_size`` 64: 16 image tokens)."""
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    from strhub.models.gotocr2 import GotOcr2
    from strhub.models.gotocr2.published import import_state

    config = GotOcr2Config(
        vision_config=dict(
            hidden_size=SIZES['vision_width'],
            num_hidden_layers=SIZES['vision_depth'],
            num_attention_heads=2,
            mlp_dim=4 * SIZES['vision_width'],
            output_channels=32,
            image_size=64,
            patch_size=4,
            window_size=4,
            global_attn_indexes=[SIZES['vision_depth'] - 1],
        ),
        text_config=dict(
            model_type='qwen2',
            vocab_size=VOCAB,
            hidden_size=SIZES['text_width'],
            intermediate_size=3 * SIZES['text_width'],
            num_hidden_layers=SIZES['text_depth'],
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        image_token_index=IMAGE_TOKEN,
        image_seq_length=16,
    )
    torch.manual_seed(seed)
    hf = GotOcr2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.05)
            if 'norm' in name and name.endswith('weight'):
                p.add_(1.0)
    ours = GotOcr2(
        VOCAB,
        img_size=(64, 64),
        patch_size=4,
        vision_width=SIZES['vision_width'],
        vision_depth=SIZES['vision_depth'],
        vision_heads=2,
        vision_mlp_dim=4 * SIZES['vision_width'],
        vision_out_channels=32,
        window=4,
        global_layers=(SIZES['vision_depth'] - 1,),
        text_width=SIZES['text_width'],
        text_depth=SIZES['text_depth'],
        text_heads=4,
        text_kv_heads=2,
        text_mlp_dim=3 * SIZES['text_width'],
        rope_theta=config.text_config.rope_parameters['rope_theta'],
        image_token_id=IMAGE_TOKEN,
        stop_ids=(),
    ).eval()
    state = import_state(hf.state_dict())
    ours.load_state_dict({k.removeprefix('model.'): v for k, v in state.items()}, strict=True)
    return hf, ours


def inputs(batch: int):
    gen = torch.Generator().manual_seed(1)
    prompt = torch.cat(
        [
            torch.randint(0, 1000, (batch, 40), generator=gen),
            torch.full((batch, 16), IMAGE_TOKEN),
            torch.randint(0, 1000, (batch, 10), generator=gen),
        ],
        dim=1,
    )
    return torch.randn(batch, 3, 64, 64, generator=gen), prompt


def run(which: str, hf, ours, images, prompt, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
        if which == 'ours':
            return ours.generate(images, prompt, max_new_tokens=new_tokens).ids
        out = hf.generate(
            input_ids=prompt, pixel_values=images, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None
        )
        return out[:, prompt.shape[1] :]


def _status_kib(field: str) -> int:
    with open('/proc/self/status', encoding='ascii') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f'{field}:'))


def measure_memory(which: str, batch: int, new_tokens: int) -> dict:
    hf, ours = build_pair()
    images, prompt = inputs(batch)
    if which == 'ours':
        del hf
    else:
        del ours
        ours = None
    gc.collect()
    before = _status_kib('VmRSS')
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM), so building the models does not count.
    with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
        f.write('5')
    run(which, hf if which == 'hf' else None, ours, images, prompt, new_tokens)
    return {'which': which, 'peak_rss_growth_mib': (_status_kib('VmHWM') - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--new_tokens', type=int, default=32)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--memory_of', choices=['ours', 'hf'], help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args.batch, args.new_tokens)))
        return

    hf, ours = build_pair()
    images, prompt = inputs(args.batch)
    same = torch.equal(
        run('ours', hf, ours, images, prompt, args.new_tokens), run('hf', hf, ours, images, prompt, args.new_tokens)
    )
    times: dict[str, list[float]] = {'ours': [], 'hf': []}
    for r in range(args.rounds):
        order = ('ours', 'hf') if r % 2 == 0 else ('hf', 'ours')
        for which in order:
            start = time.perf_counter()
            run(which, hf, ours, images, prompt, args.new_tokens)
            times[which].append(time.perf_counter() - start)
    ratios = [h / o for h, o in zip(times['hf'], times['ours'])]
    memory = {}
    for which in ('ours', 'hf'):
        child = [sys.executable, __file__, '--memory_of', which, '--batch', str(args.batch)]
        child += ['--new_tokens', str(args.new_tokens), '--threads', str(args.threads)]
        memory[which] = json.loads(subprocess.check_output(child, text=True).strip().splitlines()[-1])
    print(f'batch {args.batch}, {args.new_tokens} new tokens, {args.threads} thread(s), {args.rounds} rounds')
    print(f'identical ids: {same}')
    print(f'ours median {statistics.median(times["ours"]) * 1e3:.1f} ms, '
          f'transformers median {statistics.median(times["hf"]) * 1e3:.1f} ms')  # fmt: skip
    print(f'median per-round speed-up (transformers / ours): {statistics.median(ratios):.2f}x '
          f'(min {min(ratios):.2f}x, max {max(ratios):.2f}x)')  # fmt: skip
    print(f'peak RSS growth during generate: ours {memory["ours"]["peak_rss_growth_mib"]:.1f} MiB, '
          f'transformers {memory["hf"]["peak_rss_growth_mib"]:.1f} MiB')  # fmt: skip


if __name__ == '__main__':
    main()
