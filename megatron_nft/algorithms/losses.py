"""Per-token policy losses (NFT, RFT, GRPO / Dr. GRPO / DAPO) and their aggregation.

Pure torch; formulas and symbols follow ``../shared/PAPER.md``. Every
``*_token_loss`` returns an *unmasked, unaggregated* ``[B, T]`` tensor; masking
and normalisation are done by :func:`aggregate`, so the same token aggregation
can be applied to every algorithm (the paper's on-policy equivalence needs
that).

Tensors that are constants of the objective (``old_logprobs``, r̂, advantages)
are detached inside the losses: gradients only flow through ``logprobs``.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor


__all__ = [
    "CORRECT_RATE_MIN",
    "CORRECT_RATE_MAX",
    "GRPO_LOG_RATIO_BOUND",
    "NFT_WEIGHTINGS",
    "AGGREGATION_MODES",
    "max_v",
    "nft_token_loss",
    "nft_clip_fraction",
    "grpo_token_loss",
    "rft_token_loss",
    "tis_weights",
    "aggregate",
    "aggregation_weights",
]

#: r̂ is clamped into [CORRECT_RATE_MIN, CORRECT_RATE_MAX] before use in the NFT
#: loss and in ω(q), as the reference code does: a guard against division by
#: zero in (1 − r̂) and √(·/r̂). Groups with r̂ ∈ {0, 1} should be filtered out
#: beforehand (:func:`~megatron_nft.algorithms.groups.filter_informative_groups`).
CORRECT_RATE_MIN = 0.02
CORRECT_RATE_MAX = 0.98

#: The PPO-clip log-ratio is clamped to ±this bound before ``exp`` only to keep
#: the ratio finite (e^20 ≈ 5e8); it never binds for sane ratios.
GRPO_LOG_RATIO_BOUND = 20.0

from .constants import AGGREGATION_MODES, NFT_WEIGHTINGS  # noqa: E402  (torch-free, shared with config)

Number = Union[int, float]


# --------------------------------------------------------------------------- helpers


def max_v(x: Tensor, eps: float) -> Tensor:
    """Value ``max(x, eps)`` with the gradient of ``x`` (PAPER.md: ``x + stopgrad(max(x, ε) − x)``).

    Written as ``stopgrad(max(x, ε)) + (x − stopgrad(x))``: same value and
    gradient, but the value is exactly ``max(x, ε)`` (the literal form loses
    precision when ``x ≪ −ε``, e.g. large ratios with a small ε).
    """
    return torch.clamp(x, min=eps).detach() + (x - x.detach())


def _check_token_inputs(logprobs: Tensor, old_logprobs: Tensor) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T]; got shape {tuple(logprobs.shape)}")
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"old_logprobs shape {tuple(old_logprobs.shape)} != logprobs shape "
            f"{tuple(logprobs.shape)}"
        )


def _per_sample(t: Tensor, name: str, ref: Tensor) -> Tensor:
    """Validate a ``[B]`` per-sample tensor and return it as ``[B, 1]`` in ``ref``'s dtype."""
    t = torch.as_tensor(t, device=ref.device)
    if t.dim() != 1 or t.shape[0] != ref.shape[0]:
        raise ValueError(f"{name} must be [B] with B={ref.shape[0]}; got shape {tuple(t.shape)}")
    return t.detach().to(ref.dtype).unsqueeze(-1)


def _correct_mask(correct: Tensor, ref: Tensor) -> Tensor:
    """0/1 correctness (bool, int or float) as a ``[B, 1]`` bool tensor."""
    c = torch.as_tensor(correct, device=ref.device)
    if c.dim() != 1 or c.shape[0] != ref.shape[0]:
        raise ValueError(f"correct must be [B] with B={ref.shape[0]}; got shape {tuple(c.shape)}")
    return (c != 0).unsqueeze(-1)


