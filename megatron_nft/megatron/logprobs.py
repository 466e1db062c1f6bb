"""Memory-efficient (chunked, recomputing) vocab-parallel token log-probs.

Pure ``torch`` + ``torch.distributed``; no Megatron import, so it is testable alone.

Notation, for one token with hidden state ``h`` (row of ``hidden``), output-layer weight ``W``
(all ``V`` rows of the padded vocab, split over the tensor-parallel (TP) ranks by rows), label
``y`` and logits ``z = W h``; padding columns ``j >= vocab_size`` are masked to ``-inf``::

    m        = max_j z_j                       (all-reduce MAX over TP)
    s        = sum_j exp(z_j - m)              (all-reduce SUM over TP)
    lse      = m + log s
    logprob  = z_y - lse                       (z_y lives on the rank owning y: all-reduce SUM)
    p_j      = exp(z_j - lse)
    entropy  = -sum_j p_j log p_j = lse - sum_j p_j z_j
             = log s - (sum_j exp(z_j - m) (z_j - m)) / s        (all-reduce SUM of the numerator)

The SUM reductions (``s``, ``z_y``, entropy numerator) are stacked into one all-reduce per chunk.

Gradients wrt the logits, with upstream grads ``g`` (log-prob) and ``k`` (entropy)::

    d logprob / d z_j = 1[j = y] - p_j
    d entropy / d z_j = -p_j (z_j - sum_i p_i z_i) = -p_j ((z_j - lse) + entropy)
    dz_j              = g (1[j = y] - p_j) - k p_j ((z_j - lse) + entropy)

and then ``d hidden = dz W`` and ``d W = dz^T hidden`` (chain rule through ``z = hidden W^T``).
Padding columns have ``p_j = 0`` and get zero gradient (they are never even computed: the
matmul only uses the weight rows of real tokens).

``chunked_logprobs`` runs this over chunks of ``chunk_tokens`` tokens. Forward keeps only per-token
scalars (``lse``, ``entropy``); backward recomputes each chunk's logits. Peak extra memory is
O(chunk_tokens * V_local) (+ the fp32 weight grad) instead of O(N * V_local), for one extra
matmul (~4/3 of the matmul FLOPs).

Numerics: the matmul runs in the inputs' (promoted) dtype -- bf16 tensor cores on GPU, exactly
like Megatron's output layer -- and everything after it (softmax, reductions, ``dz``) in fp32
(fp64 for fp64 inputs). The weight grad is accumulated across chunks in fp32 and cast at the end.
Returned log-probs / entropies are fp32 (fp64 for fp64 inputs).

TP gradient contract (Megatron conventions)
-------------------------------------------
Megatron's ``ColumnParallelLinear`` treats its input as replicated over TP: forward passes it
through ``copy_to_tensor_model_parallel_region`` (identity forward, all-reduce backward), so each
rank's partial input grad ``dz_local W_local`` is summed there. This function *replaces* the output
layer and does that reduction itself: **the returned grad of ``hidden`` is the FULL gradient,
already summed over ``tp_group``**, identical on every TP rank. Callers must therefore pass the
replicated hidden states directly -- do NOT wrap them in ``copy_to_tensor_model_parallel_region``
(that would multiply the grad by TP). With sequence parallelism, either gather with
``gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False)`` (its backward then
just splits the full grad), or pass ``reduce_hidden_grad=False`` to get the per-rank partial grad
and keep Megatron's reduce-scatter. The weight grad is this rank's shard only (no communication),
as for any TP-sharded parameter. The loss built on the outputs is treated as replicated across TP
(every TP rank computes the same loss), which is Megatron's convention.

Labels must be real token ids in ``[0, vocab_size)``; for masked positions pass any valid id
(e.g. 0) and mask the loss -- an out-of-range label silently yields a target logit of 0.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

__all__ = ["chunked_logprobs", "materialized_logprobs"]


def _tp_size(group) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if _tp_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _dtypes(hidden: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.dtype, torch.dtype]:
    """(matmul dtype, accumulation dtype): promoted input dtype, and fp32 (fp64 for fp64)."""
    mm = torch.promote_types(hidden.dtype, weight.dtype)
    return mm, torch.promote_types(mm, torch.float32)


def _n_valid(v_local: int, vocab_start: int, vocab_size: Optional[int]) -> int:
    """How many of this rank's vocab rows are real tokens (the rest is padding)."""
    if vocab_size is None:
        return v_local
    return max(0, min(v_local, vocab_size - vocab_start))


