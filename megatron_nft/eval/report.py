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

With ``--grader both`` each benchmark entry also has ``"graders": {"reference": {...},
"ours": {...}}`` (the same summary per grader) and ``"disagreements"`` (samples the two graders
grade differently); the top-level numbers are the reference grader's. Every entry carries the
standard errors ``se`` / ``se_sampling`` / ``se_problems`` of ``pass@1`` (``metrics``).

Printed: :func:`format_table1`, the paper's Table 1 layout (columns AIME24, MATH500, AIME25,
AMC23, OlympiadBench, Minerva, Avg; cells ``pass@1 ± se`` in percent, pass@1 = avg@k = mean
over problems of the fraction of the k samples graded correct) with the paper's own row beside
ours when the base model and method are known (``PAPER_TABLE1``), then :func:`format_table`,
the per-benchmark details.

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

__all__ = ["build_results", "format_table", "format_table1", "write_json", "write_records", "benchmark_items",
           "TABLE1_COLUMNS", "PAPER_TABLE1", "paper_row", "paper_label"]

# (registry name, Table 1 header), in Table 1's column order
TABLE1_COLUMNS = (("aime24", "AIME24"), ("math500", "MATH500"), ("aime25", "AIME25"), ("amc23", "AMC23"),
                  ("olympiadbench", "OlympiadBench"), ("minerva_math", "Minerva"))
# ../shared/PAPER.md, "Results to reproduce (accuracy %, Table 1)" (Chen et al. 2025, arXiv 2505.18116):
# (model, method) -> AIME24, MATH500, AIME25, AMC23, Olympiad, Minerva, Avg
PAPER_TABLE1 = {
    ("Qwen2.5-Math-7B", "base"): (13.3, 69.0, 5.5, 45.8, 34.7, 21.3, 31.6),
    ("Qwen2.5-Math-7B", "grpo"): (30.2, 80.4, 17.1, 79.5, 51.8, 38.2, 49.5),
    ("Qwen2.5-Math-7B", "drgrpo"): (31.8, 83.4, 15.7, 80.2, 49.6, 38.2, 49.8),
    ("Qwen2.5-Math-7B", "dapo"): (33.1, 81.6, 18.7, 85.0, 49.9, 39.3, 51.2),
    ("Qwen2.5-Math-7B", "rft"): (33.7, 79.8, 13.4, 79.7, 44.3, 38.6, 48.3),
    ("Qwen2.5-Math-7B", "nft"): (32.0, 83.2, 18.3, 88.5, 47.3, 40.8, 51.7),
    ("Qwen2.5-32B", "base"): (4.1, 68.6, 1.0, 45.0, 31.1, 27.9, 29.6),
    ("Qwen2.5-32B", "dapo"): (44.1, 89.2, 33.4, 90.9, 54.1, 47.5, 59.9),
    ("Qwen2.5-32B", "rft"): (29.9, 86.2, 19.1, 92.4, 45.3, 44.1, 52.8),
    ("Qwen2.5-32B", "nft"): (37.8, 88.4, 31.5, 93.8, 55.0, 48.9, 59.2),
}


METHOD_LABELS = {"base": "base", "grpo": "GRPO", "drgrpo": "Dr. GRPO", "dapo": "DAPO", "rft": "RFT", "nft": "NFT"}


def paper_label(model: Optional[str], method: Optional[str]) -> str:
    return f"paper: {METHOD_LABELS.get(str(method).lower(), method)} {os.path.basename(str(model).rstrip('/'))}"


def paper_row(model: Optional[str], method: Optional[str]) -> Optional[tuple]:
    """The paper's Table 1 row for a base model (name or path ending in it) and method, if any."""
    if not model or not method:
        return None
    name = os.path.basename(str(model).rstrip("/"))
    for (m, meth), row in PAPER_TABLE1.items():
        if m.lower() == name.lower() and meth == method.lower():
            return row
    return None


