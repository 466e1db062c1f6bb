"""torch.distributed + megatron-core model-parallel initialisation (CPU/gloo or GPU/nccl).

``init_distributed(tp, pp, seed)`` works in three situations with the same code:

* under ``torchrun`` / ``srun … torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set);
* as a plain ``python`` process: a world of one is created (MASTER_ADDR/PORT defaulted);
* when ``torch.distributed`` is already initialised by the caller (tests, other launchers).

On CPU it activates :mod:`megatron_nft.megatron.cpu_shim` first and uses gloo.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_nft.megatron import cpu_shim


@dataclass(frozen=True)
class ParallelInfo:
    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device
    backend: str

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


_OWNS_PROCESS_GROUP = False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    seed: int = 1234,
    *,
    backend: str | None = None,
    timeout_minutes: int = 30,
) -> ParallelInfo:
    """Initialise torch.distributed and megatron's TP/PP/DP groups; seed all RNG streams.

    ``tp``/``pp`` are ``parallel.tp``/``parallel.pp`` of the recipe. The data-parallel size is
    ``world_size // (tp * pp)``. Calling it again with the same sizes is a no-op.
    """
    global _OWNS_PROCESS_GROUP
    from megatron.core import parallel_state, tensor_parallel

    tp, pp = int(tp), int(pp)
    if tp < 1 or pp < 1:
        raise ValueError(f"parallel.tp ({tp}) and parallel.pp ({pp}) must be >= 1")
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        cpu_shim.activate()
    backend = backend or ("nccl" if use_cuda else "gloo")

    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        rendezvous = {"init_method": "env://"}
        if "MASTER_PORT" not in os.environ:
            if _env_int("WORLD_SIZE", 1) != 1:
                raise RuntimeError(
                    "WORLD_SIZE > 1 but MASTER_PORT is not set: launch with torchrun "
                    "(or export MASTER_ADDR/MASTER_PORT)"
                )
            # A world of one set up here: an in-process store, so there is no TCP port to race
            # for (a port picked free can be taken before the store binds it: seen as
            # EADDRINUSE on a busy machine). MASTER_PORT is still exported for libraries that
            # read it; nothing listens on it.
            os.environ["MASTER_PORT"] = str(_free_port())
            rendezvous = {"store": dist.HashStore(), "rank": 0, "world_size": 1}
        local_rank = _env_int("LOCAL_RANK", 0)
        if use_cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **rendezvous,
        )
        _OWNS_PROCESS_GROUP = True

    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ValueError(
            f"world size {world} is not divisible by parallel.tp * parallel.pp = {tp} * {pp} = "
            f"{tp * pp}; choose parallel.tp/parallel.pp so that tp*pp divides the number of "
            "processes (GPUs)"
        )

    if parallel_state.model_parallel_is_initialized():
        cur_tp = parallel_state.get_tensor_model_parallel_world_size()
        cur_pp = parallel_state.get_pipeline_model_parallel_world_size()
        if (cur_tp, cur_pp) != (tp, pp):
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            distributed_timeout_minutes=timeout_minutes,
        )

    # Seeds: CPU/default generators identical on all ranks of a model replica; megatron's
    # tracker streams (model-parallel rng differs per TP rank) via its own seeding function,
    # which the CPU shim makes work with CPU generator states.
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)

    return get_info()


def get_info() -> ParallelInfo:
    """Ranks and sizes of this process (requires :func:`init_distributed`)."""
    from megatron.core import parallel_state as ps

    use_cuda = torch.cuda.is_available() and not cpu_shim.is_active()
    return ParallelInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", 0),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"),
        backend=dist.get_backend(),
    )


def destroy() -> None:
    """Tear down megatron's groups and the process group created by :func:`init_distributed`."""
    global _OWNS_PROCESS_GROUP
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized() and _OWNS_PROCESS_GROUP:
        dist.destroy_process_group()
        _OWNS_PROCESS_GROUP = False
