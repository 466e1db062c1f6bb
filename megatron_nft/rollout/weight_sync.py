"""Pure-torch helpers for streaming trainer weights into a rollout engine.

The trainer exports ``(hf_name, tensor)`` pairs one at a time (gathered from TP/PP shards);
these helpers group them into size-bounded buckets and cast them to the engine's dtype without
ever holding the whole model in memory.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

NamedTensor = tuple[str, torch.Tensor]


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes occupied by ``tensor``'s elements (not its storage)."""
    return tensor.numel() * tensor.element_size()


def bucket_named_tensors(named_iter: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[list[NamedTensor]]:
    """Group a stream of named tensors into consecutive buckets of at most ``bucket_bytes``.

    Order is preserved and every tensor appears exactly once. A tensor larger than
    ``bucket_bytes`` forms a bucket of its own. Only one bucket is held at a time, so peak memory
    is bounded by ``max(bucket_bytes, largest tensor)`` plus whatever the producer keeps alive.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[NamedTensor] = []
    size = 0
    for name, tensor in named_iter:
        nbytes = tensor_nbytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
        if size >= bucket_bytes:  # full (or a lone oversize tensor): flush now
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def cast_named_tensors(
    named_iter: Iterable[NamedTensor],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Iterator[NamedTensor]:
    """Lazily cast floating-point tensors to ``dtype`` and move them to ``device``.

    Integer/bool tensors keep their dtype. ``None`` leaves that attribute unchanged. Tensors are
    made contiguous (engines' loaders often ``copy_`` or view them).
    """
    for name, tensor in named_iter:
        target_dtype = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
        tensor = tensor.to(device=device if device is not None else tensor.device, dtype=target_dtype)
        yield name, tensor.contiguous()


def flatten_buckets(buckets: Iterable[list[NamedTensor]]) -> Iterator[NamedTensor]:
    """Inverse of :func:`bucket_named_tensors`: a flat stream of ``(name, tensor)``."""
    for bucket in buckets:
        yield from bucket


class WeightSync:
    """Trainer -> rollout engine, and the engine's sleep/wake protocol around training.

    The one owner of when a colocated engine holds accelerator memory:

    * :meth:`release` after a rollout: the engine sleeps (vLLM frees its KV cache and offloads
      its weights) while megatron computes pi_old and trains;
    * :meth:`push` after the updates: the new weights stream into the engine -- ``export`` yields
      ``(hf_name, tensor)`` pairs gathered over TP/PP one at a time; they go to ONE
      ``update_weights`` call, consumed lazily, because each vLLM reload walks every module
      (one call per bucket would repeat that walk) -- then the engine wakes fully for the next
      rollout or evaluation.

    ``export`` is a zero-argument callable returning that stream (the trainer passes the
    policy's HF export), so this module needs nothing from megatron.
    """

    def __init__(self, engine, export):
        self.engine = engine
        self.export = export
        self.pushes = 0

    def release(self) -> None:
        self.engine.sleep()

    def push(self) -> None:
        if torch.cuda.is_available():  # torch's cached blocks from training would sit beside vLLM's share
            torch.cuda.empty_cache()
        self.engine.update_weights(self.export())  # wakes only the weights it writes
        self.engine.wake()  # then the KV cache
        self.pushes += 1