def _check_nft_args(epsilon: float, weighting: str) -> None:
    if weighting not in NFT_WEIGHTINGS:
        raise ValueError(f"unknown NFT weighting {weighting!r}; allowed: {', '.join(NFT_WEIGHTINGS)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (max_v floor of the negative term); got {epsilon}")


def _clamped_log_ratio(logprobs: Tensor, old_logprobs: Tensor, log_ratio_clamp: float) -> Tensor:
    """``min(log π − log π_old, clamp)``; gradient is zero where the clamp binds."""
    return torch.clamp(logprobs - old_logprobs.detach(), max=log_ratio_clamp)


def _nft_x(log_ratio: Tensor, r_hat: Tensor) -> Tensor:
    """The implicit-negative ratio x = (1 − r̂·R) / (1 − r̂)."""
    return (1.0 - r_hat * torch.exp(log_ratio)) / (1.0 - r_hat)


# --------------------------------------------------------------------------- NFT


def nft_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    correct: Tensor,
    correct_rate: Tensor,
    *,
    epsilon: float = 1.0,
    weighting: str = "1-r",
    log_ratio_clamp: float = 10.0,
) -> Tensor:
    """Per-token NFT loss ω(q)·ℓ_t (PAPER.md, "Loss (token level)").

    With ``R = exp(min(log π_θ − log π_old, log_ratio_clamp))``:

    * correct answer: ``ℓ = −log R``  (no clipping on the positive side),
    * wrong answer:   ``ℓ = −log max_v((1 − r̂R)/(1 − r̂), ε)`` where ``max_v``
      has value ``max(x, ε)`` but the gradient of ``x``,
    * ``ω = 1 − r̂`` ("1-r"), ``√((1 − r̂)/r̂)`` ("grpo") or ``1`` ("none").

    r̂ is clamped into ``[CORRECT_RATE_MIN, CORRECT_RATE_MAX]`` (= [0.02, 0.98],
    like the reference code) for both ℓ and ω. Past the log-ratio clamp R is
    constant, so the gradient there is zero.

    Args:
        logprobs: ``[B, T]`` log π_θ of the sampled tokens (carries the gradient).
        old_logprobs: ``[B, T]`` log π_old (treated as constant).
        correct: ``[B]`` 0/1 correctness (bool, int or float).
        correct_rate: ``[B]`` r̂ of each sample's group.
        epsilon: ε > 0, floor of the negative term's ratio.
        weighting: one of ``NFT_WEIGHTINGS``.
        log_ratio_clamp: upper clamp on the log-ratio before ``exp``.

    Returns:
        ``[B, T]`` per-token loss, unmasked and unaggregated, ω already applied.
    """
    _check_nft_args(epsilon, weighting)
    _check_token_inputs(logprobs, old_logprobs)
    is_correct = _correct_mask(correct, logprobs)
    r_hat = _per_sample(correct_rate, "correct_rate", logprobs).clamp(CORRECT_RATE_MIN, CORRECT_RATE_MAX)

    log_ratio = _clamped_log_ratio(logprobs, old_logprobs, log_ratio_clamp)
    positive = -log_ratio  # −log R
    negative = -torch.log(max_v(_nft_x(log_ratio, r_hat), epsilon))
    loss = torch.where(is_correct, positive, negative)

    if weighting == "1-r":
        loss = loss * (1.0 - r_hat)
    elif weighting == "grpo":
        loss = loss * torch.sqrt((1.0 - r_hat) / r_hat)
    return loss


