"""megatron's optimizer step with a non-finite guard, and the finiteness check of the weights
that every checkpoint and HF export passes first.

``MegatronOptimizer.step()`` = ``prepare_grads`` (fp16: unscale + inf check) -> clip by the
global grad norm -> ``step_with_ready_grads``. Only fp16 loss scaling ever skips an update
there; a NaN loss or grad norm under bf16/fp32 is applied and poisons the weights. Here the
same three phases run with the global grad norm and the (already reduced) loss checked in
between, so a non-finite update is never applied on any rank.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def guarded_step(optimizer, loss: float) -> tuple[bool, float, bool]:
    """-> (applied, grad norm, non-finite). Collective (the grad norm is reduced over the
    model- and data-parallel ranks, so every rank takes the same decision)."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    if optimizer.prepare_grads():  # fp16 loss scaler found inf/nan: its own skip
        return False, float("nan"), False
    norm = float(optimizer.get_grad_norm())
    if not (math.isfinite(norm) and math.isfinite(loss)):
        return False, norm, True
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = [] if getattr(opt, "is_stub_optimizer", False) else opt.get_parameters()
        if params and opt.config.clip_grad > 0.0:
            decoupled = getattr(opt.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False)
            clip_grad_by_total_norm_fp32(params, max_norm=opt.config.clip_grad, total_norm=norm,
                                         use_decoupled_grad=decoupled)
    return bool(optimizer.step_with_ready_grads()), norm, False


@torch.no_grad()
def params_finite(modules) -> bool:
    """Collective over all ranks: True when every parameter on every rank is finite."""
    ok = all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())
    flag = torch.tensor([1.0 if ok else 0.0], device=next(modules[0].parameters()).device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)
