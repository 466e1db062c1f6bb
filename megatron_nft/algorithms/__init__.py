"""Pure-torch RL objectives for megatron-nft: NFT and its baselines (RFT, GRPO, Dr. GRPO, DAPO).

See ``/work/shared/PAPER.md`` for the formulas. No Megatron dependency: every
function works on plain ``[B, T]`` / ``[B]`` tensors.
"""

from .groups import (
    STD_EPS,
    filter_informative_groups,
    group_advantages,
    group_correct_rate,
    group_mean,
)
from .losses import (
    AGGREGATION_MODES,
    ALGORITHMS,
    CORRECT_RATE_MAX,
    CORRECT_RATE_MIN,
    GRPO_LOG_RATIO_BOUND,
    NFT_WEIGHTINGS,
    aggregate,
    grpo_token_loss,
    max_v,
    nft_clip_fraction,
    nft_token_loss,
    rft_token_loss,
    tis_weights,
    token_loss_for,
)

__all__ = [
    "AGGREGATION_MODES",
    "ALGORITHMS",
    "CORRECT_RATE_MAX",
    "CORRECT_RATE_MIN",
    "GRPO_LOG_RATIO_BOUND",
    "NFT_WEIGHTINGS",
    "STD_EPS",
    "aggregate",
    "filter_informative_groups",
    "group_advantages",
    "group_correct_rate",
    "group_mean",
    "grpo_token_loss",
    "max_v",
    "nft_clip_fraction",
    "nft_token_loss",
    "rft_token_loss",
    "tis_weights",
    "token_loss_for",
]