@torch.no_grad()
def nft_clip_fraction(
    logprobs: Tensor,
    old_logprobs: Tensor,
    correct: Tensor,
    correct_rate: Tensor,
    mask: Tensor,
    epsilon: float = 1.0,
    log_ratio_clamp: float = 10.0,
) -> Tensor:
    """Fraction of valid *wrong-answer* tokens in the clipped region ``x < ε``.

    ``x = (1 − r̂R)/(1 − r̂)`` as in :func:`nft_token_loss` (same r̂ and
    log-ratio clamps). Returns a detached 0-dim tensor; 0 when the batch has no
    valid negative token. Meant for metrics only.
    """
    _check_nft_args(epsilon, "none")
    _check_token_inputs(logprobs, old_logprobs)
    is_correct = _correct_mask(correct, logprobs)
    r_hat = _per_sample(correct_rate, "correct_rate", logprobs).clamp(CORRECT_RATE_MIN, CORRECT_RATE_MAX)
    x = _nft_x(_clamped_log_ratio(logprobs, old_logprobs, log_ratio_clamp), r_hat)
    negative = (mask != 0) & ~is_correct
    clipped = (negative & (x < epsilon)).sum().to(logprobs.dtype)
    return clipped / negative.sum().clamp(min=1).to(logprobs.dtype)


# --------------------------------------------------------------------------- baselines


def grpo_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> Tensor:
    """PPO-clip surrogate per token: ``−min(R·A, clip(R, 1 − clip_low, 1 + clip_high)·A)``.

    ``R = exp(log π_θ − log π_old)``; ``advantages`` ``[B]`` are broadcast over
    T. GRPO / Dr. GRPO use ``clip_high = clip_low = 0.2``; DAPO's clip-higher
    uses ``clip_high = 0.28``. The log-ratio is bounded by
    ``±GRPO_LOG_RATIO_BOUND`` only to keep R finite.

    Returns:
        ``[B, T]`` per-token loss, unmasked and unaggregated.
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0; got {clip_low}, {clip_high}")
    _check_token_inputs(logprobs, old_logprobs)
    adv = _per_sample(advantages, "advantages", logprobs)
    log_ratio = torch.clamp(logprobs - old_logprobs.detach(), -GRPO_LOG_RATIO_BOUND, GRPO_LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped)


def rft_token_loss(logprobs: Tensor, correct: Tensor) -> Tensor:
    """Rejection-sampling fine-tuning: ``−log π_θ`` on correct answers, 0 on wrong ones.

    Returns:
        ``[B, T]`` per-token loss, unmasked and unaggregated (ω = 1).
    """
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T]; got shape {tuple(logprobs.shape)}")
    is_correct = _correct_mask(correct, logprobs)
    return torch.where(is_correct, -logprobs, torch.zeros_like(logprobs))


def tis_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights ``min(exp(log π_old − log π_rollout), cap)``, detached.

    Corrects for the mismatch between the inference engine that sampled the
    rollout and the trainer's π_old; multiply the per-token loss by it.
    """
    if not cap > 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    if old_logprobs.shape != rollout_logprobs.shape:
        raise ValueError(
            f"old_logprobs shape {tuple(old_logprobs.shape)} != rollout_logprobs shape "
            f"{tuple(rollout_logprobs.shape)}"
        )
    diff = (old_logprobs - rollout_logprobs).detach()
    return torch.exp(torch.clamp(diff, max=math.log(cap)))


# --------------------------------------------------------------------------- aggregation


def _positive_count(value: Union[Number, Tensor, None], default: Tensor, name: str) -> Tensor:
    """Denominator: ``value`` if given (must be > 0 when a Python number), else ``max(default, 1)``."""
    if value is None:
        return default.clamp(min=1)
    if isinstance(value, Tensor):
        return value
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return torch.as_tensor(value, dtype=default.dtype, device=default.device)