def _target_index(labels: torch.Tensor, vocab_start: int, n_valid: int):
    """Local column of each label and whether this rank owns it."""
    idx = labels - vocab_start
    owned = (idx >= 0) & (idx < n_valid)
    return idx.clamp(0, max(n_valid - 1, 0)).unsqueeze(-1), owned


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, tp_group, vocab_start, n_valid, chunk,
                compute_entropy, reduce_hidden_grad):
        ctx.set_materialize_grads(False)
        mm_dtype, acc = _dtypes(hidden, weight)
        w = weight[:n_valid].to(mm_dtype)
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        logprobs = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if compute_entropy else None
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            z = (hidden[a:b].to(mm_dtype) @ w.T).to(acc)          # [c, n_valid]
            if n_valid > 0:
                m = z.max(dim=-1).values
            else:
                m = torch.full((b - a,), float("-inf"), dtype=acc, device=z.device)
            m = _all_reduce(m, dist.ReduceOp.MAX, tp_group)
            idx, owned = _target_index(labels[a:b], vocab_start, n_valid)
            if n_valid > 0:
                target = torch.where(owned, z.gather(1, idx).squeeze(1), 0.0)
            else:
                target = torch.zeros_like(m)
            zs = z.sub_(m.unsqueeze(1))                              # z - m, in place
            if compute_entropy:
                e = torch.exp(zs)
                sums = [e.sum(dim=-1), target, torch.einsum("ij,ij->i", e, zs)]
            else:
                e = zs.exp_()                                        # one [c, V] buffer only
                sums = [e.sum(dim=-1), target]
            del z, zs, e
            sums = _all_reduce(torch.stack(sums), dist.ReduceOp.SUM, tp_group)
            log_s = sums[0].log()
            lse[a:b] = m + log_s
            logprobs[a:b] = sums[1] - lse[a:b]
            if compute_entropy:
                entropy[a:b] = log_s - sums[2] / sums[0]
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.cfg = (tp_group, vocab_start, n_valid, chunk, reduce_hidden_grad)
        return logprobs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_ent):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        tp_group, vocab_start, n_valid, chunk, reduce_hidden_grad = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_lp is None and g_ent is None) or not (need_h or need_w):
            return (None,) * 9
        mm_dtype, acc = _dtypes(hidden, weight)
        w = weight[:n_valid].to(mm_dtype)
        n = hidden.shape[0]
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            if n_valid == 0:
                break                      # this rank holds only padding: zero local grads
            h = hidden[a:b].to(mm_dtype)
            zl = (h @ w.T).to(acc).sub_(lse[a:b].unsqueeze(1))     # z - lse
            p = torch.exp(zl) if g_ent is not None else zl.exp_()  # in place unless needed
            if g_ent is not None:                                  # -k p (z - sum_i p_i z_i)
                zl.add_(entropy[a:b].unsqueeze(1)).mul_(p).mul_(-g_ent[a:b].to(acc).unsqueeze(1))
            if g_lp is not None:                                   # g (1[j = y] - p)
                gl = g_lp[a:b].to(acc)
                dz = p.mul_(-gl.unsqueeze(1))
                idx, owned = _target_index(labels[a:b], vocab_start, n_valid)
                dz.scatter_add_(1, idx, torch.where(owned, gl, 0.0).unsqueeze(1))
                if g_ent is not None:
                    dz.add_(zl)
            else:
                dz = zl
            del zl, p
            dz = dz.to(mm_dtype)
            if need_h:
                grad_h[a:b] = dz @ w
            if need_w:
                if grad_w.dtype == mm_dtype:
                    grad_w[:n_valid].addmm_(dz.T, h)                # no [V, H] temporary
                else:
                    grad_w[:n_valid] += dz.T @ h                    # bf16/fp16 product, fp32 sum
            del dz                         # free this chunk's logits before the next matmul
        if need_h and reduce_hidden_grad:
            _all_reduce(grad_h, dist.ReduceOp.SUM, tp_group)
        return (grad_h.to(hidden.dtype) if need_h else None,
                grad_w.to(weight.dtype) if need_w else None) + (None,) * 7


