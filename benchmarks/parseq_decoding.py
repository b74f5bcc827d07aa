"""PARSeq greedy decoding speed: cached decoding (``use_cache=True``) against two baselines that run the reference
algorithm (step i re-runs the decoder over the whole prefix and re-projects the image memory):

- ``published``: the published implementation's layer structure, built here from torch's stock modules
  (``nn.MultiheadAttention`` returning attention weights, additive float masks) over the same weights;
- ``recompute``: this project's ``use_cache=False`` path (the same algorithm on our fused-attention layers).

All run the same randomly initialised full-size ``parseq`` (94-character charset) in eval mode, autoregressive with
one refinement pass, over all 26 positions (``max_length`` is given, so there is no early stop), and must give the
same logits. The decoder is timed on precomputed image memory (the part the cache speeds up), and the whole forward
pass (encoder included) as well. Batch 1 runs on one thread, larger batches on torch's default thread count.

The variants alternate, round after round, so that all see the same background load on a shared machine; the
per-round ratio (baseline time / cached time of the same round) is the least noisy figure.

    python benchmarks/parseq_decoding.py [--batch-sizes 1 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.data.tokenizer import CharTokenizer
from strhub.models.parseq import PARSeq

CHARSET_94 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'
MAX_LABEL_LENGTH = 25
MIN_ROUNDS = 3


class PublishedStyleDecoder(nn.Module):
    """PARSeq's decoding as the published code runs it, over a :class:`PARSeq`'s weights (copied, not shared).

    Per decoder layer: ``nn.MultiheadAttention`` (batch first, ``need_weights`` left at its default, so the weights
    are computed and averaged), pre-LN two-stream layers, and float ``-inf`` masks. Autoregressive decoding re-runs
    the decoder over the whole prefix at every step, projecting the image memory anew each time.
    """

    def __init__(self, model: PARSeq) -> None:
        super().__init__()
        self.model = model
        self.attention = nn.ModuleList()
        for layer in model.decoder.layers:
            for attn in (layer.self_attn, layer.cross_attn):
                mha = nn.MultiheadAttention(attn.embed_dim, attn.num_heads, dropout=attn.dropout, batch_first=True)
                mha.load_state_dict(attn.state_dict())
                self.attention.append(mha)
        self.eval()

    def _stream(self, i: int, x: Tensor, x_norm: Tensor, kv: Tensor, memory: Tensor, mask, padding) -> Tensor:
        layer = self.model.decoder.layers[i]
        self_attn, cross_attn = self.attention[2 * i], self.attention[2 * i + 1]
        x = x + self_attn(x_norm, kv, kv, attn_mask=mask, key_padding_mask=padding)[0]
        x = x + cross_attn(layer.norm1(x), memory, memory)[0]
        return x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))

    def _decode(self, tgt: Tensor, memory: Tensor, tgt_mask, padding, query: Tensor, query_mask) -> Tensor:
        model = self.model
        content = model._embed_context(tgt)  # the same embedding as the published code's
        last = len(model.decoder.layers) - 1
        for i, layer in enumerate(model.decoder.layers):
            content_norm = layer.norm_c(content)
            next_query = self._stream(i, query, layer.norm_q(query), content_norm, memory, query_mask, padding)
            if i < last:
                content = self._stream(i, content, content_norm, content_norm, memory, tgt_mask, padding)
            query = next_query
        return model.decoder.norm(query)

    def forward(self, memory: Tensor, num_steps: int) -> Tensor:
        model = self.model
        n = memory.shape[0]
        mask = torch.triu(torch.full((num_steps, num_steps), float('-inf')), 1)
        query_mask = mask.clone()
        pos_queries = model.pos_queries[:, :num_steps].expand(n, -1, -1)
        tgt = torch.full((n, num_steps), model.pad_id, dtype=torch.long)
        tgt[:, 0] = model.bos_id
        logits = []
        for i in range(num_steps):
            j = i + 1
            out = self._decode(tgt[:, :j], memory, mask[:j, :j], None, pos_queries[:, i:j], query_mask[i:j, :j])
            logits.append(model.head(out))
            if j < num_steps:
                tgt[:, j] = logits[-1][:, 0].argmax(-1)
        logits = torch.cat(logits, dim=1)
        # One cloze refinement pass: each query sees every predicted character but its own, up to the first EOS.
        query_mask[torch.triu(torch.ones(num_steps, num_steps, dtype=torch.bool), 2)] = 0
        tgt = torch.cat([tgt[:, :1], logits[:, :-1].argmax(-1)], dim=1)
        padding = (tgt == model.eos_id).int().cumsum(-1) > 0
        return model.head(self._decode(tgt, memory, mask, padding, pos_queries, query_mask))


def alternate_timings(calls: dict[str, Callable[[], Tensor]], seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured in alternation for about ``seconds``."""
    times = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    deadline = time.perf_counter() + seconds
    while len(times['cached']) < MIN_ROUNDS or time.perf_counter() < deadline:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def with_cache(model: PARSeq, use_cache: bool, call: Callable[[], Tensor]) -> Callable[[], Tensor]:
    def run() -> Tensor:
        model.use_cache = use_cache
        return call()

    return run


