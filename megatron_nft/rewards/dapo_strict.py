"""The NFT reference's ``math_dapo`` reward, re-implemented: strict box and "Answer:" line.

What was read: volcengine/verl at commit ``01ef7184821d0d7844796ec0ced17665c1f50673`` (the
commit NVlabs/NFT's README pins, 2025-03-20), file ``verl/utils/reward_score/math_dapo.py``;
and NVlabs/NFT at ``b358faeb691391b500bfdabe667f9450aab6e70f``, ``verifier.py`` (the reward
dispatch ``main_nft.py`` installs over verl's): data sources ``math_dapo_boxed``,
``amc_dapo_boxed``, ``aime_2025_dapo_boxed``, ``amc2023_dapo_boxed`` (AIME/AMC validation and
the boxed DAPO-Math-17k training set) call ``math_dapo.compute_score(response, gt,
strict_box_verify=True)``; ``math_dapo`` (plain DAPO data) calls it without strict box.

Behaviour (re-implemented here from that reading, not copied):

* **Window.** ``compute_score`` first keeps the LAST 300 characters of the response. The strict
  box then keeps the last 100 of those (so: the last 100 characters of the response); the
  "Answer:" route looks at all 300. Text before the window is invisible: a box that starts
  before it, or a box whose ``\\boxed{`` is cut by it, is not found.
* **Strict box** (``strict_box_score``): the LAST occurrence of the literal ``\\boxed{`` in the
  window (``rfind``; ``\\boxed {``, ``\\boxed 5``, ``\\fbox{..}`` are not boxes); from there
  braces are counted naively (``\\{`` and ``\\}`` count too) until the count returns to zero;
  if it never does (box still open at the end) there is no answer. The content between
  ``\\boxed{`` and its closing brace is compared with the gold string EXACTLY: no strip, no
  normalisation, no numeric comparison (``\\boxed{ 25}``, ``\\boxed{25.0}``, ``\\boxed{025}`` are
  all wrong for gold ``25``; text after the box does not matter as long as it stays in the
  window). The gold is used as given (``reward_model.ground_truth``, a string; no box around it).
* **"Answer:" route** (``answer_line_score``, non-strict ``math_dapo``): the last match of
  ``(?i)Answer\\s*:\\s*([^\\n]+)`` in the 300-character window (``"[INVALID]"`` when none), then
  ``normalize_final_answer`` on both the prediction and the gold, compared as strings.
* **normalize_final_answer**: keep the text after the last ``=``; then the literal replacements
  of ``SUBSTITUTIONS`` in order (``"an "``, ``"a "`` deleted, ``.$`` -> ``$``, ``\\$`` and
  ``"\\ "`` and every space deleted, ``mbox`` -> ``text``, ``\\text{and}`` -> ``,``,
  ``\\text{m}`` -> ``\\text{}``); then every string of ``REMOVED_EXPRESSIONS`` deleted, in order
  (units and words such as ``square``, ``ways``, ``degrees``, ``cm``, ``\\text{}``, ``^\\circ``,
  ...; plain substring deletion, so ``"squares"`` -> ``"s"``); then the regex steps
  (``$..$`` kept as its inner part, ``\\text{X}``/``\\textbf{X}``/``\\overline{X}`` -> ``X``
  non-greedy, ``\\boxed{X}`` -> ``X`` greedy, ``fracab`` -> ``frac{a}{b}``, ``sqrta`` ->
  ``sqrt{a}``), every ``$`` deleted; a string of digits and commas loses its commas
  (``1,000`` -> ``1000``; ``034`` stays ``034``); finally whitespace is stripped.
* **Correct** = ``acc``: the strings are equal (score +1), otherwise wrong (-1).

``compute_score`` applies the window and dispatches like the reference; every function returns
``(correct, extracted_answer)``, the answer being ``None`` when there is no box (strict) or the
normalised prediction (``"[INVALID]"`` normalised) on the "Answer:" route.
"""
from __future__ import annotations

import re
from typing import Optional

__all__ = ["RESPONSE_WINDOW", "STRICT_BOX_WINDOW", "SUBSTITUTIONS", "REMOVED_EXPRESSIONS",
           "last_box_reference", "strict_box_score", "normalize_final_answer", "answer_line_score",
           "compute_score"]

RESPONSE_WINDOW = 300  # compute_score: solution_str[-300:]
STRICT_BOX_WINDOW = 100  # is_correct_strict_box: pred[-100:]
_BOX = "\\boxed{"
_ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
_INVALID = "[INVALID]"

# Literal replacements, applied in this order (math_dapo.SUBSTITUTIONS).
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""),
    ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)
# Substrings deleted, in this order (math_dapo.REMOVED_EXPRESSIONS).
REMOVED_EXPRESSIONS: tuple[str, ...] = (
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds",
    "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
    "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
)
# Regex rewrites after the removals, in order (``.`` does not cross newlines, as in ``re``).
_REWRITES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$"),  # keep the first $..$ segment of each line
    (r"(\\text\{)(.*?)(\})", r"\2"),
    (r"(\\textbf\{)(.*?)(\})", r"\2"),
    (r"(\\overline\{)(.*?)(\})", r"\2"),
    (r"(\\boxed\{)(.*)(\})", r"\2"),  # greedy: up to the last } of the line
    (r"(frac)([^{])(.)", r"frac{\2}{\3}"),
    (r"(sqrt)([^{])", r"sqrt{\2}"),
))


def last_box_reference(text: str) -> Optional[str]:
    """Content of the last literal ``\\boxed{`` with naive brace counting; None if none/unclosed."""
    start = text.rfind(_BOX)
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(_BOX):i]
    return None


def strict_box_score(response: str, gold: str) -> tuple[bool, Optional[str]]:
    """``math_dapo`` strict box: ``(correct, box content or None)``; see the module docstring."""
    window = response[-RESPONSE_WINDOW:][-STRICT_BOX_WINDOW:]
    pred = last_box_reference(window)
    return pred == gold, pred


def normalize_final_answer(answer: str) -> str:
    """``math_dapo``'s answer normalisation (the steps listed in the module docstring)."""
    s = answer.split("=")[-1]
    for old, new in SUBSTITUTIONS:
        s = s.replace(old, new)
    for expr in REMOVED_EXPRESSIONS:
        s = s.replace(expr, "")
    for rx, repl in _REWRITES:
        s = rx.sub(repl, s)
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()


def answer_line_score(response: str, gold: str) -> tuple[bool, str]:
    """``math_dapo`` without strict box: the last "Answer: X" line, normalised, equals the gold."""
    found = _ANSWER_LINE.findall(response[-RESPONSE_WINDOW:])
    pred = normalize_final_answer(found[-1] if found else _INVALID)
    return pred == normalize_final_answer(gold), pred


def compute_score(response: str, gold: str, strict_box: bool = True) -> tuple[bool, Optional[str]]:
    """The reference's ``math_dapo.compute_score`` as ``(correct, extracted answer)``.

    ``strict_box=True`` is what NFT uses for its AIME/AMC validation and its boxed training data."""
    if strict_box:
        return strict_box_score(response, gold)
    return answer_line_score(response, gold)
