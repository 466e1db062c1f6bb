"""The NFT reference's evaluation grading, per benchmark (``nft-eval --grader reference``).

Read: NVlabs/NFT at ``b358faeb691391b500bfdabe667f9450aab6e70f``: ``main_nft.py`` replaces
verl's ``_default_compute_score`` with ``verifier._default_compute_score`` and verl's
``math_verify.compute_score`` with ``verifier.math_verify_compute_score``; validation uses
verl's ``NaiveRewardManager`` (verl ``01ef7184821d0d7844796ec0ced17665c1f50673``,
``verl/workers/reward_manager/naive.py``), which routes each response by its ``data_source``:

* AIME24, AIME25, AMC23 (``*_dapo_boxed``): ``math_dapo.compute_score(..., strict_box_verify=True)``
  -> :func:`megatron_nft.rewards.dapo_strict.strict_box_score` (window, exact string match:
  see that module).
* MATH500, OlympiadBench, Minerva (``math500``, ``olympiadbench``, ``minerva_math``):
  ``verifier.math_verify_compute_score(response, gt)`` -> :func:`math_verify_score`:
  the gold is wrapped as ``"\\boxed{" + gt + "}"`` and parsed with ``LatexExtractionConfig()``
  only; the WHOLE response (no window) is parsed with ``(ExprExtractionConfig(),
  LatexExtractionConfig())``; ``math_verify.verify(gold, pred, 6)`` (float rounding 6, default
  5 s timeouts); correct iff the score is > 0.5. A gold that does not parse raises inside
  ``math_metric`` and the reference catches it: wrong. Any exception: wrong.

Golds: the reference reads ``reward_model.ground_truth`` from its own parquet files (not
downloadable here). For the math-verify benchmarks we pass :attr:`Problem.gold` (the
benchmark file's answer, ``$`` removed). For the strict-box benchmarks the gold must equal what
the model writes character for character, and the reference's AIME/AMC files come from DAPO's,
which store the integer answer as a plain integer string; our AIME24 copy (Qwen2.5-Math) pads
to three digits (``"025"``) and AMC23 stores floats (``27.0``). So an integer gold is passed
as its canonical integer string (``"025"`` -> ``"25"``, ``27.0`` -> ``"27"``), see
:func:`reference_gold`; records keep the gold each grader used.

Responses are graded as given. (The reference decodes with special tokens kept and strips one
trailing eos token; ``nft-eval`` generates text with special tokens skipped.)
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Optional, Sequence

from megatron_nft.rewards.dapo_strict import strict_box_score

from .benchmarks import Problem

__all__ = ["REFERENCE_ROUTE", "reference_gold", "math_verify_score", "reference_score", "grade_reference"]

# benchmark -> the reference's scoring route
REFERENCE_ROUTE = {
    "aime24": "math_dapo_strict_box", "aime25": "math_dapo_strict_box", "amc23": "math_dapo_strict_box",
    "math500": "math_verify", "minerva_math": "math_verify", "olympiadbench": "math_verify",
}
_INT = re.compile(r"^[+-]?\d+$")


def reference_gold(problem: Problem) -> str:
    """The gold string the reference compares with (see the module docstring)."""
    g = problem.gold
    if REFERENCE_ROUTE.get(problem.benchmark) == "math_dapo_strict_box" and _INT.match(g.strip()):
        return str(int(g.strip()))
    return g


def _pred_text(pred: list) -> Optional[str]:
    if not pred:
        return None
    return str(pred[-1])  # parse() returns [sympy object, matched string]


def math_verify_score(response: str, gold: str) -> tuple[bool, Optional[str]]:
    """The reference's math-verify call: ``(correct, extracted answer text or None)``."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    try:
        gold_parsed = parse("\\boxed{" + gold + "}", (LatexExtractionConfig(),))
        pred = parse(response, (ExprExtractionConfig(), LatexExtractionConfig()))
        if not gold_parsed:  # math_metric raises "No gold targets found"; the reference: wrong
            return False, _pred_text(pred)
        return bool(verify(gold_parsed, pred, 6)), _pred_text(pred)
    except Exception:  # noqa: BLE001 - the reference catches everything and scores 0
        return False, None


def reference_score(benchmark: str, response: str, gold: str) -> tuple[bool, Optional[str]]:
    """Score one response as the reference does for ``benchmark`` (gold already as the reference's)."""
    route = REFERENCE_ROUTE.get(benchmark)
    if route is None:
        raise ValueError(f"no reference grading for benchmark {benchmark!r}; known: {', '.join(REFERENCE_ROUTE)}")
    if route == "math_dapo_strict_box":
        return strict_box_score(response, gold)
    return math_verify_score(response, gold)


def grade_reference(problems: Sequence[Problem], responses: Sequence[Sequence[str]],
                    on_problem: Optional[Callable[[], None]] = None) -> tuple[list[list[bool]], list[list]]:
    """``(correct[problem][sample], answers[problem][sample])`` under the reference's grading.

    Runs in the calling (main) thread: math-verify's own timeouts use ``signal.alarm``."""
    if len(problems) != len(responses):
        raise ValueError(f"{len(problems)} problems but {len(responses)} response lists")
    quiet = logging.getLogger("math_verify")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns on every response without an extractable answer
    flags, answers = [], []
    try:
        for p, rs in zip(problems, responses):
            gold = reference_gold(p)
            scored = [reference_score(p.benchmark, r if isinstance(r, str) else "", gold) for r in rs]
            flags.append([bool(c) for c, _ in scored])
            answers.append([a for _, a in scored])
            if on_problem:
                on_problem()
    finally:
        quiet.setLevel(level)
    return flags, answers
