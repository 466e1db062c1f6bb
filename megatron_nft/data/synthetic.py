"""Synthetic arithmetic task for the tiny CPU demo.

Problems look like ``"What is 347 + 285?"`` with an integer gold answer. Addition of 2-3 digit
numbers is the default; subtraction (``a - b`` with ``a >= b``) and multiplication by one digit
(``a * d``) can be switched on with ``ops``.

Two corpora are built from the same problem generator:

* :func:`make_problems` - prompts with gold answers for online RL (train split) and evaluation
  (eval split). The split is a fixed function of the problem (a SHA-256 hash of ``"a op b"``),
  so an eval problem can never appear in any train set, whatever the seeds or sizes.
* :func:`make_sft_corpus` - a warm-start SFT corpus whose responses are *deliberately mixed*:
  with probability ``bug_rate`` the answer is computed with a systematic bug (the carries, or
  borrows, are forgotten: see :func:`buggy_answer`), otherwise correctly. After SFT the policy
  puts mass on both the right and the buggy answer of every carry problem; greedy accuracy is
  low and online NFT has right and wrong samples to learn from.

About ``carry_fraction`` (default 0.75) of sampled problems involve at least one carry (borrow
for subtraction), so the bug matters for most of them. Everything is deterministic given the
seed (``random.Random`` seeded with a string, no process-salted ``hash``).
"""
from __future__ import annotations

import hashlib
import random
import re
from typing import Iterable, Optional, Sequence

OPS = ("+", "-", "*")
EVAL_PERMILLE = 100  # 10% of the problem space belongs to the eval split
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
_PROBLEM_RE = re.compile(r"What is (\d+) ([+\-*]) (\d+)\?")


# --------------------------------------------------------------------------- arithmetic


def _digits(x: int) -> list[int]:
    """Decimal digits of ``x >= 0``, least significant first."""
    return [int(c) for c in reversed(str(x))]


