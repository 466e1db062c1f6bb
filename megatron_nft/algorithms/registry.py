"""One object per algorithm: the only place that knows what ``algorithm.name`` means.

Each :class:`Algorithm` owns its per-token loss, how advantages are normalised, the reward
shaping it applies (DAPO's over-long penalty), its default clip-high and its extra metrics.
The policy (``megatron/policy.py``), the rollout sources (``rollout/``) and config validation
(``config.py``) ask the registry; nothing else compares algorithm names. Adding an algorithm
is one new entry in :data:`REGISTRY`.

Importing this module does not import torch (``config.py`` validates names with it and config
errors must stay instant); the loss functions are imported when a loss is computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

from .constants import AGGREGATION_MODES, NFT_WEIGHTINGS  # noqa: F401  (re-exported for config)

__all__ = ["Algorithm", "REGISTRY", "ALGORITHM_NAMES", "ALGORITHMS", "AGGREGATION_MODES", "NFT_WEIGHTINGS",
           "get_algorithm", "token_loss_for"]



@dataclass(frozen=True)
class Algorithm:
    """Base: a PPO-clip surrogate on group advantages (GRPO family).

    ``std_normalize``: advantages divided by the group's std (GRPO, DAPO) or only centred
    (Dr. GRPO). ``default_clip_high``: the upper PPO clip when ``algorithm.clip_high`` is null.
    ``overlong_shaping``: apply ``algorithm.overlong_buffer``/``overlong_penalty`` to rewards.
    """

    name: str
    summary: str
    std_normalize: bool = True
    default_clip_high: float = 0.2
    overlong_shaping: bool = False
    metrics: tuple[str, ...] = ()  # names of the extra metrics of :meth:`metric_counts`

    # ------------------------------------------------------------------ config
    def clip_high(self, cfg: Any) -> float:
        """``algorithm.clip_high`` if set, else this algorithm's default."""
        return cfg.clip_high if cfg.clip_high is not None else self.default_clip_high

    # ------------------------------------------------------------------ rewards
    def shaped_reward(self, cfg: Any, correct: bool, length: int, max_tokens: int) -> float:
        """The reward of one answer: 0/1 correctness plus this algorithm's shaping."""
        r = 1.0 if correct else 0.0
        if not self.overlong_shaping or cfg.overlong_buffer <= 0:
            return r
        start = max_tokens - cfg.overlong_buffer
        if length <= start:
            return r
        return r - min((length - start) / cfg.overlong_buffer, 1.0) * cfg.overlong_penalty

    def advantages(self, rewards: Sequence[float], groups: Sequence[int]) -> list[float]:
        """Group-normalised advantages: ``r - mean_group`` (/ the group's population std)."""
        import torch

        from .groups import group_advantages

        adv = group_advantages(torch.tensor(list(rewards), dtype=torch.float64), torch.tensor(list(groups)),
                               std_normalize=self.std_normalize)
        return adv.tolist()

    # ------------------------------------------------------------------ loss
    def token_loss(self, cfg: Any, logprobs, old_logprobs, correct, r_hat, advantage):
        """``[B, T]`` unmasked per-token loss (``correct``, ``r_hat``, ``advantage``: ``[B]``)."""
        from .losses import grpo_token_loss

        return grpo_token_loss(logprobs, old_logprobs, advantage, clip_low=cfg.clip_low,
                               clip_high=self.clip_high(cfg))

    def metric_counts(self, cfg: Any, logprobs, old_logprobs, correct, r_hat, mask) -> dict:
        """Extra metrics as ``{name: (numerator, denominator)}`` token counts (summed over
        micro-batches and ranks before dividing), one per name in :attr:`metrics`."""
        return {}


@dataclass(frozen=True)
class NFT(Algorithm):
    """Negative-aware Fine-Tuning: likelihood on correct answers, the implicit negative policy
    on wrong ones, prompt weight omega(q) (``algorithm.weighting``)."""

    metrics: tuple[str, ...] = ("train/neg_clip_frac",)

    def token_loss(self, cfg, logprobs, old_logprobs, correct, r_hat, advantage):
        from .losses import nft_token_loss

        return nft_token_loss(logprobs, old_logprobs, correct, r_hat, epsilon=cfg.epsilon,
                              weighting=cfg.weighting, log_ratio_clamp=cfg.log_ratio_clamp)

    def metric_counts(self, cfg, logprobs, old_logprobs, correct, r_hat, mask):
        """``train/neg_clip_frac``: wrong-answer tokens in the clipped region x < epsilon."""
        from .losses import nft_clip_fraction

        neg = mask * (correct == 0).to(mask.dtype)[:, None]
        n_neg = neg.sum()
        frac = nft_clip_fraction(logprobs, old_logprobs, correct, r_hat, neg, epsilon=cfg.epsilon,
                                 log_ratio_clamp=cfg.log_ratio_clamp)
        return {"train/neg_clip_frac": (frac * n_neg, n_neg)}


@dataclass(frozen=True)
class RFT(Algorithm):
    """Rejection-sampling fine-tuning: likelihood on correct answers only."""

    def token_loss(self, cfg, logprobs, old_logprobs, correct, r_hat, advantage):
        from .losses import rft_token_loss

        return rft_token_loss(logprobs, correct)


REGISTRY: dict[str, Algorithm] = {a.name: a for a in (
    NFT("nft", "NFT (PAPER.md): positive likelihood + implicit negative policy on wrong answers"),
    RFT("rft", "rejection-sampling fine-tuning on correct answers"),
    Algorithm("grpo", "GRPO: PPO-clip, std-normalised group advantages", std_normalize=True),
    Algorithm("drgrpo", "Dr. GRPO: PPO-clip, mean-centred group advantages", std_normalize=False),
    Algorithm("dapo", "DAPO: GRPO + clip-higher 0.28 + over-long reward shaping", std_normalize=True,
              default_clip_high=0.28, overlong_shaping=True),
)}

ALGORITHM_NAMES = tuple(REGISTRY)
ALGORITHMS = ALGORITHM_NAMES


def get_algorithm(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"algorithm.name: unknown {name!r}; allowed: {', '.join(ALGORITHM_NAMES)}") from None


# --------------------------------------------------------------------------- dispatcher


def token_loss_for(
    algorithm: str,
    *,
    logprobs,
    old_logprobs,
    rewards,
    group_ids,
    epsilon: float = 1.0,
    weighting: str = "1-r",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    log_ratio_clamp: float = 10.0,
):
    """Per-token ``[B, T]`` loss of ``algorithm`` (a :mod:`~.registry` name) from raw rewards
    and group ids: ``correct = rewards > 0``, r̂ = group mean of ``correct``, advantages from
    the rewards as the algorithm normalises them (std for GRPO/DAPO, centred for Dr. GRPO);
    then the registry entry's token loss. ``clip_high`` is used as given; an unknown name
    raises ``ValueError`` naming the allowed ones.
    """
    from .groups import group_advantages, group_correct_rate

    algo = get_algorithm(algorithm)
    correct = rewards > 0
    r_hat = group_correct_rate(correct.to(logprobs.dtype), group_ids)
    adv = group_advantages(rewards.to(logprobs.dtype), group_ids, std_normalize=algo.std_normalize)
    cfg = SimpleNamespace(epsilon=epsilon, weighting=weighting, clip_low=clip_low, clip_high=clip_high,
                          log_ratio_clamp=log_ratio_clamp)
    return algo.token_loss(cfg, logprobs, old_logprobs, correct, r_hat, adv)
