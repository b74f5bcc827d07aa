"""Permutation language modelling (PLM), the PARSeq training objective.

Each batch is trained under K factorisation orders of the label (shared by the whole batch): the left-to-right
order first, then (with ``perm_mirrored``) each order followed by its reverse. An order is turned into attention
masks so that every position is predicted from the characters that precede it in that order.

Positions in a permutation index the target sequence ``[B] c_1 .. c_T [E]``: 0 is BOS, 1..T the characters and
T + 1 the EOS slot (EOS or padding for shorter labels). BOS is always first and EOS always last, except in the second
order, which moves EOS right after BOS so that EOS is also learnt with no context (needed for NAR decoding).
"""

from __future__ import annotations

import math
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import PARSeq

# Labels of at most this many characters draw their orders from the full list of permutations (without repeats);
# longer ones draw random permutations, which then rarely collide.
_ENUMERATE_MAX_CHARS = 4
# For 4 characters, the lexicographic indices of 12 permutations whose reverses are the other 12: drawing from
# these and adding the reverses never repeats an order. For 2 and 3 characters the first half of the lexicographic
# list has this property.
_FOUR_CHAR_MIRROR_HALF = (0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21)


def generate_permutations(
    tgt: Tensor, perm_num: int, perm_forward: bool, perm_mirrored: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Draws the factorisation orders for a batch.

    Args:
        tgt: (N, T + 2) target ids ``[B] label [E] [P]..`` (only its shape and device are used).
        perm_num: number of orders K (with ``perm_mirrored`` each drawn order is followed by its reverse, so K/2
            are drawn); fewer are returned when the label length allows fewer distinct orders.
        perm_forward: always include the left-to-right order (first).
        perm_mirrored: follow each order with its reverse.
        generator: random source, for reproducible draws (on ``tgt``'s device for CUDA).

    Returns:
        (K, T + 2) long tensor of positions, each row starting with 0 (BOS).
    """
    if perm_num < 1:
        raise ValueError(f'perm_num must be >= 1, got {perm_num}')
    if tgt.dim() != 2 or tgt.shape[1] < 2:
        raise ValueError(f'tgt must be (N, T + 2) ids with BOS and EOS, got shape {tuple(tgt.shape)}')
    device = tgt.device
    num_chars = tgt.shape[1] - 2
    if num_chars == 1:
        # With one character, the only order is BOS, the character, EOS.
        return torch.arange(3, device=device).unsqueeze(0)

    num_to_draw = perm_num // 2 if perm_mirrored else perm_num
    num_distinct = math.factorial(num_chars) // (2 if perm_mirrored else 1)
    num_to_draw = min(num_to_draw, num_distinct)
    orders = [torch.arange(num_chars, device=device)] if perm_forward else []
    if num_chars <= _ENUMERATE_MAX_CHARS:
        pool = torch.as_tensor(list(permutations(range(num_chars))), dtype=torch.long, device=device)
        if perm_mirrored:
            half = _FOUR_CHAR_MIRROR_HALF if num_chars == 4 else range(num_distinct)
            pool = pool[list(half)]
        if perm_forward:
            pool = pool[1:]  # the identity leads the pool and is already taken
        picks = torch.randperm(len(pool), generator=generator, device=device)[: max(num_to_draw - len(orders), 0)]
        orders.extend(pool[picks])
    else:
        orders.extend(
            torch.randperm(num_chars, generator=generator, device=device) for _ in range(num_to_draw - len(orders))
        )
    orders = torch.stack(orders) if orders else torch.empty(0, num_chars, dtype=torch.long, device=device)
    if perm_mirrored:
        orders = torch.stack([orders, orders.flip(-1)], dim=1).flatten(0, 1)

    k = len(orders)
    bos = orders.new_zeros(k, 1)
    eos = orders.new_full((k, 1), num_chars + 1)
    perms = torch.cat([bos, orders + 1, eos], dim=1)
    if k > 1:
        # Right-to-left with EOS first: reverse context for the characters, empty context for EOS.
        perms[1, 1:] = torch.arange(num_chars + 1, 0, -1, device=device)
    return perms


def permutation_masks(perm: Tensor) -> tuple[Tensor, Tensor]:
    """Attention masks realising one order (True = may not attend).

    Args:
        perm: (T + 2,) positions, from :func:`generate_permutations`.

    Returns:
        ``content_mask`` (T + 1, T + 1): context position i may see position j iff j does not come after i in the
        order. ``query_mask`` (T + 1, T + 1): the query predicting position i + 1 may see context position j iff j
        comes strictly before i + 1 in the order.
    """
    if perm.dim() != 1:
        raise ValueError(f'perm must be 1-D, got shape {tuple(perm.shape)}; pass one row of generate_permutations()')
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(len(perm), device=perm.device)
    comes_later = rank[None, :] > rank[:, None]
    content_mask = comes_later[:-1, :-1]
    query_mask = (comes_later | torch.eye(len(perm), dtype=torch.bool, device=perm.device))[1:, :-1]
    return content_mask, query_mask


def plm_loss(
    model: PARSeq,
    images: Tensor,
    tgt_ids: Tensor,
    perm_num: int,
    perm_forward: bool,
    perm_mirrored: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The PLM training loss: mean token cross-entropy over all K orders of the batch.

    The images are encoded once and all orders are decoded in one decoder call. The first two orders (left-to-right,
    right-to-left) also train EOS; later orders leave EOS out of the targets, as the reference does.

    Args:
        model: the network; its ``bos_id``/``eos_id``/``pad_id`` must match ``tgt_ids``.
        images: (N, 3, H, W).
        tgt_ids: (N, T + 2) ``CharTokenizer.encode(labels)``: BOS, label, EOS, padding.
        perm_num, perm_forward, perm_mirrored, generator: see :func:`generate_permutations`.

    Returns:
        ``(loss, numel)``: the scalar mean loss and the number of target tokens it averages over (0-dim long tensor,
        left on the device to avoid a host sync).
    """
    if tgt_ids.shape[0] != images.shape[0]:
        raise ValueError(f'{images.shape[0]} images but {tgt_ids.shape[0]} target rows; pass one label per image')
    memory_kv = model.project_memory(model.encode(images))
    perms = generate_permutations(tgt_ids, perm_num, perm_forward, perm_mirrored, generator)
    k = len(perms)
    n, length = tgt_ids.shape[0], tgt_ids.shape[1] - 1
    tgt_in, tgt_out = tgt_ids[:, :-1], tgt_ids[:, 1:]
    # No position ever depends on EOS, in any order.
    padding = (tgt_in == model.pad_id) | (tgt_in == model.eos_id)
    without_eos = tgt_out.masked_fill(tgt_out == model.eos_id, model.pad_id)
    targets = torch.stack([tgt_out if i < 2 else without_eos for i in range(k)], dim=1)  # (N, K, T + 1)

    masks = [permutation_masks(p) for p in perms]
    content_masks = torch.stack([content for content, _ in masks])  # (K, T + 1, T + 1)
    query_masks = torch.stack([query for _, query in masks])
    if len(model.decoder.layers) == 1:
        # A one-layer decoder never updates the content stream, so the content is the same under every order: all
        # orders run as one long query sequence (K blocks of T + 1 queries) over a single copy of the content
        # (measured ~1.6x faster on CPU than one decoder pass per order). In training, the orders thus share one
        # content-dropout draw, where the reference draws one per order.
        queries = model.pos_queries[:, :length].repeat(1, k, 1).expand(n, -1, -1)
        out = model.decode(tgt_in, memory_kv, None, padding, queries, query_masks.flatten(0, 1))
        logits = model.head(out).unflatten(1, (k, length))  # (N, K, T + 1, C)
    else:
        # Deeper decoders update the content under each order's mask: orders are stacked along the batch instead,
        # row i * N + b being sample b under order i.
        repeated_kv = [(key.repeat(k, 1, 1, 1), value.repeat(k, 1, 1, 1)) for key, value in memory_kv]
        out = model.decode(
            tgt_in.repeat(k, 1),
            repeated_kv,
            content_masks.repeat_interleave(n, 0),
            padding.repeat(k, 1),
            tgt_query_mask=query_masks.repeat_interleave(n, 0),
        )
        logits = model.head(out).unflatten(0, (k, n)).transpose(0, 1)
    numel = (targets != model.pad_id).sum()
    loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=model.pad_id, reduction='sum')
    return loss / numel, numel
