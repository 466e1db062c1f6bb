"""Evaluation report: the results object, a printed table, and JSON / JSONL writers.

Results JSON (``nft-eval --out``), one object::

    {
      "aime24":  {"accuracy": 0.32, "k": 32, "n_problems": 30, "n_samples": 960,
                  "pass@1": 0.32, "pass@k": 0.70, "maj@k": 0.40, "grader": "strict_box"},
      ...one entry per evaluated benchmark (registry names only)...
      "average": {"accuracy": ..., "pass@1": ..., "pass@k": ..., "maj@k": ...,
                  "benchmarks": [names averaged], "n_benchmarks": 6, "complete": true},
      "meta":    {"model": ..., "n": ..., "temperature": ..., ...}
    }

Every top-level key except ``"average"`` and ``"meta"`` (``benchmarks.RESERVED_KEYS``; the
registry refuses these as benchmark names) is a benchmark. ``average`` is the unweighted mean
over the evaluated benchmarks (the paper's "Avg" column); ``complete`` says whether all six were
included. Accuracies are fractions in [0, 1]; the printed table shows percentages.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, TextIO

from .benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS, RESERVED_KEYS
from .metrics import ProblemRecord, macro_average

__all__ = ["build_results", "format_table", "write_json", "write_records", "benchmark_items"]


def build_results(summaries: dict[str, dict], meta: Optional[dict] = None) -> dict:
    """Assemble the results object from per-benchmark summaries (``metrics.summarize``)."""
    out: dict = {}
    for name, s in summaries.items():
        if name in RESERVED_KEYS or name not in BENCHMARKS:
            raise ValueError(f"{name!r} is not a benchmark name")
        out[name] = dict(s, grader=BENCHMARKS[name].grader)
    avg = macro_average(summaries)
    avg["complete"] = set(avg["benchmarks"]) == set(DEFAULT_BENCHMARKS)
    out["average"] = avg
    if meta is not None:
        out["meta"] = meta
    return out


def benchmark_items(results: dict) -> list[tuple[str, dict]]:
    """The benchmark entries of a results object (reserved keys skipped)."""
    return [(k, v) for k, v in results.items() if k not in RESERVED_KEYS]


def _pct(x) -> str:
    return f"{100.0 * x:6.1f}" if isinstance(x, (int, float)) else f"{'-':>6}"


def format_table(results: dict) -> str:
    """Fixed-width table: one row per benchmark, then the average."""
    head = f"{'benchmark':<14} {'grader':<10} {'problems':>8} {'k':>4} {'acc%':>6} {'pass@1':>6} " \
           f"{'pass@k':>6} {'maj@k':>6}"
    lines = [head, "-" * len(head)]
    for name, s in benchmark_items(results):
        lines.append(f"{name:<14} {s.get('grader', ''):<10} {s['n_problems']:>8} {s['k']:>4} "
                     f"{_pct(s['accuracy'])} {_pct(s['pass@1'])} {_pct(s['pass@k'])} {_pct(s['maj@k'])}")
    avg = results.get("average")
    if avg is not None:
        lines.append("-" * len(head))
        label = "average" if avg.get("complete") else f"average({avg['n_benchmarks']})"
        lines.append(f"{label:<14} {'':<10} {'':>8} {'':>4} {_pct(avg['accuracy'])} "
                     f"{_pct(avg['pass@1'])} {_pct(avg['pass@k'])} {_pct(avg['maj@k'])}")
    return "\n".join(lines)


def _open_out(path: str) -> TextIO:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    return open(path, "w", encoding="utf-8")


def write_json(results: dict, path: str) -> None:
    with _open_out(path) as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def write_records(records: Iterable[ProblemRecord], path: str) -> int:
    """One JSON object per problem (``ProblemRecord.to_json``); returns the number written."""
    n = 0
    with _open_out(path) as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n
