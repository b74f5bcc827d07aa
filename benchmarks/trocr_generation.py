"""TrOCR greedy decoding speed: our cached decoding vs. Hugging Face ``VisionEncoderDecoderModel.generate()``.

Both run the same random weights: a Hugging Face TrOCR is built at the chosen size and imported into our
:class:`~strhub.models.trocr.TrOCR` with the ``trocr_hf`` importer. Sizes (both at a 32x128 input, 4x8 patches):

- ``tiny``: the trocr-str-tiny experiment (ViT encoder 192 wide, 6 blocks; decoder 256 wide, 2 layers; the
  97-token character vocabulary);
- ``small``: trocr-small's widths (DeiT-Small encoder; decoder 256 wide, 6 layers; 64044 tokens).

Two scenarios: *fixed* length (the EOS row of the output projection is zeroed, so every sequence runs all ``--steps``
tokens and both implementations do exactly the same work) and *varying* lengths (the EOS row becomes a copy of the
row of a token found in most fixed-length sequences, picked so that the median length is closest to half of
``--steps``: sequences end where that token first appeared, at different steps as words of different lengths do; ours
stops computing a sequence once it has ended, generate() computes every row until the last one ends; the table shows
the lengths). Two timings each:
*decoding* (from the same precomputed encoder output; the decoder loop, cross-attention key/value projection included)
and *end-to-end* (images to token ids). Tokens are checked to be equal first. Both use the same thread count. Calls
alternate, round after round, so that both see the same background load on a shared machine; the median per-round
ratio (Hugging Face time / our time) is the figure.

    python benchmarks/trocr_generation.py [--size tiny small] [--batch-sizes 1 32] [--threads 1] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from transformers.modeling_outputs import BaseModelOutput

from strhub.models.registry import importer
from strhub.models.trocr import TrOCR, greedy_search

IMG_SIZE, PATCH_SIZE = (32, 128), (4, 8)
CALIBRATION_IMAGES = 32
MIN_PRESENCE = 0.5  # the calibration token appears in at least this fraction of the sequences
SIZES = {
    'tiny': dict(
        encoder='vit',
        enc=(192, 6, 3),
        dec=(256, 2, 4, 1024),
        vocab=97,
        ids=dict(decoder_start=95, eos=0, pad=96),  # the character tokenizer's layout for 94 characters
        hf_decoder=dict(scale_embedding=True),
    ),
    'small': dict(
        encoder='deit',
        enc=(384, 12, 6),
        dec=(256, 6, 8, 1024),
        vocab=64044,
        ids=dict(decoder_start=2, eos=2, pad=1),
        hf_decoder=dict(scale_embedding=True, activation_function='relu', tie_word_embeddings=False),
    ),
}
MIN_ROUNDS = 3
WEIGHT_STD = 0.2


def build_pair(size: str, steps: int) -> tuple[transformers.VisionEncoderDecoderModel, TrOCR]:
    spec = SIZES[size]
    enc_dim, enc_depth, enc_heads = spec['enc']
    dec_dim, dec_depth, dec_heads, ffn = spec['dec']
    ids, hf_decoder = spec['ids'], spec['hf_decoder']
    deit = spec['encoder'] == 'deit'
    torch.manual_seed(0)
    encoder_cfg = dict(
        image_size=list(IMG_SIZE),
        patch_size=list(PATCH_SIZE),
        hidden_size=enc_dim,
        num_hidden_layers=enc_depth,
        num_attention_heads=enc_heads,
        intermediate_size=4 * enc_dim,
        qkv_bias=True,
    )
    encoder = (
        transformers.DeiTModel(transformers.DeiTConfig(**encoder_cfg))
        if deit
        else transformers.ViTModel(transformers.ViTConfig(**encoder_cfg))
    )
    decoder = transformers.TrOCRForCausalLM(
        transformers.TrOCRConfig(
            vocab_size=spec['vocab'],
            d_model=dec_dim,
            decoder_layers=dec_depth,
            decoder_attention_heads=dec_heads,
            decoder_ffn_dim=ffn,
            cross_attention_hidden_size=enc_dim,
            max_position_embeddings=max(64, steps + 1),
            pad_token_id=ids['pad'],
            eos_token_id=ids['eos'],
            decoder_start_token_id=ids['decoder_start'],
            **hf_decoder,
        )
    )
    hf = transformers.VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    with torch.no_grad():
        # Wider than the Hugging Face initialisation, whose tiny weights make the decoder repeat its input token:
        # outputs then vary with the image and the step, as a trained model's do.
        for name, p in hf.named_parameters():
            if p.dim() > 1 or name.endswith(('token', 'position_embeddings')):
                p.normal_(0, WEIGHT_STD)
    hf.generation_config.update(
        decoder_start_token_id=ids['decoder_start'], eos_token_id=ids['eos'], pad_token_id=ids['pad']
    )
    ours = TrOCR(
        vocab_size=spec['vocab'],
        max_length=steps - 1,
        img_size=IMG_SIZE,
        patch_size=PATCH_SIZE,
        enc_embed_dim=enc_dim,
        enc_depth=enc_depth,
        enc_num_heads=enc_heads,
        enc_qkv_bias=True,
        enc_distilled=deit,
        dec_embed_dim=dec_dim,
        dec_depth=dec_depth,
        dec_num_heads=dec_heads,
        dec_ffn_dim=ffn,
        max_positions=max(64, steps + 1),
        scale_embedding=hf_decoder.get('scale_embedding', False),
        tie_embeddings=hf_decoder.get('tie_word_embeddings', True),
        activation=hf_decoder.get('activation_function', 'gelu'),
        decoder_start_id=ids['decoder_start'],
        eos_id=ids['eos'],
        pad_id=ids['pad'],
    ).eval()
    state = importer('trocr_hf')(hf.state_dict())
    ours.load_state_dict({k.removeprefix('model.'): v for k, v in state.items()}, strict=True)
    return hf, ours


def set_eos_row(hf: transformers.VisionEncoderDecoderModel, ours: TrOCR, row: torch.Tensor) -> None:
    with torch.no_grad():
        hf.decoder.output_projection.weight[ours.eos_id] = row
        ours.head.weight[ours.eos_id] = row


def sequence_lengths(tokens: torch.Tensor, eos_id: int) -> list[int]:
    is_eos = tokens == eos_id
    return [int(r.nonzero()[0]) + 1 if r.any() else tokens.shape[1] for r in is_eos]


@torch.inference_mode()
def calibrate_eos_row(ours: TrOCR, images: torch.Tensor, steps: int) -> torch.Tensor:
    """An EOS output row under which the sequences of ``images`` end at different steps: that of a token found in at
    least half of the fixed-length sequences whose first appearances give the median length closest to half of
    ``steps`` (scaled by 1.001, so that EOS wins where that token did)."""
    eos_row = ours.head.weight[ours.eos_id].clone()
    ours.head.weight[ours.eos_id] = 0.0
    tokens = ours.generate(images, max_length=steps - 1).tokens
    ours.head.weight[ours.eos_id] = eos_row
    positions = torch.arange(steps).expand_as(tokens)
    candidates = [c for c in tokens.unique().tolist() if c not in (ours.eos_id, ours.pad_id)]
    presence = {c: float((tokens == c).any(1).float().mean()) for c in candidates}
    common = [c for c in candidates if presence[c] >= MIN_PRESENCE] or [max(candidates, key=presence.get)]

    def median_gap(candidate: int) -> float:
        lengths = torch.where(tokens == candidate, positions, steps - 1).amin(1) + 1
        return abs(float(lengths.float().median()) - steps / 2)

    return 1.001 * ours.head.weight[min(common, key=median_gap)]


def alternate_timings(calls: dict[str, Callable[[], object]], seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each implementation, measured in alternation for about ``seconds``."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    deadline = time.perf_counter() + seconds
    while len(times['ours']) < MIN_ROUNDS or time.perf_counter() < deadline:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def compare(
    label: str,
    hf: transformers.VisionEncoderDecoderModel,
    ours: TrOCR,
    images: torch.Tensor,
    steps: int,
    fixed: bool,
    seconds: float,
) -> None:
    """Prints one table row per timing (decoding, end-to-end) of generate() and ours on ``images``."""
    options = dict(max_new_tokens=steps, do_sample=False, num_beams=1)
    if fixed:
        options['min_new_tokens'] = steps
    memory = ours.encode(images)
    torch.testing.assert_close(memory, hf.encoder(pixel_values=images).last_hidden_state, atol=1e-4, rtol=0)
    hf_memory = BaseModelOutput(last_hidden_state=memory)
    calls = {
        'decoding': {
            'hf': lambda: hf.generate(encoder_outputs=hf_memory, **options),
            'ours': lambda: greedy_search(ours, ours.decoder.project_memory(memory), steps, stop_early=True).tokens,
        },
        'end-to-end': {
            'hf': lambda: hf.generate(pixel_values=images, **options),
            'ours': lambda: ours.generate(images).tokens,
        },
    }
    for what, pair in calls.items():
        expected, tokens = pair['hf']()[:, 1:], pair['ours']()
        if not torch.equal(expected, tokens):
            raise AssertionError(f'{label}: our tokens differ from generate(); the timings would not compare alike')
        lengths = sequence_lengths(tokens, ours.eos_id)
        times = alternate_timings(pair, seconds)
        medians = {name: statistics.median(samples) * 1e3 for name, samples in times.items()}
        ratios = [h / o for h, o in zip(times['hf'], times['ours'], strict=True)]
        print(
            f'| {label} | {what} | {min(lengths)}/{statistics.median(lengths):g}/{max(lengths)} | '
            f'{medians["hf"]:.1f} | {medians["ours"]:.1f} | {statistics.median(ratios):.2f}x | '
            f'{min(times["hf"]) / min(times["ours"]):.2f}x | {len(ratios)} |',
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', nargs='+', choices=sorted(SIZES), default=['tiny', 'small'])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--scenarios', nargs='+', choices=['fixed', 'varying'], default=['fixed', 'varying'])
    parser.add_argument('--threads', type=int, default=None, help='torch threads for both (default: torch default)')
    parser.add_argument('--steps', type=int, default=26, help='most tokens decoded per image (25 characters + EOS)')
    parser.add_argument('--seconds', type=float, default=5.0, help='timing time per comparison')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f'torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s); '
        f'greedy decoding of up to {args.steps} tokens from {IMG_SIZE[0]}x{IMG_SIZE[1]} images (random weights)\n',
        flush=True,
    )
    columns = ['size / batch / scenario', 'timed', 'lengths min/median/max', 'generate() ms', 'ours ms']
    columns += ['median ratio', 'ratio of minimums', 'rounds']
    print('| ' + ' | '.join(columns) + ' |')
    print('|:---|:---|---:|---:|---:|---:|---:|---:|', flush=True)
    for size in args.size:
        hf, ours = build_pair(size, args.steps)
        pool = torch.randn(CALIBRATION_IMAGES, 3, *IMG_SIZE, generator=torch.Generator().manual_seed(0))
        rows = {'fixed': torch.zeros(ours.head.in_features), 'varying': calibrate_eos_row(ours, pool, args.steps)}
        for scenario in args.scenarios:
            set_eos_row(hf, ours, rows[scenario])
            for batch_size in args.batch_sizes:
                images = pool[:batch_size] if batch_size <= len(pool) else torch.randn(batch_size, 3, *IMG_SIZE)
                label = f'{size} / {batch_size} / {scenario}'
                compare(label, hf, ours, images, args.steps, scenario == 'fixed', args.seconds)


if __name__ == '__main__':
    main()