def build_results(summaries: dict[str, dict], meta: Optional[dict] = None) -> dict:
    """Assemble the results object from per-benchmark summaries (``metrics.summarize``, plus
    optional ``graders`` / ``disagreements`` entries)."""
    out: dict = {}
    for name, s in summaries.items():
        if name in RESERVED_KEYS or name not in BENCHMARKS:
            raise ValueError(f"{name!r} is not a benchmark name")
        out[name] = dict(s, grader=BENCHMARKS[name].grader)
    avg = macro_average(summaries)
    avg["complete"] = set(avg["benchmarks"]) == set(DEFAULT_BENCHMARKS)
    graders = list(dict.fromkeys(g for s in summaries.values() for g in s.get("graders", {})))
    if graders:
        avg["graders"] = {g: macro_average({b: s["graders"][g] for b, s in summaries.items()}) for g in graders}
    out["average"] = avg
    if meta is not None:
        out["meta"] = meta
    return out


def benchmark_items(results: dict) -> list[tuple[str, dict]]:
    """The benchmark entries of a results object (reserved keys skipped)."""
    return [(k, v) for k, v in results.items() if k not in RESERVED_KEYS]


def _cell(x, se) -> str:
    return f"{100.0 * x:5.1f} ± {100.0 * se:4.1f}"


def _row1(label: str, cells: list[str]) -> str:
    return f"{label:<26}" + "".join(f"{c:>15}" for c in cells[:-1]) + f"{cells[-1]:>18}"


def _table1_cells(results: dict, grader: Optional[str] = None) -> list[str]:
    cells = []
    for name, _ in TABLE1_COLUMNS:
        s = results.get(name)
        if s is not None and grader is not None:
            s = s.get("graders", {}).get(grader)
        cells.append(_cell(s["pass@1"], s["se"]) if s and s.get("n_problems") else "-")
    avg = results.get("average", {})
    if grader is not None:
        avg = avg.get("graders", {}).get(grader, {})
    label = "" if avg.get("complete", results.get("average", {}).get("complete")) else f"({avg.get('n_benchmarks', 0)})"
    cells.append((_cell(avg["pass@1"], avg["se"]) + label) if avg.get("n_benchmarks") else "-")
    return cells


def format_table1(results: dict, label: str = "ours", paper: Optional[tuple] = None,
                  paper_label: str = "paper") -> str:
    """Table 1's layout: pass@1 (= avg@k) ± standard error in %, the paper's row beside ours."""
    lines = ["pass@1 % (avg@k: mean over problems of the fraction of k samples correct) "
             "± standard error over problems and samples",
             _row1("", [h for _, h in TABLE1_COLUMNS] + ["Avg"])]
    graders = results.get("average", {}).get("graders", {})
    if len(graders) > 1:
        for g in graders:
            lines.append(_row1(f"{label} [{g} grader]", _table1_cells(results, g)))
    else:
        lines.append(_row1(label, _table1_cells(results)))
    if paper is not None:
        lines.append(_row1(paper_label, [f"{v:5.1f}" for v in paper]))
    return "\n".join(lines)


def _pct(x) -> str:
    return f"{100.0 * x:6.1f}" if isinstance(x, (int, float)) else f"{'-':>6}"


def format_table(results: dict) -> str:
    """Fixed-width table: one row per benchmark, then the average."""
    head = f"{'benchmark':<14} {'grader':<10} {'problems':>8} {'k':>4} {'acc%':>6} {'pass@1':>6} " \
           f"{'±se':>5} {'pass@k':>6} {'maj@k':>6} {'disagree':>8}"
    lines = ["acc = pooled over all samples; pass@1 = mean over problems of c/n (= avg@k); "
             "k = samples per problem (min when unequal); pass@k unbiased; maj@k majority vote",
             head, "-" * len(head)]
    for name, s in benchmark_items(results):
        k = f"{s['k']}" if "k_max" not in s else f"{s['k']}-{s['k_max']}"
        lines.append(f"{name:<14} {s.get('grader', ''):<10} {s['n_problems']:>8} {k:>4} "
                     f"{_pct(s['accuracy'])} {_pct(s['pass@1'])} {100 * s.get('se', 0.0):5.1f} "
                     f"{_pct(s['pass@k'])} {_pct(s['maj@k'])} {s.get('disagreements', ''):>8}")
    avg = results.get("average")
    if avg is not None:
        lines.append("-" * len(head))
        label = "average" if avg.get("complete") else f"average({avg['n_benchmarks']})"
        lines.append(f"{label:<14} {'':<10} {'':>8} {'':>4} {_pct(avg['accuracy'])} "
                     f"{_pct(avg['pass@1'])} {100 * avg.get('se', 0.0):5.1f} {_pct(avg['pass@k'])} "
                     f"{_pct(avg['maj@k'])}")
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