def correct_answer(a: int, b: int, op: str = "+") -> int:
    """The true result of ``a op b``."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def _columns(a: int, b: int, op: str) -> list[int]:
    """Per-column raw results (least significant first), before any carry/borrow handling."""
    da = _digits(a)
    if op == "*":
        if not 0 <= b <= 9:
            raise ValueError(f"multiplication is by one digit, got {b}")
        return [d * b for d in da]
    db = _digits(b)
    n = max(len(da), len(db))
    da += [0] * (n - len(da))
    db += [0] * (n - len(db))
    if op == "+":
        return [x + y for x, y in zip(da, db)]
    if op == "-":
        if a < b:
            raise ValueError(f"subtraction needs a >= b, got {a} - {b}")
        return [x - y for x, y in zip(da, db)]
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def has_carry(a: int, b: int, op: str = "+") -> bool:
    """Whether column-wise ``a op b`` needs a carry (``+``, ``*``) or a borrow (``-``)."""
    return any(c >= 10 or c < 0 for c in _columns(a, b, op))


def buggy_answer(a: int, b: int, op: str = "+") -> int:
    """``a op b`` computed column by column with the carries (or borrows) forgotten.

    Each column keeps only its last digit: ``347 + 285`` -> ``7+5=12 -> 2``, ``4+8=12 -> 2``,
    ``3+2=5`` -> ``522`` (correct: 632). For ``-`` each column is ``(x - y) mod 10``; for ``*``
    each digit product ``mod 10``. The result equals :func:`correct_answer` exactly when
    :func:`has_carry` is false (every lost carry lowers the result by a positive amount).
    """
    return sum((c % 10) * 10**i for i, c in enumerate(_columns(a, b, op)))


# --------------------------------------------------------------------------- problems


def format_problem(a: int, b: int, op: str = "+") -> str:
    """The user-facing question, e.g. ``"What is 347 + 285?"``."""
    return f"What is {a} {op} {b}?"


def parse_problem(prompt: str) -> Optional[tuple[int, str, int]]:
    """Inverse of :func:`format_problem` (searches anywhere in ``prompt``); None if absent."""
    m = None
    for m in _PROBLEM_RE.finditer(prompt):
        pass
    return (int(m.group(1)), m.group(2), int(m.group(3))) if m else None


def split_of(a: int, b: int, op: str = "+") -> str:
    """``"eval"`` or ``"train"``: a fixed hash of the problem, independent of any seed."""
    h = int.from_bytes(hashlib.sha256(f"{a}{op}{b}".encode()).digest()[:8], "big")
    return "eval" if h % 1000 < EVAL_PERMILLE else "train"


SHAPES = ("mixed", "2+1")  # operand sizes: 2-3 digit pairs, or a 2-digit and a 1-digit number


def _sample_operands(rng: random.Random, op: str, want_carry: bool, shape: str = "mixed") -> tuple[int, int]:
    """Rejection-sample operands of the right shape whose carry status is ``want_carry``."""
    for _ in range(10_000):
        if shape == "2+1":
            a = rng.randint(10, 99)
        else:
            a = rng.randint(10, 99) if rng.random() < 0.5 else rng.randint(100, 999)
        if op == "*":
            b = rng.randint(2, 9)
        elif shape == "2+1":
            b = rng.randint(1, 9)
            if op == "-" and a < b:
                a, b = b, a
        else:
            b = rng.randint(10, 99) if rng.random() < 0.5 else rng.randint(100, 999)
            if op == "-" and a < b:
                a, b = b, a
        if has_carry(a, b, op) == want_carry:
            return a, b
    raise RuntimeError(f"could not sample a problem for op={op!r} carry={want_carry}")  # pragma: no cover


def _check(ops: Sequence[str], carry_fraction: float, split: str, shape: str = "mixed") -> None:
    bad = [o for o in ops if o not in OPS]
    if not ops or bad:
        raise ValueError(f"ops must be a non-empty subset of {OPS}, got {list(ops)}")
    if not 0.0 <= carry_fraction <= 1.0:
        raise ValueError(f"carry_fraction must be in [0, 1], got {carry_fraction}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _problem_stream(rng: random.Random, split: str, ops: Sequence[str], carry_fraction: float,
                    shape: str = "mixed"):
    """Endless stream of ``(a, op, b)`` in ``split``; ~``carry_fraction`` of them carry."""
    while True:
        op = ops[rng.randrange(len(ops))]
        a, b = _sample_operands(rng, op, rng.random() < carry_fraction, shape)
        if split_of(a, b, op) == split:
            yield a, op, b


def make_problems(
    n: int,
    seed: int = 0,
    split: str = "train",
    *,
    ops: Sequence[str] = ("+",),
    carry_fraction: float = 0.75,
    shape: str = "mixed",
) -> list[dict]:
    """``n`` distinct problems of ``split`` as ``{"prompt", "answer"}`` dicts.

    ``prompt`` is the bare question (``"What is 347 + 285?"``), ``answer`` the gold integer as
    a string. Extra keys for diagnostics: ``buggy_answer`` (str) and ``carry`` (bool).
    Deterministic in ``(n, seed, split, ops, carry_fraction)``.
    """
    _check(ops, carry_fraction, split, shape)
    rng = random.Random(f"problems-{seed}-{split}")
    seen: set[tuple[int, str, int]] = set()
    out: list[dict] = []
    stream = _problem_stream(rng, split, ops, carry_fraction, shape)
    misses = 0
    while len(out) < n:
        key = next(stream)
        if key in seen:
            misses += 1
            if misses > 100 * n + 10_000:
                raise ValueError(f"cannot draw {n} distinct {split} problems for ops={list(ops)}")
            continue
        seen.add(key)
        a, op, b = key
        out.append(
            dict(
                prompt=format_problem(a, b, op),
                answer=str(correct_answer(a, b, op)),
                buggy_answer=str(buggy_answer(a, b, op)),
                carry=has_carry(a, b, op),
            )
        )
    return out


def tiny_problem_kwargs(cfg) -> dict:
    """Arguments of this module's generators for a recipe's tiny task (``model.tiny.ops`` /
    ``model.tiny.shape``)."""
    return {"ops": tuple(cfg.model.tiny.ops.split(",")), "shape": cfg.model.tiny.shape}


def format_response(a: int, b: int, op: str, result: int, style: str = "boxed") -> str:
    """An SFT response that states ``result``.

    ``style="boxed"`` (default): ``"\\boxed{632}"`` - 6-7 tokens with the tiny tokenizer, the
    format is learned in a few steps and every loss token but the braces is an answer digit.
    ``style="equation"``: ``"347+285=632. \\boxed{632}"`` - ~19 tokens; restates the operands
    next to the result (more to copy, slower rollouts).
    """
    if style == "boxed":
        return f"\\boxed{{{result}}}"
    if style == "equation":
        return f"{a}{op}{b}={result}. \\boxed{{{result}}}"
    raise ValueError(f"unknown response style {style!r}; expected 'equation' or 'boxed'")


def make_sft_corpus(
    n: int,
    seed: int = 0,
    bug_rate: float = 0.6,
    *,
    ops: Sequence[str] = ("+",),
    carry_fraction: float = 0.75,
    style: str = "boxed",
    shape: str = "mixed",
) -> list[dict]:
    """``n`` warm-start SFT examples from the *train* split (never an eval problem).

    Each dict has ``prompt`` (bare question), ``response`` (see :func:`format_response`),
    plus ``answer`` (gold, str) and ``buggy`` (True when the buggy computation was used *and*
    it changed the answer). Problems may repeat. With probability ``bug_rate`` the stated
    result is :func:`buggy_answer`, else the correct one.
    """
    if not 0.0 <= bug_rate <= 1.0:
        raise ValueError(f"bug_rate must be in [0, 1], got {bug_rate}")
    _check(ops, carry_fraction, "train", shape)
    rng = random.Random(f"sft-{seed}")
    stream = _problem_stream(rng, "train", ops, carry_fraction, shape)
    out = []
    for _ in range(n):
        a, op, b = next(stream)
        gold = correct_answer(a, b, op)
        result = buggy_answer(a, b, op) if rng.random() < bug_rate else gold
        out.append(
            dict(
                prompt=format_problem(a, b, op),
                response=format_response(a, b, op, result, style),
                answer=str(gold),
                buggy=result != gold,
            )
        )
    return out


def classify_answer(prompt: str, answer: str) -> str:
    """``"correct"``, ``"buggy"`` (equals the no-carry result but is wrong) or ``"other"``."""
    p = parse_problem(prompt)
    if p is None:
        raise ValueError(f"not a synthetic problem: {prompt!r}")
    a, op, b = p
    ans = answer.strip()
    if ans == str(correct_answer(a, b, op)):
        return "correct"
    if ans == str(buggy_answer(a, b, op)):
        return "buggy"
    return "other"


def tokenizer_training_texts(
    n: int = 2000,
    seed: int = 0,
    *,
    system_prompt: Optional[str] = DEFAULT_SYSTEM_PROMPT,
    ops: Sequence[str] = OPS,
    extra: Iterable[str] = (),
) -> list[str]:
    """Texts to train the tiny tokenizer on: ChatML-rendered SFT examples of every style/op.

    The chat markers are added as special tokens by the tokenizer, so they are not learned
    here; the role names, the system prompt and ``\\boxed{`` are, which keeps prompts short.
    """
    texts = list(extra)
    for style in ("equation", "boxed"):
        for ex in make_sft_corpus(n // 2, seed, 0.5, ops=ops, style=style):
            sys_part = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
            texts.append(
                f"{sys_part}<|im_start|>user\n{ex['prompt']}<|im_end|>\n"
                f"<|im_start|>assistant\n{ex['response']}<|im_end|>\n"
            )
    return texts
