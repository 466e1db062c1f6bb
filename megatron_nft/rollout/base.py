"""The rollout-engine interface shared by the vLLM and HF ``generate`` back ends.

A rollout engine turns prompts (token ids) into sampled completions together with the
per-token log-probabilities the trainer needs as ``π_old``-side reference values, and accepts
new policy weights (HF parameter names) after every optimizer phase.

Log-probability convention (all engines): ``Completion.logprobs[t]`` is
``log softmax(raw_logits_t)[token_ids[t]]`` where ``raw_logits_t`` are the model's logits at
step ``t`` *before* any sampling transform — i.e. under the RAW model distribution
(temperature 1, no top-p / top-k), whatever temperature/top-p were used to *sample* the token.
This is the quantity an NFT/GRPO trainer recomputes with its own forward pass, so the two can be
compared directly (the difference measures engine/trainer numerical mismatch only).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class SamplingConfig:
    """How to sample completions.

    ``temperature == 0`` means greedy decoding (``top_p`` is then ignored). ``seed`` makes one
    ``generate`` call reproducible; ``None`` lets the engine derive a seed from its own base
    seed and a call counter (reproducible run to run, different call to call).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax."""
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled answer.

    ``token_ids``: generated tokens only (no prompt, no padding). If generation ended on an
    end-of-sequence token, that token is INCLUDED as the last entry (with its log-prob) so the
    trainer learns to stop, and ``finish_reason == "stop"``; otherwise the answer was cut at
    ``max_tokens`` and ``finish_reason == "length"``.
    ``logprobs``: one float per entry of ``token_ids``: log π(token) under the RAW model
    distribution (temperature 1, no top-p), see the module docstring.
    ``text``: detokenised ``token_ids`` (special tokens skipped); ``""`` without a tokenizer.
    """

    token_ids: list[int]
    logprobs: list[float]
    text: str = ""
    finish_reason: str = "length"

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Completion has {len(self.token_ids)} tokens but {len(self.logprobs)} log-probs"
            )
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"finish_reason must be 'stop' or 'length', got {self.finish_reason!r}")


class RolloutEngine(ABC):
    """Generates completions and receives weight updates. One instance per (TP group of) rank(s)."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions for every prompt.

        Returns a list with one entry per prompt (same order), each a list of ``n`` completions.
        """

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights, given as ``(hf_parameter_name, tensor)`` pairs (streamed; any order)."""

    def sleep(self) -> None:
        """Release accelerator memory (weights/KV cache) while the trainer runs. No-op by default."""

    def wake(self) -> None:
        """Undo :meth:`sleep`. No-op by default."""

    def close(self) -> None:
        """Free all resources. The engine must not be used afterwards."""

    def __enter__(self) -> "RolloutEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["SamplingConfig", "Completion", "RolloutEngine"]
