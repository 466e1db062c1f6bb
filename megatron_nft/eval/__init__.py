"""Math-reasoning evaluation: benchmark registry and our grading (``benchmarks``), the NFT
reference's grading (``reference``), grading runs with one or both (``grading``), metrics
(``metrics``: avg@k, unbiased pass@k, maj@k, standard errors), report tables/JSON (``report``:
Table 1's layout), generation at node scale (``generation``: seeded chunk plan, dp engines,
resumable generations file; ``engines``: vLLM with its own TP executor, HF). The CLI is
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
from .grading import GRADER_CHOICES, grade_benchmark, grader_names
from .metrics import ProblemRecord, majority_vote, make_record, pass_at_k, standard_errors, summarize
from .reference import REFERENCE_ROUTE, grade_reference, reference_gold, reference_score
from .report import PAPER_TABLE1, TABLE1_COLUMNS, build_results, format_table, format_table1, paper_row

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
    "standard_errors",
    "GRADER_CHOICES",
    "grade_benchmark",
    "grader_names",
    "REFERENCE_ROUTE",
    "grade_reference",
    "reference_gold",
    "reference_score",
    "PAPER_TABLE1",
    "TABLE1_COLUMNS",
    "build_results",
    "format_table",
    "format_table1",
    "paper_row",
]