def bench_batch(model: PARSeq, published: PublishedStyleDecoder, batch_size: int, seconds: float) -> None:
    threads = 1 if batch_size == 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    images = torch.randn(batch_size, 3, *model.encoder.img_size, generator=torch.Generator().manual_seed(0))
    steps = MAX_LABEL_LENGTH + 1
    with torch.inference_mode():
        memory = model.encode(images)
        decoders = {
            'published': lambda: published(memory, steps),
            'recompute': with_cache(model, False, lambda: model.decode_memory(memory, MAX_LABEL_LENGTH)),
            'cached': with_cache(model, True, lambda: model.decode_memory(memory, MAX_LABEL_LENGTH)),
        }
        outputs = {name: call() for name, call in decoders.items()}
        for name in ('published', 'recompute'):
            torch.testing.assert_close(outputs['cached'], outputs[name], atol=1e-4, rtol=0)

        forwards = {
            'published': lambda: published(model.encode(images), steps),
            'recompute': with_cache(model, False, lambda: model(images, MAX_LABEL_LENGTH)),
            'cached': with_cache(model, True, lambda: model(images, MAX_LABEL_LENGTH)),
        }
        for what, calls in (('decoder', decoders), ('forward', forwards)):
            times = alternate_timings(calls, seconds)
            for name, samples in times.items():
                ms = [t * 1e3 / batch_size for t in samples]
                print(
                    f'batch {batch_size:3d}, {threads} thread(s), {what}, {name}: '
                    f'median {statistics.median(ms):.2f} ms/image, min {min(ms):.2f} ({len(ms)} calls)',
                    flush=True,
                )
            for name in ('published', 'recompute'):
                ratios = [ref / ours for ref, ours in zip(times[name], times['cached'], strict=True)]
                print(
                    f'batch {batch_size:3d}, {threads} thread(s), {what}: cached is {statistics.median(ratios):.2f}x '
                    f'faster than {name} (median of per-round ratios; ratio of minimums '
                    f'{min(times[name]) / min(times["cached"]):.2f}x)',
                    flush=True,
                )


def main() -> None:
    # The published code mixes a bool padding mask with float attention masks, as the baseline does on purpose.
    warnings.filterwarnings('ignore', message='Support for mismatched key_padding_mask')
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 64])
    parser.add_argument('--seconds', type=float, default=10.0, help='timing time per comparison')
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = PARSeq(len(CharTokenizer(CHARSET_94)), MAX_LABEL_LENGTH, decode_ar=True, refine_iters=1).eval()
    published = PublishedStyleDecoder(model)
    print(
        f'torch {torch.__version__}, {default_threads} default threads; parseq (random weights), '
        f'AR + 1 refinement, {MAX_LABEL_LENGTH + 1} steps',
        flush=True,
    )
    for batch_size in args.batch_sizes:
        torch.set_num_threads(default_threads)
        bench_batch(model, published, batch_size, args.seconds)


if __name__ == '__main__':
    main()
