"""Samples -> token-budget micro-batches for the megatron pipeline schedule.

A :class:`megatron_nft.types.Sample` is one (prompt, response) pair with everything the loss needs.
Micro-batches are right-padded rows of length-sorted samples whose padded size
(rows x longest row) stays under ``micro_batch_tokens``. Right padding keeps a plain causal
mask valid: a real token never attends to a pad that comes after it.

Token positions: row ``i`` predicts ``tokens[i + 1]`` from ``tokens[: i + 1]``, so the
response token ``j`` (0-based) of a sample with prompt length ``P`` is scored at position
``P - 1 + j``; ``loss_mask`` is 1 exactly on those positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megatron_nft.data.batching import pack_micro_batches
from megatron_nft.types import Sample


@dataclass
class MicroBatch:
    indices: list[int]  # which samples (of the list passed to build) fill the rows
    tokens: torch.Tensor  # [b, s] long
    position_ids: torch.Tensor  # [b, s]
    labels: torch.Tensor  # [b, s] next token (pad where none)
    loss_mask: torch.Tensor  # [b, s] float, 1 on response-token positions
    token_weight: torch.Tensor  # [b, s] float, aggregation weight (0 off the mask)
    old_logprobs: torch.Tensor  # [b, s]
    rollout_logprobs: torch.Tensor  # [b, s]
    correct: torch.Tensor  # [b] 0/1
    r_hat: torch.Tensor  # [b]
    advantage: torch.Tensor  # [b]
    attention_mask: Optional[torch.Tensor]  # [1, 1, s, s] bool, True = masked; None = causal by type

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def to(self, device) -> "MicroBatch":
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device, non_blocking=True))
        return self


def causal_mask(s: int, device=None) -> torch.Tensor:
    return torch.triu(torch.ones(s, s, dtype=torch.bool, device=device), diagonal=1)[None, None]


def dp_shard(lengths: Sequence[int], dp_rank: int, dp_size: int) -> list[int]:
    """Indices of this data-parallel rank: length-sorted round robin, so token counts balance
    and every rank can compute every other rank's shard."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return sorted(order[dp_rank::dp_size])


def build_micro_batches(samples: Sequence[Sample], *, micro_batch_tokens: int, pad_id: int = 0,
                        token_weights: Optional[Sequence[float]] = None, explicit_mask: bool = True,
                        pad_to_multiple_of: int = 1) -> list[MicroBatch]:
    """Pack ``samples`` into micro-batches. ``token_weights[k]`` is the per-token aggregation
    weight of sample ``k`` (default 1 = token sum; the trainer passes global-mean weights).
    The padded length of every micro-batch is a multiple of ``pad_to_multiple_of`` (sequence
    parallelism splits the sequence over TP ranks; FP8 GEMMs need 16-aligned token counts);
    padded positions carry no loss."""
    lengths = [len(s.tokens) for s in samples]
    m = max(1, int(pad_to_multiple_of))
    out = []
    for idx in pack_micro_batches(lengths, micro_batch_tokens):
        rows = [samples[i] for i in idx]
        b, s = len(rows), -(-max(len(r.tokens) for r in rows) // m) * m
        tokens = torch.full((b, s), pad_id, dtype=torch.long)
        labels = torch.full((b, s), pad_id, dtype=torch.long)
        loss_mask = torch.zeros(b, s)
        weight = torch.zeros(b, s)
        old = torch.zeros(b, s)
        roll = torch.zeros(b, s)
        for r, (i, smp) in enumerate(zip(idx, rows)):
            n, p = len(smp.tokens), smp.prompt_len
            t = torch.tensor(smp.tokens, dtype=torch.long)
            tokens[r, :n] = t
            labels[r, : n - 1] = t[1:]
            lo, hi = p - 1, n - 1  # positions predicting response tokens
            loss_mask[r, lo:hi] = 1.0
            weight[r, lo:hi] = 1.0 if token_weights is None else float(token_weights[i])
            if smp.old_logprobs is not None:
                old[r, lo:hi] = torch.tensor(smp.old_logprobs, dtype=torch.float32)
            if smp.rollout_logprobs is not None:
                roll[r, lo:hi] = torch.tensor(smp.rollout_logprobs, dtype=torch.float32)
        out.append(MicroBatch(
            indices=list(idx), tokens=tokens,
            position_ids=torch.arange(s).unsqueeze(0).expand(b, s).contiguous(),
            labels=labels, loss_mask=loss_mask, token_weight=weight, old_logprobs=old,
            rollout_logprobs=roll,
            correct=torch.tensor([float(r.correct) for r in rows], dtype=torch.float32),
            r_hat=torch.tensor([r.r_hat for r in rows], dtype=torch.float32),
            advantage=torch.tensor([r.advantage for r in rows], dtype=torch.float32),
            attention_mask=causal_mask(s) if explicit_mask else None,
        ))
    return out


def scatter_response_values(mb: MicroBatch, values: torch.Tensor, samples: Sequence[Sample]
                            ) -> list[list[float]]:
    """Per-row response slices of a ``[b, s]`` per-position tensor, in ``mb.indices`` order."""
    values = values.detach().float().cpu()
    out = []
    for r, i in enumerate(mb.indices):
        smp = samples[i]
        out.append(values[r, smp.prompt_len - 1: len(smp.tokens) - 1].tolist())
    return out
