"""Torch-free choices of the algorithm keys (``config.py`` reads them without importing torch)."""

#: ``algorithm.aggregation``: how token losses become one scalar (``losses.aggregate``).
AGGREGATION_MODES = ("token-mean", "seq-mean-token-mean", "token-sum-norm", "token-sum-dp-mean")
#: ``algorithm.weighting``: NFT's prompt weight omega(q).
NFT_WEIGHTINGS = ("1-r", "grpo", "none")
