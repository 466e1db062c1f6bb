"""Per-group (per-question) statistics for group-based RL objectives.

Every question q is answered K times by the rollout policy; the K answers form a
*group*. This module computes, for each sample, statistics of the group it
belongs to (see ``../shared/PAPER.md``, "Setting" and "Baselines"):

* ``group_correct_rate``      : r̂_q, the fraction of correct answers of q,
* ``group_advantages``        : Dr. GRPO advantages ``r − mean_q(r)`` or GRPO
                                advantages ``(r − mean_q(r)) / std_q(r)``,
* ``filter_informative_groups``: the dynamic-sampling keep-mask (only
                                questions with 0 < r̂_q < 1 carry signal).

``group_ids`` may be arbitrary integers (not contiguous, not sorted); groups are
resolved with ``torch.unique`` and reduced with ``scatter_add``, so everything
is vectorised and works on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "STD_EPS",
    "group_mean",
    "group_correct_rate",
    "group_advantages",
    "filter_informative_groups",
]

#: A group whose population std is <= STD_EPS is treated as constant: its
#: advantages are exactly 0 and no division happens. Groups above the
#: threshold are divided by their exact std (no eps added), so GRPO advantages
#: match the textbook formula ``(r − r̂) / sqrt(r̂(1 − r̂))`` for 0/1 rewards.
STD_EPS = 1e-6


def _check_1d(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1 or group_ids.dim() != 1:
        raise ValueError(
            f"rewards and group_ids must be 1-D [B]; got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if rewards.shape[0] != group_ids.shape[0]:
        raise ValueError(
            f"rewards and group_ids must have the same length; got "
            f"{rewards.shape[0]} and {group_ids.shape[0]}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor; got {group_ids.dtype}")


def _as_float(rewards: Tensor) -> Tensor:
    """Bool/int rewards become the default float dtype; float rewards are kept."""
    if rewards.is_floating_point():
        return rewards
    return rewards.to(torch.get_default_dtype())


def _group_reduce(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(inverse, sums, counts)``: per-group sums/counts and each sample's group index."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.shape[0], dtype=values.dtype, device=values.device)
    sums = sums.scatter_add(0, inverse, values)
    return inverse, sums, counts.to(values.dtype)


def group_mean(values: Tensor, group_ids: Tensor) -> Tensor:
    """Mean of ``values`` over each sample's group, broadcast back to ``[B]``."""
    _check_1d(values, group_ids)
    values = _as_float(values)
    inverse, sums, counts = _group_reduce(values, group_ids)
    return (sums / counts)[inverse]


def group_correct_rate(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """r̂_q of each sample's group: the group mean of the 0/1 correctness rewards.

    Args:
        rewards: ``[B]`` 0/1 rewards (bool, int or float). Non-binary rewards
            yield the plain group mean; callers that shape rewards (e.g. DAPO's
            overlong penalty) should pass the binary correctness here instead.
        group_ids: ``[B]`` integer question id of each sample (any values).

    Returns:
        ``[B]`` float tensor, r̂ of the group each sample belongs to.
    """
    return group_mean(rewards, group_ids)


def group_advantages(rewards: Tensor, group_ids: Tensor, *, std_normalize: bool) -> Tensor:
    """Group-relative advantages (PAPER.md, "Theorem worth a test").

    * ``std_normalize=False`` (Dr. GRPO): ``A = r − mean_q(r)``.
    * ``std_normalize=True``  (GRPO/DAPO): ``A = (r − mean_q(r)) / std_q(r)`` with
      the *population* std (``unbiased=False``); for 0/1 rewards this is
      ``(r − r̂)/sqrt(r̂(1 − r̂))``.

    Constant groups (std <= :data:`STD_EPS`) get advantage exactly 0; the eps is
    only a guard against division by zero, it is never added to a real std.

    Returns:
        ``[B]`` float tensor (no gradient flows from rewards in practice).
    """
    _check_1d(rewards, group_ids)
    rewards = _as_float(rewards)
    inverse, sums, counts = _group_reduce(rewards, group_ids)
    mean = (sums / counts)[inverse]
    centered = rewards - mean
    if not std_normalize:
        return centered
    sq = torch.zeros_like(sums).scatter_add(0, inverse, centered * centered)
    std = torch.sqrt(sq / counts)[inverse]
    constant = std <= STD_EPS
    safe_std = torch.where(constant, torch.ones_like(std), std)
    return torch.where(constant, torch.zeros_like(centered), centered / safe_std)


def filter_informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Dynamic-sampling keep-mask: drop groups whose rewards are all equal.

    For 0/1 rewards this keeps exactly the samples whose group has
    ``0 < r̂ < 1`` (PAPER.md: "Only questions with 0 < r̂_q < 1 are trained
    on"); all-correct and all-wrong groups carry no signal.

    Returns:
        ``[B]`` bool tensor, True for samples to keep.
    """
    _check_1d(rewards, group_ids)
    rewards = _as_float(rewards)
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = uniq.shape[0]
    gmax = torch.full((num_groups,), float("-inf"), dtype=rewards.dtype, device=rewards.device)
    gmin = torch.full((num_groups,), float("inf"), dtype=rewards.dtype, device=rewards.device)
    gmax = gmax.scatter_reduce(0, inverse, rewards, reduce="amax", include_self=True)
    gmin = gmin.scatter_reduce(0, inverse, rewards, reduce="amin", include_self=True)
    return (gmax > gmin)[inverse]
