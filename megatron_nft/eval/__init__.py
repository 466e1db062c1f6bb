"""Math-reasoning evaluation: benchmark registry and grading (``benchmarks``), metrics
(``metrics``: avg@k, unbiased pass@k, maj@k), report table/JSON (``report``). The CLI is
``nft-eval`` (``tools/eval.py``)."""

from .benchmarks import (
    BENCHMARKS,
    DEFAULT_BENCHMARKS,
    RESERVED_KEYS,
    Benchmark,
    Problem,
    grade,
    load_problems,
    parse_benchmarks,
)
from .metrics import ProblemRecord, majority_vote, make_record, pass_at_k, summarize
from .report import build_results, format_table

__all__ = [
    "BENCHMARKS",
    "DEFAULT_BENCHMARKS",
    "RESERVED_KEYS",
    "Benchmark",
    "Problem",
    "grade",
    "load_problems",
    "parse_benchmarks",
    "ProblemRecord",
    "majority_vote",
    "make_record",
    "pass_at_k",
    "summarize",
    "build_results",
    "format_table",
]
