"""Greedy and beam-search decoding of a :class:`~strhub.models.trocr.model.TrOCR` with a key/value cache.

Both algorithms feed one token per step through :meth:`TextDecoder.forward_step`: the self-attention keys/values of
earlier positions are kept in preallocated per-layer buffers and the cross-attention keys/values of the image memory
are projected once. Each sequence stops at its first EOS; what follows it is padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from strhub.models.trocr.model import LayerKeyValues, TrOCR

# Greedy decoding drops ended sequences from the batch once at least this fraction of the running ones has ended.
COMPACT_FRACTION = 0.25


@dataclass
class Generation:
    """Decoded sequences.

    Attributes:
        tokens: (N, L) generated ids, the decoder start token excluded; ``pad_id`` after a sequence's first EOS.
        token_log_probs: (N, L) log-probability of each generated token given its prefix; 0 after the first EOS.
        logits: (N, L, vocab) logits of the decoded positions, when requested.
    """

    tokens: Tensor
    token_log_probs: Tensor
    logits: Tensor | None = None


def generate(
    model: TrOCR,
    images: Tensor,
    max_length: int | None = None,
    beam_size: int | None = None,
    length_penalty: float | None = None,
    return_logits: bool = False,
) -> Generation:
    """Decodes images greedily (``beam_size`` 1) or with beam search.

    Args:
        images: (N, 3, H, W).
        max_length: tokens to decode before EOS. None: the model's ``max_length``, stopping once every sequence has
            ended (L = steps run). Given: exactly ``max_length + 1`` positions (L), limited by the position embedding.
        beam_size, length_penalty: override the model's runtime options.
        return_logits: also return the (N, L, vocab) logits (see :meth:`TrOCR.forward`).
    """
    beam_size = model.beam_size if beam_size is None else beam_size
    length_penalty = model.length_penalty if length_penalty is None else length_penalty
    if beam_size < 1:
        raise ValueError(f'beam_size must be >= 1, got {beam_size}')
    memory_kv = model.decoder.project_memory(model.encode(images))
    num_steps = model.resolve_length(max_length)
    stop_early = max_length is None
    if beam_size == 1:
        return greedy_search(model, memory_kv, num_steps, stop_early, return_logits)
    result = beam_search(model, memory_kv, num_steps, beam_size, length_penalty)
    if not stop_early:
        pad = num_steps - result.tokens.shape[1]
        result.tokens = torch.nn.functional.pad(result.tokens, (0, pad), value=model.pad_id)
        result.token_log_probs = torch.nn.functional.pad(result.token_log_probs, (0, pad))
    if return_logits:
        start = result.tokens.new_full((result.tokens.shape[0], 1), model.decoder_start_id)
        result.logits = model.decode(torch.cat([start, result.tokens[:, :-1]], dim=1), memory_kv)
    return result


def greedy_search(
    model: TrOCR, memory_kv: LayerKeyValues, num_steps: int, stop_early: bool, return_logits: bool = False
) -> Generation:
    """Most probable token at every step.

    Args:
        memory_kv: per-layer cross-attention keys/values of the N images (``decoder.project_memory``).
        num_steps: most tokens to decode, EOS included.
        stop_early: stop once every sequence has produced EOS (else run all ``num_steps``). Sequences that have
            ended also leave the batch as decoding goes on, so later steps only compute the unfinished ones.
        return_logits: also return each step's logits; after a sequence's EOS they carry no meaning (zero once its
            row has left the batch).
    """
    like = memory_kv[0][0]
    n, device = like.shape[0], like.device
    cache = model.decoder.new_cache(n, num_steps, like)
    tokens = torch.full((n, num_steps), model.pad_id, dtype=torch.long, device=device)
    log_probs = torch.zeros(n, num_steps, dtype=torch.float32, device=device)
    logits = like.new_zeros(n, num_steps, model.vocab_size) if return_logits else None
    token = torch.full((n, 1), model.decoder_start_id, dtype=torch.long, device=device)
    # Rows of the batch still decoding (into tokens/log_probs/logits), and which of them have just ended.
    rows = torch.arange(n, device=device)
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    check_every = model.eos_check_every(device)
    steps = num_steps
    for i in range(num_steps):
        step_logits = model.head(model.decoder.forward_step(token, memory_kv, cache, i))[:, 0].float()
        best, ids = step_logits.max(-1)
        ids = ids.masked_fill(ended, model.pad_id)
        step_log_probs = (best - step_logits.logsumexp(-1)).masked_fill(ended, 0.0)
        if len(rows) == n:
            tokens[:, i], log_probs[:, i] = ids, step_log_probs
            if logits is not None:
                logits[:, i] = step_logits
        else:
            tokens[rows, i], log_probs[rows, i] = ids, step_log_probs
            if logits is not None:
                logits[rows, i] = step_logits
        ended |= ids == model.eos_id
        token = ids[:, None]
        if not stop_early or (i + 1) % check_every:
            continue
        num_ended = int(ended.sum())
        if num_ended == len(rows):
            steps = i + 1
            break
        if num_ended >= COMPACT_FRACTION * len(rows):
            # Stop computing the sequences that have ended: their rows leave the batch (cache and image keys/values
            # included), which costs about one step's memory traffic and saves every later step's work on them.
            keep = (~ended).nonzero()[:, 0]
            rows, token, ended = rows[keep], token[keep], ended[keep]
            cache.keep_rows(keep)
            memory_kv = [(k[keep], v[keep]) for k, v in memory_kv]
    logits = None if logits is None else logits[:, :steps]
    return Generation(tokens[:, :steps], log_probs[:, :steps], logits)


def _gather_beams(x: Tensor, index: Tensor) -> Tensor:
    """(N, K, T) per-hypothesis rows picked by (N, K') indices -> (N, K', T)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def beam_search(
    model: TrOCR, memory_kv: LayerKeyValues, num_steps: int, beam_size: int, length_penalty: float
) -> Generation:
    """Beam search: keeps the ``beam_size`` most probable unfinished prefixes per image.

    Each step expands every beam by every token and keeps the best ``2 * beam_size`` candidates: those ending in EOS
    within the top ``beam_size`` become finished hypotheses scored ``sum log p / length ** length_penalty`` (length
    counts EOS), the best ``beam_size`` others continue. An image is done when its ``beam_size``-th best finished
    score beats anything its unfinished beams can still reach (exact, since log-probabilities only add up to less);
    after ``num_steps`` the unfinished beams compete at their length. The best hypothesis is returned.
    """
    like = memory_kv[0][0]
    n, device = like.shape[0], like.device
    vocab = model.vocab_size
    if 2 * beam_size > vocab:
        raise ValueError(f'beam_size {beam_size} needs a vocabulary of at least {2 * beam_size} tokens, got {vocab}')
    memory_kv = [(k.repeat_interleave(beam_size, 0), v.repeat_interleave(beam_size, 0)) for k, v in memory_kv]
    cache = model.decoder.new_cache(n * beam_size, num_steps, like)
    token = torch.full((n * beam_size, 1), model.decoder_start_id, dtype=torch.long, device=device)
    # Only the first beam is live at the start, so the first expansion does not repeat the same candidates.
    beam_scores = torch.full((n, beam_size), float('-inf'), device=device)
    beam_scores[:, 0] = 0.0
    seqs = torch.full((n, beam_size, num_steps), model.pad_id, dtype=torch.long, device=device)
    seq_log_probs = torch.zeros(n, beam_size, num_steps, device=device)
    done_scores = torch.full((n, beam_size), float('-inf'), device=device)  # sorted, best first
    done_seqs, done_log_probs = seqs.clone(), seq_log_probs.clone()
    in_top = torch.arange(2 * beam_size, device=device) < beam_size
    beam_offsets = torch.arange(n, device=device)[:, None] * beam_size

    def add_finished(scores: Tensor, cand_seqs: Tensor, cand_log_probs: Tensor) -> None:
        nonlocal done_scores, done_seqs, done_log_probs
        done_scores, pick = torch.cat([done_scores, scores], dim=1).topk(beam_size, dim=1)
        done_seqs = _gather_beams(torch.cat([done_seqs, cand_seqs], dim=1), pick)
        done_log_probs = _gather_beams(torch.cat([done_log_probs, cand_log_probs], dim=1), pick)

    steps = num_steps
    for t in range(num_steps):
        step_logits = model.head(model.decoder.forward_step(token, memory_kv, cache, t))[:, 0]
        log_probs = step_logits.float().log_softmax(-1).view(n, beam_size, vocab)
        top_scores, top_index = (beam_scores[:, :, None] + log_probs).view(n, -1).topk(2 * beam_size, dim=1)
        source, ids = top_index // vocab, top_index % vocab
        cand_seqs = _gather_beams(seqs, source)
        cand_seqs[:, :, t] = ids
        cand_log_probs = _gather_beams(seq_log_probs, source)
        cand_log_probs[:, :, t] = log_probs.view(n, -1).gather(1, top_index)
        is_eos = ids == model.eos_id
        finished = is_eos & in_top
        if bool(finished.any()):
            normalised = top_scores / (t + 1) ** length_penalty
            add_finished(normalised.masked_fill(~finished, float('-inf')), cand_seqs, cand_log_probs)
        beam_scores, keep = top_scores.masked_fill(is_eos, float('-inf')).topk(beam_size, dim=1)
        seqs, seq_log_probs = _gather_beams(cand_seqs, keep), _gather_beams(cand_log_probs, keep)
        token = ids.gather(1, keep).view(-1, 1)
        parents = (beam_offsets + source.gather(1, keep)).view(-1)
        cache.reorder(parents, t + 1)
        # The best score an unfinished beam can still reach: its current log-probability at the length that
        # normalises it most favourably.
        reach_length = num_steps if length_penalty > 0 else t + 1
        if bool((done_scores[:, -1] >= beam_scores[:, 0] / reach_length**length_penalty).all()):
            steps = t + 1
            break
    add_finished(beam_scores / steps**length_penalty, seqs, seq_log_probs)
    return Generation(done_seqs[:, 0, :steps], done_log_probs[:, 0, :steps])
