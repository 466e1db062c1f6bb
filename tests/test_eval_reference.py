"""The reference grader (``nft-eval --grader reference``): verl ``math_dapo`` (strict box and
"Answer:" route) and NFT's math-verify call, from the behaviour documented in
``megatron_nft.rewards.dapo_strict`` / ``megatron_nft.eval.reference``. Expected values are
derived by hand from that documented behaviour (window, naive brace count, exact comparison,
the normalisation steps), not from running the code under test."""
from __future__ import annotations

import pytest

from megatron_nft.eval import benchmarks as B
from megatron_nft.eval.reference import REFERENCE_ROUTE, grade_reference, math_verify_score, reference_gold
from megatron_nft.rewards.dapo_strict import (answer_line_score, compute_score, last_box_reference,
                                              normalize_final_answer, strict_box_score)


@pytest.mark.parametrize("response,gold,expected", [
    (r"so \boxed{25}", "25", (True, "25")),
    (r"so \boxed{25}.", "25", (True, "25")),  # text after the box is fine
    (r"\boxed{ 25}", "25", (False, " 25")),  # no strip
    (r"\boxed{025}", "25", (False, "025")),  # no numeric comparison
    (r"\boxed{27.0}", "27", (False, "27.0")),
    (r"\boxed{25}", " 25", (False, "25")),  # the gold is not stripped either
    ("the answer is 25", "25", (False, None)),  # no box
    (r"\boxed{3} and then \boxed{25}", "25", (True, "25")),  # the last box counts
    (r"\boxed{25} then \boxed{3}", "25", (False, "3")),
    (r"\boxed 25", "25", (False, None)),  # only the literal "\boxed{" opens a box
    (r"\boxed {25}", "25", (False, None)),
    (r"\fbox{25}", "25", (False, None)),
    (r"\boxed{25", "25", (False, None)),  # never closed
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", (True, r"\frac{1}{2}")),
    (r"\boxed{\{1,2\}}", r"\{1,2\}", (True, r"\{1,2\}")),  # \{ and \} counted like { }
    (r"\boxed{a\}b}", "a", (False, "a\\")),  # ... so \} closes the box here
    (r"\boxed{\text{5 cm}}", "5", (False, r"\text{5 cm}")),  # no normalisation
])
def test_strict_box_cases(response, gold, expected):
    assert strict_box_score(response, gold) == expected
    assert compute_score(response, gold, strict_box=True) == expected


def test_strict_box_window():
    box = r"\boxed{25}"  # 10 characters
    assert strict_box_score(box + "x" * 90, "25") == (True, "25")  # 100 characters: box is the first 10
    assert strict_box_score(box + "x" * 91, "25") == (False, None)  # the backslash falls out of the window
    assert strict_box_score("y" * 5000 + box, "25") == (True, "25")
    assert strict_box_score(r"\boxed{25}" + "z" * 200 + r"\boxed{7}", "25") == (False, "7")
    # a box opened before the window (103 chars: "\boxed{" cut to "xed{") and closed inside it
    assert strict_box_score(r"\boxed{" + "2" * 95 + "}", "2" * 95) == (False, None)
    assert strict_box_score(r"\boxed{" + "2" * 92 + "}", "2" * 92) == (True, "2" * 92)
    assert last_box_reference(r"a \boxed{x} b") == "x" and last_box_reference("none") is None


@pytest.mark.parametrize("raw,expected", [
    (r"x = 10 \text{ cm}", "10"),  # after "=", spaces out, "cm" out, \text{} out
    ("1,000", "1000"),  # digits and commas: commas removed
    ("034", "034"),  # leading zeros stay
    ("27.0", "27.0"),
    (r"\$5", "5"),
    (r"$\frac12$", r"\frac{1}{2}"),  # shorthand frac expanded, $ removed
    (r"\sqrt3", r"\sqrt{3}"),
    ("a square", ""),  # "a " deleted, then "square"
    ("5 degrees", "5"),
    (r"1 \text{and} 2", "12"),  # \text{and} -> "," then digits+commas -> "12"
    (r"\boxed{5}", "5"),
    (r"90^\circ", "90"),
    (r"\text{(B)}", "(B)"),
    (r"y = \overline{3}", "3"),
])
def test_normalize_final_answer(raw, expected):
    assert normalize_final_answer(raw) == expected


def test_answer_line_route():
    assert answer_line_score("work...\nAnswer: 10 cm", "10") == (True, "10")
    assert answer_line_score("answer : 1,000\nthanks", "1000") == (True, "1000")
    assert answer_line_score("Answer: 3\nAnswer: 4", "4") == (True, "4")  # the last one
    assert answer_line_score("The answer is 5", "5") == (False, "[INVALID]")
    # the 300-character window: "Answer: 7\n" (10 chars) + 295 -> cut to ": 7\n..."
    assert answer_line_score("Answer: 7\n" + "y" * 295, "7") == (False, "[INVALID]")
    assert answer_line_score("Answer: 7\n" + "y" * 290, "7") == (True, "7")
    assert compute_score(r"Answer: $\frac12$", r"\frac{1}{2}", strict_box=False) == (True, r"\frac{1}{2}")
    assert compute_score(r"\boxed{5}", "5", strict_box=False) == (False, "[INVALID]")  # no box reading


def test_math_verify_route():
    assert math_verify_score(r"so \boxed{\frac{1}{2}}", "0.5")[0]
    assert math_verify_score(r"The final answer is $\frac{1}{2}$.", r"\frac12")[0]
    assert math_verify_score(r"\boxed{7}" + " more words" * 200, "7")[0]  # whole response, no window
    assert not math_verify_score(r"\boxed{8}", "7")[0]
    assert math_verify_score("nothing to extract here", "7") == (False, None)
    assert not math_verify_score(r"\boxed{7}", "")[0]  # a gold that does not parse: wrong


def test_routing_and_golds():
    assert {b for b, r in REFERENCE_ROUTE.items() if r == "math_dapo_strict_box"} == {"aime24", "aime25", "amc23"}
    assert set(REFERENCE_ROUTE) == set(B.BENCHMARKS)
    aime = B.Problem("aime24", 7, "q", "025", "strict_box")
    assert reference_gold(aime) == "25"  # DAPO-style integer gold, see eval/reference.py
    assert reference_gold(B.Problem("math500", 0, "q", "025", "math")) == "025"
    assert reference_gold(B.Problem("amc23", 0, "q", r"\frac{1}{2}", "strict_box")) == r"\frac{1}{2}"
    flags, answers = grade_reference(
        [aime, B.Problem("math500", 0, "q", r"\frac{1}{2}", "math")],
        [[r"\boxed{25}", r"\boxed{025}", "25"], [r"\boxed{0.5}", r"Answer: 0.5"]])
    assert flags == [[True, False, False], [True, True]]
    assert answers[0] == ["25", "025", None]
