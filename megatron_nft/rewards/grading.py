"""Grading of single answers, without a pool (pure Python unless sympy is needed).

``verify_answer(response, gold)`` runs the same pipeline as one ``MathVerifier`` task but in
the calling process and without a timeout. ``fast_decide`` is the parent-side fast path of the
pool; ``slow_decide`` is what a worker runs; ``strict_box_match`` is the AIME/AMC mode.
"""

from __future__ import annotations

from .equivalence import MAX_ATOM_LEN, answers_equal
from .extract import extract_answer, extract_gold, last_boxed
from .guard import guard_disabled, too_big
from .normalize import key, normalize, strict_normalize

__all__ = ["MODES", "MAX_ANSWER_CHARS", "strict_box_match", "prepare", "fast_decide", "slow_decide",
           "verify_answer"]

MODES = ("math", "strict_box")
MAX_ANSWER_CHARS = 5000



def strict_box_match(response: str, gold) -> bool:
    """Exact match of the last ``\\boxed{}`` content (light normalisation) with the gold."""
    if not isinstance(response, str):
        return False
    b = last_boxed(response, join=False)
    if b is None:
        return False
    pred = strict_normalize(b[1])
    g = strict_normalize(extract_gold(gold))
    return bool(pred) and pred == g


def prepare(response, gold, mode: str) -> tuple[str | None, str]:
    pred = extract_answer(response if isinstance(response, str) else ("" if response is None else str(response)))
    return pred, extract_gold(gold)


def fast_decide(pred: str | None, gold: str, guard: bool) -> tuple[bool | None, str]:
    """Parent-side decision: (result or None, reason)."""
    if pred is None or not gold:
        return False, "empty"
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return pred.strip() == gold.strip(), "fast"  # no real answer is this long
    try:
        p, g = normalize(pred), normalize(gold)
        if p and g and key(p) == key(g):
            return True, "fast"
        if guard and (too_big(p) or too_big(g)):
            return False, "guard"
        if len(p) > 20 * MAX_ATOM_LEN or len(g) > 20 * MAX_ATOM_LEN:
            return False, "fast"
        r = answers_equal(pred, gold, backend=None)
    except RecursionError:
        return None, ""
    return r, "fast"


def verify_answer(response: str, gold, mode: str = "math", guard_huge: bool = True) -> bool:
    """Verify one answer in this process (no timeout protection -- use ``MathVerifier``
    for untrusted model outputs)."""
    if mode == "strict_box":
        return strict_box_match(response, gold)
    if mode != "math":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pred, g = prepare(response, gold, mode)
    r, _ = fast_decide(pred, g, guard_huge)
    if r is not None:
        return r
    return slow_decide(pred, g, guard_huge)


def slow_decide(pred: str, gold: str, guard: bool) -> bool:
    """The full comparison with the sympy backend (what a worker runs)."""
    from .symbolic import SympyBackend

    with guard_disabled(not guard):
        return bool(answers_equal(pred, gold, backend=SympyBackend()))
