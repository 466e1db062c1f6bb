"""Disk space for a training checkpoint, checked before writing it.

A checkpoint needs about as much as the newest one on disk (else an estimate from the
parameter count: model + fp32 main params + two Adam moments). When the disk lacks it, older
checkpoints are removed first -- never the newest complete one -- and when that is not enough
the run stops with "no space left", the path and the space needed, before anything is
written. Every rank takes rank 0's decision.
"""
from __future__ import annotations

import os
import shutil

import torch
import torch.distributed as dist

from megatron_nft.stability import UserError


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def estimate_bytes(policy) -> int:
    """Collective: bytes of model + fp32 main params + Adam moments over all ranks."""
    n = torch.tensor([float(sum(p.numel() for p in policy.unwrapped().parameters()))], dtype=torch.float64,
                     device=next(policy.unwrapped().parameters()).device)
    if dist.is_initialized():
        dist.all_reduce(n)
    bytes_per_param = (2 if policy.bf16 else 4) + (12 if policy.updates > 0 else 0)
    return int(n.item() * bytes_per_param)


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def no_space_message(root: str, need: int) -> str:
    free = shutil.disk_usage(root).free if os.path.isdir(root) else 0
    return (f"no space left on the device of {root}: a checkpoint needs about {_gb(need)}, {_gb(free)} free; "
            "free space there (older checkpoints, other files), lower checkpoint.keep, or move output.dir")


def ensure_space(policy, root: str, checkpoints: list[str]) -> int:
    """Collective before a save: make room (oldest first, the newest kept) or raise
    :class:`UserError`. ``checkpoints``: complete checkpoints, oldest first. -> bytes needed."""
    need = max(estimate_bytes(policy), dir_bytes(checkpoints[-1]) if checkpoints else 0)
    need = int(need * 1.1) + (1 << 20)
    ok = torch.ones(1, device=next(policy.unwrapped().parameters()).device)
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        old = list(checkpoints[:-1])
        while shutil.disk_usage(root).free < need and old:
            shutil.rmtree(old.pop(0), ignore_errors=True)
        ok.fill_(1.0 if shutil.disk_usage(root).free >= need else 0.0)
    dist.broadcast(ok, src=0)
    if ok.item() < 1:
        raise UserError(no_space_message(root, need))
    return need


def save_with_space_check(policy, output_dir: str, save):
    """Collective: ``save()`` (a training-checkpoint write) after :func:`ensure_space`; a write
    that fails on a full disk (torch reports it as e.g. "unexpected pos") becomes "no space left"."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    from megatron_nft.megatron.checkpointing import checkpoint_root, list_checkpoints

    root = checkpoint_root(output_dir)
    need = ensure_space(policy, root, [p for _, p in list_checkpoints(output_dir)])
    try:
        return save()
    except (Exception, CheckpointException) as e:
        if shutil.disk_usage(root).free < need:
            raise UserError(no_space_message(root, need)) from e
        raise
