"""The training reward chosen by ``rollout.reward``.

* ``strict_box`` (cluster default, the NFT reference's choice): verl's ``math_dapo`` strict box as
  the reference grades its ``math_dapo_boxed`` training data -- the content of the LAST
  ``\\boxed{`` in the response's last 100 characters must equal the gold string exactly
  (:func:`megatron_nft.rewards.dapo_strict.strict_box_score`). No last-number fallback: a
  response that never boxes its answer earns 0.
* ``math_verifier`` (tiny demo default): the lenient :class:`MathVerifier` (``mode="math"``:
  math-verify-style extraction + equivalence; falls back to the last number of the text, which
  suits the tiny model's bare-number answers).

:class:`TrainingReward` wraps the run's ``MathVerifier``: ``verify_batch(texts, golds)`` without
a ``mode`` is the training reward; with an explicit ``mode`` (the evaluation registry's grader
asks for ``"strict_box"`` / ``"math"``) it is the verifier's, so validation grading does not
change with the training reward.
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["REWARD_MODES", "TrainingReward", "strict_box_reward"]

REWARD_MODES = ("math_verifier", "strict_box")


def strict_box_reward(response: str, gold: str) -> bool:
    """The reference's strict-box training reward for one response."""
    from megatron_nft.rewards.dapo_strict import strict_box_score

    return strict_box_score(response if isinstance(response, str) else "", str(gold))[0]


class TrainingReward:
    """``rollout.reward`` over a ``MathVerifier`` (which also serves evaluation grading)."""

    def __init__(self, verifier, mode: str = "math_verifier"):
        if mode not in REWARD_MODES:
            raise ValueError(f"rollout.reward: got {mode!r}; allowed: {', '.join(REWARD_MODES)}")
        self.verifier, self.mode = verifier, mode

    def verify_batch(self, responses: Sequence[str], golds: Sequence[str], mode: Optional[str] = None) -> list[bool]:
        if mode is not None or self.mode == "math_verifier":
            return self.verifier.verify_batch(responses, golds, mode=mode)
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        return [strict_box_reward(r, g) for r, g in zip(responses, golds)]

    def close(self) -> None:
        self.verifier.close()

    def __getattr__(self, name):  # stats, timeouts, ... of the wrapped verifier
        return getattr(self.verifier, name)
