"""Grading a run's generations with one or both graders, into records and summaries.

Graders (``nft-eval --grader``):

* ``reference`` (default): the NFT reference's own evaluation grading per benchmark
  (:mod:`megatron_nft.eval.reference`: ``math_dapo`` strict box on the last 100 characters for
  AIME24/AIME25/AMC23, its math-verify call for MATH500/OlympiadBench/Minerva). Numbers
  comparable with the paper's Table 1.
* ``ours``: this project's verifier (:func:`megatron_nft.eval.benchmarks.grade`: normalised last
  box for AIME/AMC, ``MathVerifier`` with hard timeouts and OlympiadBench multi-answer rules).
* ``both``: the two side by side; the headline numbers are the reference's, and every benchmark
  reports how many samples the two grade differently.

Record (one line of ``--records`` per problem): ``correct`` / ``answers`` / ``gold`` of the
first grader (the reference's unless ``--grader ours``), in sample order, and ``graders``:
``{name: {"gold", "answers", "correct"}}`` for each grader run, so a run can be re-graded or
compared without regenerating (the responses themselves are in the generations file).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from . import benchmarks as B
from .metrics import ProblemRecord, make_record, summarize
from .reference import grade_reference, reference_gold

__all__ = ["GRADER_CHOICES", "grader_names", "grade_benchmark"]

GRADER_CHOICES = ("reference", "ours", "both")
GRADE_CHUNK = 64  # problems per verifier call (progress granularity)


def grader_names(choice: str) -> list[str]:
    if choice not in GRADER_CHOICES:
        raise ValueError(f"unknown grader {choice!r}; allowed: {', '.join(GRADER_CHOICES)}")
    return ["reference", "ours"] if choice == "both" else [choice]


def _grade_ours(verifier, ps, texts, tick) -> tuple[list, list, list]:
    flags: list[list[bool]] = []
    for start in range(0, len(ps), GRADE_CHUNK):
        flags += B.grade(verifier, ps[start:start + GRADE_CHUNK], texts[start:start + GRADE_CHUNK])
        for _ in ps[start:start + GRADE_CHUNK]:
            tick()
    answers = [[B.final_answer(t, p.grader) for t in ts] for p, ts in zip(ps, texts)]
    return flags, answers, [p.gold for p in ps]


def _grade_with(name: str, verifier, ps, texts, tick) -> tuple[list, list, list]:
    if name == "reference":
        flags, answers = grade_reference(ps, texts, on_problem=tick)
        return flags, answers, [reference_gold(p) for p in ps]
    return _grade_ours(verifier, ps, texts, tick)


def grade_benchmark(name: str, ps: Sequence[B.Problem], samples: Sequence[Sequence[dict]], graders: list[str],
                    verifier=None, progress: Optional[Callable[[str, int], Callable[[], None]]] = None
                    ) -> tuple[dict, list[ProblemRecord]]:
    """Grade one benchmark's samples (``[{"text", "finish_reason"?}]`` per problem) with each
    grader; returns ``(summary, records)`` (module docstring). ``verifier``: a ``MathVerifier``,
    needed for ``ours``. ``progress(desc, total)`` returns a per-problem tick."""
    texts = [[s["text"] for s in ss] for ss in samples]
    graded = {}
    for g in graders:
        tick = progress(f"grade {name} [{g}]", len(ps)) if progress else (lambda: None)
        graded[g] = _grade_with(g, verifier, ps, texts, tick)
    per: dict[str, list[ProblemRecord]] = {g: [] for g in graders}
    for i, p in enumerate(ps):
        detail = {g: {"gold": graded[g][2][i], "answers": graded[g][1][i], "correct": graded[g][0][i]}
                  for g in graders}
        extra = {"grader": graders[0], "graders": detail}
        if samples[i] and "finish_reason" in samples[i][0]:
            extra["n_truncated"] = sum(s.get("finish_reason") == "length" for s in samples[i])
        for g in graders:
            flags, answers, golds = graded[g]
            keys = [B.answer_key(a, p.grader) for a in answers[i]]
            per[g].append(make_record(name, p.idx, golds[i], answers[i], keys, flags[i],
                                      **(extra if g == graders[0] else {})))
    summary = summarize(per[graders[0]])
    if len(graders) > 1:
        summary["graders"] = {g: summarize(per[g]) for g in graders}
        a, b = graded[graders[0]][0], graded[graders[1]][0]
        summary["disagreements"] = sum(x != y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return summary, per[graders[0]]