def aggregate(
    token_loss: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_tokens: Union[Number, Tensor, None] = None,
    num_seqs: Union[Number, Tensor, None] = None,
    constant: float = 1000.0,
    dp_size: int = 1,
) -> Tensor:
    """Reduce a ``[B, T]`` token loss to a scalar over the valid tokens of ``mask``.

    Modes (PAPER.md, "total"):

    * ``"token-mean"``: ``Σ loss·mask / num_tokens``. ``num_tokens`` defaults to
      ``mask.sum()``; pass the *global* token count of the (mini-)batch across
      micro-batches and data-parallel ranks so that the partial sums add up to
      exactly the full-batch token mean.
    * ``"seq-mean-token-mean"``: mean over sequences of each sequence's token
      mean, i.e. ``Σ_seq (Σ_t loss·mask / Σ_t mask) / num_seqs``. ``num_seqs``
      defaults to the number of sequences with at least one valid token; pass
      the global number of sequences for the same additivity.
    * ``"token-sum-norm"``: ``Σ loss·mask / constant`` (reference code: 1000).
    * ``"token-sum-dp-mean"``: ``Σ loss·mask / (constant · dp_size)`` -- the NFT reference's
      scale (NVlabs/NFT ``dp_actor.py``: each GPU sums its sequences' token losses / 1000 per
      micro-batch, gradients accumulate over micro-batches and FSDP averages them over the
      ``dp_size`` data-parallel ranks). Versus token-mean the gradient is ``num_tokens /
      (constant · dp_size)`` times larger (7B reference step: 32 prompts x 16 answers x ~1k tokens
      / (1000 x 32 GPUs) ~ 16x), so it grows with response length and batch and shrinks with DP:
      Adam's update is scale-free, but the ``grad_clip`` threshold (1.0) clips a different set of
      steps, and weight decay / Adam eps weigh differently -- the regime the paper trained in.

    Masked positions are excluded with ``torch.where`` so garbage (inf/NaN) in
    padding cannot leak into the value. Default denominators are clamped to
    at least 1 so an empty mask yields 0.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; allowed: {', '.join(AGGREGATION_MODES)}")
    if token_loss.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != token_loss shape {tuple(token_loss.shape)}")
    valid = mask != 0
    masked = torch.where(valid, token_loss, torch.zeros_like(token_loss))

    if mode == "token-mean":
        denom = _positive_count(num_tokens, valid.sum().to(token_loss.dtype), "num_tokens")
        return masked.sum() / denom
    if mode == "seq-mean-token-mean":
        tokens_per_seq = valid.sum(dim=-1).to(token_loss.dtype)
        seq_means = masked.sum(dim=-1) / tokens_per_seq.clamp(min=1)
        denom = _positive_count(num_seqs, (tokens_per_seq > 0).sum().to(token_loss.dtype), "num_seqs")
        return seq_means.sum() / denom
    if not constant > 0:
        raise ValueError(f"constant must be > 0; got {constant}")
    return masked.sum() / (constant * (dp_size if mode == "token-sum-dp-mean" else 1))


def aggregation_weights(mode: str, response_lens: Sequence[int], *, num_tokens: int, num_seqs: int,
                        constant: float = 1000.0, dp_size: int = 1) -> list[float]:
    """Per-sample token weights ``w`` such that ``Σ_samples Σ_t w·loss_t / num_tokens`` equals
    :func:`aggregate` of ``mode`` over the whole batch.

    The policy computes its loss as a weighted token sum per micro-batch and megatron divides
    by the global token count (``calculate_per_token_loss``), so weights chosen from global
    counts (``num_tokens``, ``num_seqs`` over every micro-batch and data-parallel rank) make the
    aggregate exact however the batch is split:

    * ``token-mean``: ``w = 1``;
    * ``seq-mean-token-mean``: ``w = num_tokens / (num_seqs · len_i)``;
    * ``token-sum-norm``: ``w = num_tokens / constant``;
    * ``token-sum-dp-mean``: ``w = num_tokens / (constant · dp_size)``, so that
      ``Σ w·loss / num_tokens = Σ loss / (constant · dp_size)`` (the reference's scale).
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; allowed: {', '.join(AGGREGATION_MODES)}")
    if mode == "token-mean":
        return [1.0] * len(response_lens)
    if mode == "seq-mean-token-mean":
        return [num_tokens / (num_seqs * max(n, 1)) for n in response_lens]
    if not constant > 0:
        raise ValueError(f"constant must be > 0; got {constant}")
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1; got {dp_size}")
    return [num_tokens / (constant * (dp_size if mode == "token-sum-dp-mean" else 1))] * len(response_lens)
