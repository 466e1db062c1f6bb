"""Evaluation metrics: avg@k, unbiased pass@k, maj@k, per-problem records and summaries.

Definitions (``n`` samples of one problem, ``c`` of them correct):

* ``avg@k`` / ``accuracy``: mean correctness over ALL graded samples of the benchmark (the
  paper's avg@32 for AIME/AMC, plain accuracy for k = 1).
* ``pass@k``: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021), averaged
  over problems; ``k <= n``. Summaries report ``pass@1`` (= mean of c/n) and ``pass@k`` with
  ``k`` = the smallest ``n`` over the benchmark's problems (= ``n`` when all have the same).
* ``maj@k``: majority vote over the samples' extracted final answers. Answers are grouped by a
  cheap normalised-string key (``benchmarks.answer_key``: the strict-box normalisation for
  AIME/AMC, the math normaliser's whitespace-free form otherwise), so ``\\frac{1}{2}`` and
  ``\\dfrac12`` vote together but ``0.5`` and ``\\frac12`` do not. Samples without an answer do
  not vote; a tie goes to the group whose first sample comes first. The vote is correct when
  that group's first sample was graded correct. No answer at all -> wrong.

Names in the summaries: ``accuracy`` (``acc``) is POOLED over samples, ``sum(c) / sum(n)``;
``pass@1`` (= the paper's avg@k) is the mean over problems of ``c_i / n_i``; the two agree when
every problem has the same number of samples ``k``, which is the case whenever ``nft-eval``
generates (``k`` = samples per problem; graded files may have unequal counts: then ``k`` is the
smallest and ``k_max`` the largest). Table 1 shows ``pass@1``.

Standard errors (``standard_errors``; P problems, ``p_i = c_i / n_i``, ``m = mean(p_i)``):

* ``se`` = ``sqrt( sum_i (p_i - m)^2 / (P - 1) / P )``: the standard error of ``pass@1`` as an
  estimate of the expected accuracy over the population of problems AND of the model's
  samples; it contains both sources of noise (the problems drawn, the k samples per problem).
* ``se_sampling`` = ``sqrt( sum_i p_i (1 - p_i) / (n_i - 1) ) / P`` (problems with ``n_i > 1``;
  ``p_i (1 - p_i) / (n_i - 1)`` is the unbiased estimate of ``Var(p_i)`` given problem i): the
  within-problem part, which more samples per problem would shrink; 0 for avg@1, where it
  cannot be told apart from the problem part.
* ``se_problems`` = ``sqrt(max(se^2 - se_sampling^2, 0))``: the part from the finite problem set.
* the Avg column: ``sqrt(sum_b se_b^2) / B`` over the B averaged benchmarks (independent).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

__all__ = ["pass_at_k", "majority_vote", "ProblemRecord", "make_record", "summarize", "macro_average",
           "standard_errors"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)`` (numerically stable)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i)
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(keys: Sequence[Optional[str]], correct: Sequence[bool]) -> tuple[int | None, bool]:
    """``(index of the winning group's first sample, its correctness)``; ``(None, False)`` when
    no sample has an answer. ``keys[i]`` is sample i's grouping key (None = no answer)."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k is None:
            continue
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, i)
    if not counts:
        return None, False
    best = min(counts, key=lambda k: (-counts[k], first[k]))
    return first[best], bool(correct[first[best]])


@dataclass
class ProblemRecord:
    """Per-problem result (one line of ``--records``)."""

    benchmark: str
    idx: int
    gold: str
    answers: list  # extracted final answer of each sample (None = none found)
    correct: list  # bool per sample
    n: int = 0
    n_correct: int = 0
    maj_answer: Optional[str] = None
    maj_correct: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def make_record(benchmark: str, idx: int, gold: str, answers: Sequence[Optional[str]],
                keys: Sequence[Optional[str]], correct: Sequence[bool], **extra) -> ProblemRecord:
    if not (len(answers) == len(keys) == len(correct)):
        raise ValueError("answers, keys and correct must have the same length")
    win, maj_ok = majority_vote(keys, correct)
    return ProblemRecord(benchmark, int(idx), gold, list(answers), [bool(c) for c in correct],
                         n=len(correct), n_correct=int(sum(bool(c) for c in correct)),
                         maj_answer=None if win is None else answers[win], maj_correct=maj_ok,
                         extra=dict(extra))


def summarize(records: Sequence[ProblemRecord]) -> dict:
    """Benchmark summary: accuracy (= avg@k), k, n_problems, n_samples, pass@1, pass@k, maj@k.

    Problems with no samples are skipped; an empty benchmark gives zeros with n_problems 0."""
    recs = [r for r in records if r.n > 0]
    if not recs:
        return {"accuracy": 0.0, "k": 0, "n_problems": 0, "n_samples": 0,
                "pass@1": 0.0, "pass@k": 0.0, "maj@k": 0.0}
    k = min(r.n for r in recs)
    n_samples = sum(r.n for r in recs)
    out = {
        "accuracy": sum(r.n_correct for r in recs) / n_samples,
        "k": k,
        "n_problems": len(recs),
        "n_samples": n_samples,
        "pass@1": sum(r.n_correct / r.n for r in recs) / len(recs),
        "pass@k": sum(pass_at_k(r.n, r.n_correct, k) for r in recs) / len(recs),
        "maj@k": sum(r.maj_correct for r in recs) / len(recs),
    }
    if k != max(r.n for r in recs):
        out["k_max"] = max(r.n for r in recs)  # unequal sample counts (scoring mode only)
    out.update(standard_errors([(r.n, r.n_correct) for r in recs]))
    return out


def standard_errors(counts: Sequence[tuple[int, int]]) -> dict:
    """``{"se", "se_sampling", "se_problems"}`` of pass@1 from ``(n_i, c_i)`` per problem (module
    docstring). Fewer than two problems: all zero (no spread to estimate)."""
    P = len(counts)
    if P < 2:
        return {"se": 0.0, "se_sampling": 0.0, "se_problems": 0.0}
    p = [c / n for n, c in counts]
    m = sum(p) / P
    var_total = sum((x - m) ** 2 for x in p) / (P - 1) / P
    var_samp = sum(x * (1 - x) / (n - 1) for x, (n, _) in zip(p, counts) if n > 1) / P**2
    return {"se": math.sqrt(var_total), "se_sampling": math.sqrt(var_samp),
            "se_problems": math.sqrt(max(var_total - var_samp, 0.0))}


def macro_average(summaries: dict[str, dict], metrics=("accuracy", "pass@1", "pass@k", "maj@k")) -> dict:
    """Unweighted mean over benchmarks (the paper's "Avg" column), plus which were averaged."""
    names = [b for b, s in summaries.items() if s.get("n_problems", 0) > 0]
    out: dict = {m: (sum(summaries[b][m] for b in names) / len(names) if names else 0.0) for m in metrics}
    out["se"] = math.sqrt(sum(summaries[b].get("se", 0.0) ** 2 for b in names)) / len(names) if names else 0.0
    out["benchmarks"] = names
    out["n_benchmarks"] = len(names)
    return out