def _prepare(hidden, weight, labels, vocab_start, vocab_size):
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} != weight size {weight.shape[-1]} "
                         "(weight must be [V_local, H])")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal hidden's leading "
                         f"shape {tuple(hidden.shape[:-1])}")
    n_valid = _n_valid(weight.shape[0], vocab_start, vocab_size)
    return hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1).long(), n_valid


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                     tp_group=None, vocab_start: int = 0, vocab_size: Optional[int] = None,
                     chunk_tokens: int = 1024, compute_entropy: bool = False,
                     reduce_hidden_grad: bool = True
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token ``log softmax(hidden @ weight.T)[label]`` without materialising the logits.

    Args:
        hidden: ``[..., H]`` hidden states (any float dtype), replicated across ``tp_group``.
        weight: ``[V_local, H]`` this rank's vocab shard of the output layer: rows
            ``vocab_start .. vocab_start + V_local`` of the padded vocab.
        labels: ``[...]`` global token ids (same leading shape as ``hidden``).
        tp_group: tensor-parallel process group; ``None`` (or size 1) = no TP.
        vocab_start: global id of this rank's first vocab row.
        vocab_size: true (unpadded) vocab size; ids ``>= vocab_size`` get probability 0.
            ``None`` = no padding.
        chunk_tokens: tokens per chunk. Peak extra memory ~ one (two with entropy) fp32
            ``[chunk_tokens, V_local]`` buffers + the fp32 weight grad ``[V_local, H]``.
        compute_entropy: also return the per-token entropy (differentiable).
        reduce_hidden_grad: all-reduce the grad of ``hidden`` over ``tp_group`` (default; see
            the module docstring for the contract). ``False`` returns this rank's partial grad.

    Returns:
        ``(logprobs, entropy)``, each of shape ``[...]`` in fp32 (fp64 for fp64 inputs);
        ``entropy`` is ``None`` unless ``compute_entropy``.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    lead = labels.shape
    h, y, n_valid = _prepare(hidden, weight, labels, vocab_start, vocab_size)
    lp, ent = _ChunkedLogprobs.apply(h, weight, y, tp_group, vocab_start, n_valid,
                                     chunk_tokens, compute_entropy, reduce_hidden_grad)
    return lp.reshape(lead), (ent.reshape(lead) if ent is not None else None)


class _AllReduceSumReplicatedLoss(torch.autograd.Function):
    """All-reduce SUM forward; identity backward (the loss is replicated over TP, and each
    rank's local term only feeds its own copy of the sum)."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), dist.ReduceOp.SUM, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _CopyToTPRegion(torch.autograd.Function):
    """Identity forward; all-reduce SUM backward (Megatron's copy_to_tensor_model_parallel_region)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g.clone(), dist.ReduceOp.SUM, ctx.group), None


def materialized_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          tp_group=None, vocab_start: int = 0, vocab_size: Optional[int] = None,
                          chunk_tokens: int = 1024, compute_entropy: bool = False,
                          reduce_hidden_grad: bool = True
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Reference: same signature/contract as :func:`chunked_logprobs`, plain autograd.

    Materialises the full ``[N, V_local]`` fp32 logits (Megatron-style vocab-parallel math,
    no chunking); ``chunk_tokens`` is ignored. The baseline for tests and benchmarks.
    """
    lead = labels.shape
    h, y, n_valid = _prepare(hidden, weight, labels, vocab_start, vocab_size)
    mm_dtype, acc = _dtypes(h, weight)
    if reduce_hidden_grad:
        h = _CopyToTPRegion.apply(h, tp_group)
    z = (h.to(mm_dtype) @ weight.to(mm_dtype).T).to(acc)            # [N, V_local]
    valid = torch.arange(weight.shape[0], device=z.device) < n_valid
    if n_valid < weight.shape[0]:
        z = z.masked_fill(~valid, float("-inf"))
    m = z.detach().max(dim=-1).values
    m = _all_reduce(m, dist.ReduceOp.MAX, tp_group)
    zs = z - m.unsqueeze(1)
    e = torch.exp(zs)
    idx, owned = _target_index(y, vocab_start, n_valid)
    parts = [e.sum(dim=-1), torch.where(owned, z.gather(1, idx).squeeze(1), 0.0)]
    if compute_entropy:
        parts.append((e * torch.where(valid, zs, 0.0)).sum(dim=-1))
    sums = _AllReduceSumReplicatedLoss.apply(torch.stack(parts), tp_group)
    lp = sums[1] - (m + sums[0].log())
    ent = sums[0].log() - sums[2] / sums[0] if compute_entropy else None
    return lp.reshape(lead), (ent.reshape(lead) if ent is not None else None)
