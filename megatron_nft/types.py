"""The records that flow through one training step, shared by every package.

``PromptItem`` comes out of ``data/`` (a tokenised prompt and its gold answer); ``Sample`` is one
graded answer to one prompt, created by a rollout source (``rollout/``: online generation or an
offline answers file, or the tiny warm start) and consumed by the policy (``megatron/``). The
types depend on nothing else in the package, so no package has to import "upwards" to use them.

Naming (one name per quantity, as in ``../shared/PAPER.md``):

* ``correct``: the verifier's 0/1 verdict (a truncated answer counts as wrong);
* ``reward``: the scalar reward the advantage is computed from -- ``float(correct)`` plus any
  shaping the algorithm applies (DAPO's over-long penalty);
* ``r_hat``: the correct rate r-hat of the sample's group (NFT's ``r̂_q``);
* ``advantage``: the group-normalised advantage (GRPO family).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PromptItem:
    """One prompt ready for rollout: ``prompt_ids`` are the tokens of ``prompt_text``."""

    uid: str
    prompt_text: str
    prompt_ids: list[int]
    answer: str
    data_source: str


@dataclass
class Sample:
    """One (prompt, response) pair with everything the loss needs."""

    tokens: list[int]  # prompt + response ids
    prompt_len: int
    correct: bool = False
    reward: float = 0.0
    r_hat: float = 0.0
    advantage: float = 0.0
    group: int = 0
    uid: Optional[str] = None  # the prompt's id
    truncated: bool = False  # cut at the response-length limit
    old_logprobs: Optional[list[float]] = None  # per response token, from the trainer (pi_old)
    rollout_logprobs: Optional[list[float]] = None  # per response token, from the rollout engine
    entropy: Optional[list[float]] = None  # per response token, from the old-logprob pass

    @property
    def response_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    def __post_init__(self) -> None:
        if not 1 <= self.prompt_len <= len(self.tokens):
            raise ValueError(f"prompt_len {self.prompt_len} outside 1..{len(self.tokens)}")
