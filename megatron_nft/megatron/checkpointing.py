"""Training checkpoints: model + optimizer (megatron dist_checkpointing), scheduler, trainer
state (step, data position) and every rank's RNG state.

Atomicity: all ranks write into ``checkpoints/.tmp-step_XXXXXXXX``; after a barrier rank 0
renames it to ``checkpoints/step_XXXXXXXX``. A crash mid-write leaves only a ``.tmp-`` folder,
which :func:`latest_checkpoint` never picks (and the next save clears). Resume = re-run the
same command with the same ``output.dir``.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

_STEP_RE = re.compile(r"^step_(\d{8})$")
_OPT_META = {"distrib_optim_sharding_type": "dp_reshardable"}


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        path = os.path.join(root, name)
        if m and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(policy, is_loading: bool, with_optimizer: bool) -> dict:
    model_sd = policy.unwrapped().sharded_state_dict()
    state = {"model": model_sd}
    if with_optimizer:  # megatron's optimizers have no state to save before their first step
        state["optimizer"] = policy.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=_OPT_META)
    return state


def save_checkpoint(policy, output_dir: str, step: int, trainer_state: dict, keep: int = 2) -> str:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    root = checkpoint_root(output_dir)
    name = f"step_{step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp-{name}")
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "dist"))
        os.makedirs(os.path.join(tmp, "rng"))
    dist.barrier()
    with_opt = policy.updates > 0
    dist_checkpointing.save(_sharded_state(policy, False, with_opt), os.path.join(tmp, "dist"))
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    dist.barrier()
    if rank == 0:
        state = dict(trainer_state, step=step, updates=policy.updates, has_optimizer=with_opt,
                     adam_step=_adam_step(policy.optimizer),
                     scheduler=policy.scheduler.state_dict(), world_size=dist.get_world_size())
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(state, f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _init_optimizer_state(optimizer) -> None:
    """megatron's DistributedOptimizer reads the torch optimizer's ``step`` while building the
    state dict it loads into; with the torch AdamW fallback (no TE/apex) that state only exists
    after a first step. Create it (zeros, step 0) so a fresh process can load a checkpoint."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if "step" not in st:
                    st["exp_avg"] = torch.zeros_like(p.data)
                    st["exp_avg_sq"] = torch.zeros_like(p.data)
                    st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)


def _adam_step(optimizer) -> float:
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for st in opt.optimizer.state.values():
            if "step" in st:
                return float(st["step"])
    return 0.0


def _set_adam_step(optimizer, step: float) -> None:
    """megatron 0.16's DistributedOptimizer does not restore the torch-AdamW ``step`` (bias
    correction) from a ``dp_reshardable`` checkpoint; we save it ourselves and put it back."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for st in opt.optimizer.state.values():
            if "step" in st:
                st["step"] = torch.full_like(st["step"], step) if torch.is_tensor(st["step"]) else step


def load_checkpoint(policy, path: str) -> dict:
    """Collective: restores model, optimizer, scheduler and RNG; returns the trainer state."""
    from megatron.core import dist_checkpointing

    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    with_opt = bool(state.get("has_optimizer", True))
    if with_opt:
        _init_optimizer_state(policy.optimizer)
    loaded = dist_checkpointing.load(_sharded_state(policy, True, with_opt), os.path.join(path, "dist"))
    with torch.no_grad():  # fp32 main params are views of the (grad-requiring) model params
        policy.unwrapped().load_state_dict(loaded["model"])
        if with_opt:  # restores the fp32 main params too
            policy.optimizer.load_state_dict(loaded["optimizer"])
            _set_adam_step(policy.optimizer, float(state.get("adam_step", policy.updates)))
        else:
            policy.weights_loaded()
    policy.scheduler.num_steps = 0  # load_state_dict *adds* the saved step count
    policy.scheduler.load_state_dict(state["scheduler"])
    policy.updates = int(state["updates"])
    rng_path = os.path.join(path, "rng", f"rank_{dist.get_rank():05d}.pt")
    if state.get("world_size") == dist.get_world_size() and os.path.exists(rng_path):
        _set_rng_state(torch.load(rng_path, weights_only=False))
    return state
