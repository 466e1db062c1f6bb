"""Pure-torch RL objectives for megatron-nft: NFT and its baselines (RFT, GRPO, Dr. GRPO, DAPO).

See ``../shared/PAPER.md`` for the formulas. No Megatron dependency: every function works on
plain ``[B, T]`` / ``[B]`` tensors. :mod:`.registry` holds one object per algorithm (loss,
advantage normalisation, reward shaping, defaults, metrics).

Names are resolved lazily (PEP 562) so that ``config.py`` can read the registry's algorithm
names without importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "groups": ("STD_EPS", "filter_informative_groups", "group_advantages", "group_correct_rate", "group_mean"),
    "losses": ("CORRECT_RATE_MAX", "CORRECT_RATE_MIN", "GRPO_LOG_RATIO_BOUND",
               "aggregate", "aggregation_weights", "grpo_token_loss", "max_v",
               "nft_clip_fraction", "nft_token_loss", "rft_token_loss", "tis_weights"),
    "registry": ("AGGREGATION_MODES", "ALGORITHMS", "ALGORITHM_NAMES", "Algorithm", "NFT_WEIGHTINGS", "REGISTRY",
                 "get_algorithm", "token_loss_for"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
