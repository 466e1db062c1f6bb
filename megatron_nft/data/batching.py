"""Token-budget packing of sequences into right-padded micro-batches, and even sharding.

A micro-batch is a list of sequence indices; its *padded size* is
``len(mb) * max(lengths[i] for i in mb)`` (rows right-padded to the longest one). The packer
sorts by length (longest first, ties by index) and fills each micro-batch greedily, so rows
of a micro-batch have similar lengths and little padding is wasted. For a length-sorted
order this greedy cut is optimal: no contiguous split of that order has fewer micro-batches.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def padded_size(lengths: Sequence[int], mb: Sequence[int]) -> int:
    """Tokens a right-padded micro-batch occupies: ``len(mb) * max length in mb``."""
    return len(mb) * max((lengths[i] for i in mb), default=0)


def pack_micro_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    max_seqs: Optional[int] = None,
    min_batches: int = 1,
) -> list[list[int]]:
    """Group sequence indices into micro-batches whose padded size is ``<= max_tokens``.

    Args:
        lengths: length (tokens) of each sequence; index ``i`` refers to ``lengths[i]``.
        max_tokens: budget per micro-batch (rows x longest row). A sequence longer than the
            budget gets a micro-batch of its own (the only case that exceeds it).
        max_seqs: optional cap on rows per micro-batch.
        min_batches: split the largest micro-batches until there are at least this many (or
            one per sequence). Use it to give every data-parallel rank the same count, e.g.
            ``min_batches = max over ranks of len(pack_micro_batches(...))``.

    Returns micro-batches in descending-length order; every index appears exactly once.
    Deterministic: depends only on the arguments.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if max_seqs is not None and max_seqs <= 0:
        raise ValueError(f"max_seqs must be positive, got {max_seqs}")
    if any(int(x) < 0 for x in lengths):
        raise ValueError("lengths must be non-negative")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    mbs: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        length = int(lengths[i])
        new_max = max(cur_max, length)
        full = max_seqs is not None and len(cur) >= max_seqs
        if cur and ((len(cur) + 1) * new_max > max_tokens or full):
            mbs.append(cur)
            cur, new_max = [], length
        cur.append(i)
        cur_max = new_max
    if cur:
        mbs.append(cur)
    n_target = min(min_batches, len(lengths))
    while len(mbs) < n_target:
        # split the micro-batch with the largest padded size (first on ties) into two halves
        j = max(range(len(mbs)), key=lambda k: (padded_size(lengths, mbs[k]) if len(mbs[k]) > 1 else -1, -k))
        mb = mbs.pop(j)
        half = (len(mb) + 1) // 2
        mbs[j:j] = [mb[:half], mb[half:]]
    return mbs


def pad_batch(
    seqs: Sequence,
    pad_id: int,
    *,
    pad_to_multiple_of: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token sequences into one tensor.

    Args:
        seqs: sequences of token ids (lists or 1-D tensors).
        pad_id: id written into the padding positions.
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. the
            tensor-parallel size for sequence parallelism).

    Returns ``(tokens, lengths)``: ``tokens`` LongTensor ``[b, s]``, ``lengths`` LongTensor
    ``[b]`` with each row's true length (``tokens[i, lengths[i]:] == pad_id``).
    """
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
    s = int(lengths.max()) if rows else 0
    if pad_to_multiple_of:
        s = -(-s // pad_to_multiple_of) * pad_to_multiple_of
    tokens = torch.full((len(rows), s), int(pad_id), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : r.numel()] = r
    return tokens, lengths


def split_evenly(n: int, k: int) -> list[range]:
    """Split ``range(n)`` into ``k`` contiguous shards whose sizes differ by at most one.

    The first ``n % k`` shards get the extra item; with ``k > n`` the last shards are empty.
    ``split_evenly(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]``.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    base, extra = divmod(n, k)
    out, start = [], 0
    for j in range(k):
        size = base + (1 if j < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out
