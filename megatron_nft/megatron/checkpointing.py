"""Training checkpoints: model + optimizer (megatron dist_checkpointing), scheduler, trainer
state (step, data position) and every rank's RNG state.

Atomicity (``checkpoint.common.atomic_dir``): all ranks write into ``checkpoints/.step_XXXXXXXX.partial``;
after a barrier rank 0 renames it to ``checkpoints/step_XXXXXXXX``. A crash mid-write leaves only a ``.partial`` folder,
which :func:`latest_checkpoint` never picks (and the next save clears). Resume = re-run the
same command with the same ``output.dir``.

``step_N/dist`` is also a complete model checkpoint (hf_config.json, tokenizer/, nft_checkpoint.json
beside the weights; the optimizer entry is ignored when reading the model), and
``checkpoints/latest`` names the newest step (written atomically after it): ``nft-convert
mcore-to-hf --mcore`` and ``nft-eval --model`` take the run directory or a step directory
(``checkpoint.dist.resolve_checkpoint_dir``).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
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


def save_checkpoint(policy, output_dir: str, step: int, trainer_state: dict, keep: int = 2,
                    model_dir: Optional[str] = None) -> str:
    """Collective: every rank calls it. Returns the final checkpoint path. ``step_N/dist`` also
    gets hf_config.json, tokenizer/ and nft_checkpoint.json (from ``model_dir``, the run's HF
    directory or converted checkpoint), so ``nft-convert mcore-to-hf`` and ``nft-eval`` read it
    like a converted checkpoint; then ``checkpoints/latest`` names the new step."""
    from megatron.core import dist_checkpointing

    from megatron_nft.checkpoint.common import atomic_dir

    rank = dist.get_rank()
    final = os.path.join(checkpoint_root(output_dir), f"step_{step:08d}")
    with_opt = policy.updates > 0
    with atomic_dir(final) as tmp:
        if rank == 0:
            os.makedirs(os.path.join(tmp, "dist"))
            os.makedirs(os.path.join(tmp, "rng"))
        dist.barrier()
        dist_checkpointing.save(_sharded_state(policy, False, with_opt), os.path.join(tmp, "dist"))
        torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
        dist.barrier()
        if rank == 0:
            from megatron_nft.checkpoint.dist import write_checkpoint_info

            write_checkpoint_info([policy.unwrapped()], Path(tmp) / "dist", model_dir, None,
                                  {"kind": "training", "step": step})
        if rank == 0:  # written last: a step directory without it is never taken (list_checkpoints)
            state = dict(trainer_state, step=step, updates=policy.updates, has_optimizer=with_opt,
                         adam_step=_adam_step(policy.optimizer), megatron_core=megatron_core_version(),
                         scheduler=policy.scheduler.state_dict(), world_size=dist.get_world_size())
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump(state, f, indent=1)
    if rank == 0:
        _write_latest(output_dir, final)
        for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _write_latest(output_dir: str, step_dir: str) -> None:
    """``checkpoints/latest`` <- the step directory's name, atomically (after the directory)."""
    from megatron_nft.checkpoint.dist import LATEST_FILE

    path = os.path.join(checkpoint_root(output_dir), LATEST_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(os.path.basename(step_dir) + "\n")
    os.replace(path + ".tmp", path)


def _torch_adams(optimizer) -> list:
    """The inner optimizers that are torch's own Adam/AdamW (megatron's fallback without TE/apex).
    Only those keep a per-parameter ``step``; TE's FusedAdam keeps it in ``param_groups`` and its
    ``state_dict()`` refuses any per-parameter key but exp_avg / exp_avg_sq / master_param."""
    inner = (getattr(opt, "optimizer", None) for opt in getattr(optimizer, "chained_optimizers", [optimizer]))
    return [o for o in inner if isinstance(o, (torch.optim.Adam, torch.optim.AdamW))]


def _init_optimizer_state(optimizer) -> None:
    """megatron's DistributedOptimizer reads the torch optimizer's ``step`` while building the
    state dict it loads into; with the torch AdamW fallback (no TE/apex) that state only exists
    after a first step. Create it (zeros, step 0) so a fresh process can load a checkpoint.
    Other optimizers (TE / apex FusedAdam) are left alone: megatron restores their state."""
    for inner in _torch_adams(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if "step" not in st:
                    st["exp_avg"] = torch.zeros_like(p.data)
                    st["exp_avg_sq"] = torch.zeros_like(p.data)
                    st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)


def _adam_step(optimizer) -> float:
    for inner in _torch_adams(optimizer):
        for st in inner.state.values():
            if "step" in st:
                return float(st["step"])
    return 0.0


def _set_adam_step(optimizer, step: float) -> None:
    """megatron 0.16's DistributedOptimizer does not restore the torch-AdamW ``step`` (bias
    correction) from a ``dp_reshardable`` checkpoint; we save it ourselves and put it back."""
    for inner in _torch_adams(optimizer):
        for st in inner.state.values():
            if "step" in st:
                st["step"] = torch.full_like(st["step"], step) if torch.is_tensor(st["step"]) else step


def megatron_core_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        import megatron.core

        return str(getattr(megatron.core, "__version__", None) or version("megatron-core"))
    except (ImportError, PackageNotFoundError):
        return "unknown"


def _version_key(v: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(v.split("+", 1)[0])
    except InvalidVersion:
        return None


class CheckpointVersionError(RuntimeError):
    """A checkpoint written by a newer megatron-core than the installed one cannot be read."""


def _written_by_newer(written_by: Optional[str]) -> bool:
    new, old = _version_key(written_by or ""), _version_key(megatron_core_version())
    return new is not None and old is not None and new > old


def _check_readable(path: str, written_by: Optional[str]) -> None:
    """Fail before loading when the installed megatron-core is older than the writer and the
    format changed (megatron-core >= 0.17 writes dist checkpoints without ``common.pt``, which
    0.16 requires); the message names both versions and the fix."""
    if not _written_by_newer(written_by):
        return
    here = megatron_core_version()
    if _version_key(here).release[:2] < (0, 17) and not os.path.exists(os.path.join(path, "dist", "common.pt")):
        raise CheckpointVersionError(_version_message(path, written_by, here, "it has no dist/common.pt"))


def _version_message(path: str, written_by: str, here: str, why: str) -> str:
    return (f"checkpoint {path} was written by megatron-core {written_by}, but the installed megatron-core "
            f"{here} cannot read it ({why}): install megatron-core=={written_by} (requirements-gpu.txt pins "
            f"the GPU version), or resume where it was written")


def load_checkpoint(policy, path: str) -> dict:
    """Collective: restores model, optimizer, scheduler and RNG; returns the trainer state."""
    from megatron.core import dist_checkpointing

    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    with_opt = bool(state.get("has_optimizer", True))
    written_by = state.get("megatron_core")
    _check_readable(path, written_by)
    if with_opt:
        _init_optimizer_state(policy.optimizer)
    try:
        loaded = dist_checkpointing.load(_sharded_state(policy, True, with_opt), os.path.join(path, "dist"))
    except Exception as e:
        if _written_by_newer(written_by):
            raise CheckpointVersionError(_version_message(path, written_by, megatron_core_version(),
                                                          f"{type(e).__name__}: {e}")) from e
        raise
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
