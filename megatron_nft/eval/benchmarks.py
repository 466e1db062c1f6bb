"""Evaluation benchmarks: registry, problem loading and grading.

Registry (``BENCHMARKS``, in results-JSON order; the printed table uses Table 1's column order,
``report.TABLE1_COLUMNS``)::

    name           file                 question   gold                          grader      n
    aime24         aime24.jsonl         problem    answer ("025")                strict_box  32
    aime25         aime25.jsonl         problem    answer                        strict_box  32
    amc23          amc23.jsonl          problem    answer (float 27.0 -> "27")   strict_box  32
    math500        math500.jsonl        problem    answer                        math         1
    minerva_math   minerva_math.jsonl   problem    last \\boxed{} of solution      math         1
    olympiadbench  olympiadbench.jsonl  question   final_answer (list, joined)   math         1

Graders (PAPER.md "Evaluation protocol"): ``strict_box`` = exact match of the normalised content
of the LAST ``\\boxed{}`` (``rewards.strict_box_match``); ``math`` = math-verify-style
extraction + equivalence with hard timeouts (``rewards.MathVerifier``). ``n`` is the default
number of samples per problem (avg@32 for AIME/AMC, avg@1 otherwise; ``--n`` overrides).

OlympiadBench multi-answer problems (``is_multiple_answer`` or a ``final_answer`` list of several
strings; 94 of 675 rows are flagged, the answers sit in one string such as ``"$(6,3),(9,3)$"`` or
``"$69$,$84$"``; the 2 flagged rows whose gold is one tuple are graded whole) are graded
component-wise:

1. gold and predicted answer (``extract_answer``: the last box, trailing boxes joined with
   ", ") are normalised (``$``, ``\\left``/``\\right``, "and"/"or"/``\\text{ and }`` -> ",") and
   split at top-level commas/semicolons into components; a component with one ``\\pm``
   becomes two. A prediction that is one wrapped collection (``\\{1, 3\\}``, ``(5, 1)``, also
   ``x \\in \\{..\\}``) is unwrapped when the gold has several components.
2. the numbers of components must agree (every gold answer found, nothing extra);
3. each predicted component is compared with a gold component by ``MathVerifier`` (so
   ``a = 2`` matches ``2``, ``\\frac{1}{2}`` matches ``0.5``): either in order or as a
   perfect matching in any order (bipartite matching).

Order: ORDERED when the question's request clause (from the last "determine/compute/find/what
are/how many..." to the end of its sentence, cut before "for which/such that/if/with...") names
several quantities (``"determine $b$ and $c$"``, ``"the values of $a, h$ and $k$"``,
``"Compute $d(6), d(16)$, and $d(72)$"``, "their ages", "how many of each") and the gold
components are not all tuples (tuples already bundle the named quantities, as in "all primes
$p$ and integers $x$ and $y$" -> ``(1,8,19), (2,7,13)``): the gold lists them in that order.
Otherwise UNORDERED ("find all ...", "two possible lists", "the smallest and largest"),
which is also what OlympiadBench's own judge does. Extremum pairs stay unordered on purpose:
the data lists e.g. "maximum and minimum" as "1,2", and the pair is unambiguous anyway.
Single-answer rows (also tuples/intervals) are graded whole by ``MathVerifier``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from megatron_nft.data.prompts import iter_rows
from megatron_nft.rewards import extract_answer, extract_gold, last_boxed
from megatron_nft.rewards.equivalence import perfect_matching
from megatron_nft.rewards.normalize import key, normalize, strict_normalize

__all__ = ["Benchmark", "Problem", "BENCHMARKS", "RESERVED_KEYS", "DEFAULT_BENCHMARKS",
           "get_benchmark", "parse_benchmarks", "load_problems", "split_answers",
           "is_ordered_request", "final_answer", "answer_key", "grade"]

# Keys of the results JSON that are not benchmarks; no benchmark may take these names.
RESERVED_KEYS = ("average", "meta")


@dataclass(frozen=True)
class Problem:
    """One evaluation problem. ``gold`` is the answer text the grader sees (no ``$``)."""

    benchmark: str
    idx: int  # 0-based line number in the benchmark file
    question: str
    gold: str
    grader: str  # "strict_box" | "math"
    multi: bool = False  # OlympiadBench multi-answer: graded component-wise
    ordered: bool = False  # (multi only) components compared in order
    gold_parts: tuple = field(default=(), compare=False)


def _float_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _gold_answer(row: dict) -> str:
    return extract_gold(_float_str(row["answer"]))


def _gold_boxed_solution(row: dict) -> str:
    b = last_boxed(str(row["solution"]))
    if b is None:
        raise ValueError("solution has no \\boxed{} answer")
    return b[1]


def _gold_olympiad(row: dict) -> str:
    fa = row["final_answer"]
    return extract_gold(list(fa) if isinstance(fa, (list, tuple)) else str(fa))


def _question_olympiad(row: dict) -> str:
    q = str(row["question"])
    return f"{row['context']}\n\n{q}" if row.get("context") else q


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    grader: str  # "strict_box" | "math"
    default_n: int
    question: Callable[[dict], str]
    gold: Callable[[dict], str]
    multi: Optional[Callable[[dict], bool]] = None

    def path(self, data_dir: str) -> str:
        return os.path.join(data_dir, self.file)


_B = [
    Benchmark("aime24", "aime24.jsonl", "strict_box", 32, lambda r: str(r["problem"]), _gold_answer),
    Benchmark("aime25", "aime25.jsonl", "strict_box", 32, lambda r: str(r["problem"]), _gold_answer),
    Benchmark("amc23", "amc23.jsonl", "strict_box", 32, lambda r: str(r["problem"]), _gold_answer),
    Benchmark("math500", "math500.jsonl", "math", 1, lambda r: str(r["problem"]), _gold_answer),
    Benchmark("minerva_math", "minerva_math.jsonl", "math", 1, lambda r: str(r["problem"]),
              _gold_boxed_solution),
    Benchmark("olympiadbench", "olympiadbench.jsonl", "math", 1, _question_olympiad, _gold_olympiad,
              multi=lambda r: bool(r.get("is_multiple_answer")) or (
                  isinstance(r["final_answer"], list) and len(r["final_answer"]) > 1)),
]
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _B}
DEFAULT_BENCHMARKS: tuple[str, ...] = tuple(BENCHMARKS)
assert not set(BENCHMARKS) & set(RESERVED_KEYS)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def parse_benchmarks(spec: str | Sequence[str] | None) -> list[str]:
    """``"aime24,math500"`` (or a list) -> validated names, duplicates dropped; None/"all" -> all."""
    if spec is None or spec == "all":
        return list(DEFAULT_BENCHMARKS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise ValueError(f"unknown benchmark(s) {', '.join(map(repr, bad))}; "
                         f"allowed: {', '.join(BENCHMARKS)}")
    if not names:
        raise ValueError(f"no benchmark given; allowed: {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def load_problems(name: str, data_dir: str, limit: int | None = None) -> list[Problem]:
    """All problems of a benchmark (the first ``limit`` if given), in file order."""
    b = get_benchmark(name)
    path = b.path(data_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark {name!r}: file not found: {path} "
                                f"(pass --data-dir DIR holding {b.file})")
    out: list[Problem] = []
    for idx, row in enumerate(iter_rows(path)):
        if limit is not None and idx >= limit:
            break
        try:
            q, gold = b.question(row), b.gold(row)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: row {idx}: cannot read question/answer ({e})") from e
        multi = bool(b.multi and b.multi(row))
        parts = tuple(split_answers(gold)) if multi else ()
        if multi and len(parts) < 2:  # e.g. one tuple flagged multi-answer: grade it whole
            multi, parts = False, ()
        ordered = multi and is_ordered_request(q) and not all(_TUPLE.match(x) for x in parts)
        out.append(Problem(name, idx, q, gold, b.grader, multi, ordered, parts))
    return out


# ----------------------------------------------------------------------------- answers

_SEPS = ",;"
_TUPLE = re.compile(r"^[(\[].*[)\]]$", re.S)


def _split_top(s: str) -> list[str]:
    """Split at commas/semicolons outside (), [], {}, ``\\{ \\}`` and environments."""
    from megatron_nft.latex import split_top

    return split_top(s, _SEPS, drop_empty=True)


def _expand_pm(p: str) -> list[str]:
    from megatron_nft.latex import expand_pm

    return expand_pm(p) or [p]


def split_answers(text: str | None) -> list[str]:
    """Components of a (multi-)answer string; see the module docstring."""
    if not text:
        return []
    out: list[str] = []
    for p in _split_top(normalize(text)):
        out.extend(_expand_pm(p))
    return out


_WRAPPED = [(re.compile(r"^\s*(?:[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|\\in)\s*)?\\\{(.*)\\\}\s*$", re.S), "set"),
            (re.compile(r"^\s*[(\[](.*)[)\]]\s*$", re.S), "tuple")]


def _pred_parts(pred: str, n_gold: int) -> list[str]:
    parts = split_answers(pred)
    if len(parts) == 1 and n_gold > 1:
        s = normalize(pred)
        for rx, _ in _WRAPPED:
            m = rx.match(s)
            if m:
                inner = split_answers(m.group(1))
                if len(inner) == n_gold:
                    return inner
    return parts


# Request clause: from the last request verb to the end of its sentence, cut before conditions.
_VERB = re.compile(r"\b(?:determine|compute|find|calculate|what\s+(?:is|are|were)|how\s+many|solve|list|give|"
                   r"state|evaluate|express)\b", re.I)
_COND = re.compile(r"\b(?:for\s+which|such\s+that|so\s+that|satisfying|that\s+satisfy|where|if|"
                   r"with|given)\b", re.I)
_NAMED_LIST = re.compile(r"\$[^$]{1,40}\$\s*,?\s*(?:and|\\text\{\s*and\s*\})\s*\$[^$]{1,40}\$"
                         r"|\$[^$]*,\s*[^$]*\$\s*,?\s*and\s+\$"
                         r"|\btheir\s+ages\b|\bof\s+each\b|\bboth\s+\$", re.I)


def is_ordered_request(question: str) -> bool:
    """True when the question asks for several named quantities (answers in that order)."""
    q = re.sub(r"\s+", " ", question)
    m = None
    for m in _VERB.finditer(q):
        pass
    clause = q[m.start():] if m else q[-300:]
    end = re.search(r"[.?!](?:\s|$)(?![^$]*\$[^$]*$)", clause)
    clause = clause[: end.start()] if end else clause
    cond = _COND.search(clause)
    clause = clause[: cond.start()] if cond else clause
    return bool(_NAMED_LIST.search(clause))


def final_answer(response: str, grader: str) -> str | None:
    """The answer the grader looks at: last box (strict_box) or ``extract_answer`` (math)."""
    if grader == "strict_box":
        b = last_boxed(response, join=False) if isinstance(response, str) else None
        return b[1] if b else None
    return extract_answer(response)


def answer_key(answer: str | None, grader: str) -> str | None:
    """Cheap grouping key for majority voting (normalised string; None = no answer)."""
    if answer is None:
        return None
    k = strict_normalize(answer) if grader == "strict_box" else key(normalize(answer))
    return k or None


# ----------------------------------------------------------------------------- grading


def grade(verifier, problems: Sequence[Problem], responses: Sequence[Sequence[str]]) -> list[list[bool]]:
    """Correctness flags ``[problem][sample]``; one ``verify_batch`` call per grading mode.

    ``verifier`` is a ``MathVerifier`` (any mode; the mode is passed per call)."""
    if len(problems) != len(responses):
        raise ValueError(f"{len(problems)} problems but {len(responses)} response lists")
    out: list[list[Optional[bool]]] = [[None] * len(r) for r in responses]
    strict, direct, pairs = [], [], {}  # pairs: (pred_part, gold_part) -> index
    multi_jobs = []  # (pi, si, pred_parts, gold_parts, ordered)
    for pi, (p, rs) in enumerate(zip(problems, responses)):
        for si, r in enumerate(rs):
            r = r if isinstance(r, str) else ("" if r is None else str(r))
            if p.grader == "strict_box":
                strict.append((pi, si, r, p.gold))
            elif not p.multi:
                direct.append((pi, si, r, p.gold))
            else:
                pred = extract_answer(r)
                pp = _pred_parts(pred, len(p.gold_parts)) if pred else []
                if len(pp) != len(p.gold_parts):
                    out[pi][si] = False
                    continue
                ks, kg = [key(x) for x in pp], [key(x) for x in p.gold_parts]
                if ks == kg or (not p.ordered and sorted(ks) == sorted(kg)):
                    out[pi][si] = True  # same normalised strings: no need for the verifier
                    continue
                cand = (zip(pp, p.gold_parts) if p.ordered
                        else ((a, b) for a in pp for b in p.gold_parts))
                for a, b in cand:
                    pairs.setdefault((a, b), len(pairs))
                multi_jobs.append((pi, si, pp, p.gold_parts, p.ordered))
    for mode, jobs in (("strict_box", strict), ("math", direct)):
        if jobs:
            flags = verifier.verify_batch([j[2] for j in jobs], [j[3] for j in jobs], mode=mode)
            for (pi, si, _, _), f in zip(jobs, flags):
                out[pi][si] = bool(f)
    if pairs:
        items = list(pairs)
        flags = verifier.verify_batch(["\\boxed{%s}" % a for a, _ in items], [b for _, b in items], mode="math")
        eq = dict(zip(items, flags))
        for pi, si, pp, gp, ordered in multi_jobs:
            if ordered:
                out[pi][si] = all(eq[(a, b)] for a, b in zip(pp, gp))
            else:
                out[pi][si] = perfect_matching([[eq[(a, b)] for b in gp] for a in pp])
    return [[bool(f) for f in row] for row in out]
