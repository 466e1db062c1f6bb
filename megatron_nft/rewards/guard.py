"""Static guard against answers whose exact evaluation would explode (pure Python).

latex2sympy / sympy evaluate integer powers and factorials exactly while parsing, so
``5^{(5^{(5^{(5^5)})}-4)}`` never returns and a signal cannot interrupt the big-integer
multiplication. The verifier's real protection is the external SIGKILL of the worker; this
guard only avoids spending the whole timeout on inputs that are obviously hopeless.

``too_big(latex)`` parses the numeric skeleton of a LaTeX expression (numbers, + - * / ^ !,
``\\frac``, ``\\cdot``, ``\\times``, groups) and bounds the number of decimal digits of every
intermediate value. Symbols count as size 1 (they don't blow up while parsing). It errs on the
side of "not too big": anything it does not understand is treated as small, so it never
rejects ordinary answers.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re

__all__ = ["too_big", "guard_disabled", "MAX_DIGITS"]

# Exact integers above this many decimal digits are not evaluated (2006! has ~5,700 digits).
MAX_DIGITS = 50_000
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("math_verifier_guard", default=True)
_INF = float("inf")
_TOKEN = re.compile(
    r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(\\[a-zA-Z]+)|(\*\*|[-+*/^!{}()\[\],=<>|&_]|\\[{}!,; ])|(.))",
    re.DOTALL,
)
_IGNORED_CMDS = {"\\left", "\\right", "\\big", "\\Big", "\\bigl", "\\bigr", "\\displaystyle"}
_MUL_CMDS = {"\\cdot", "\\times"}


class _Parser:
    """Recursive descent over tokens; values are log10 upper bounds of magnitudes."""

    def __init__(self, text: str):
        self.toks: list[str] = []
        for m in _TOKEN.finditer(text):
            tok = next((g for g in m.groups() if g is not None), "")
            if tok and tok not in _IGNORED_CMDS and not tok.isspace():
                self.toks.append(tok)
        self.i = 0
        self.worst = 0.0
        self.depth = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str | None:
        tok = self.peek()
        self.i += 1
        return tok

    def note(self, v: float) -> float:
        if v > self.worst:
            self.worst = v
        return v

    def run(self) -> float:
        while self.i < len(self.toks):
            self.note(self.expr())
            if self.worst > MAX_DIGITS:
                break
            self.i += 1  # skip a separator the grammar does not handle (',', '=', ...)
        return self.worst

    def expr(self) -> float:
        v = self.term()
        while self.peek() in ("+", "-"):
            self.take()
            v = self.note(max(v, self.term()) + 0.302)
        return v

    def term(self) -> float:
        v = self.power()
        while True:
            tok = self.peek()
            if tok in ("*", "/") or tok in _MUL_CMDS:
                self.take()
                v = self.note(v + self.power())
            elif tok is not None and (tok in ("{", "(", "[") or tok == "\\frac" or tok == "\\sqrt"
                                      or tok[0].isdigit() or tok[0].isalpha()
                                      or (tok.startswith("\\") and tok[1:2].isalpha())):
                v = self.note(v + self.power())  # implicit multiplication
            else:
                return v

    def power(self) -> float:
        base = self.unary()
        while True:
            tok = self.peek()
            if tok == "!":
                self.take()
                base = self.note(_factorial_digits(base))
            elif tok in ("^", "**"):
                self.take()
                self.depth += 1
                exp = self.unary_power()
                self.depth -= 1
                base = self.note(_power_digits(base, exp))
            elif tok == "_":
                self.take()
                self.atom()  # subscripts do not change magnitude
            else:
                return base

    def unary_power(self) -> float:
        # exponent binds tighter: a^b^c = a^(b^c)
        v = self.unary()
        while self.peek() == "!":
            self.take()
            v = self.note(_factorial_digits(v))
        if self.peek() in ("^", "**"):
            self.take()
            v = self.note(_power_digits(v, self.unary_power()))
        return v

    def unary(self) -> float:
        while self.peek() in ("-", "+"):
            self.take()
        return self.atom()

    def atom(self) -> float:
        if self.depth > 50:
            return 0.0
        tok = self.take()
        if tok is None:
            return 0.0
        if tok in ("{", "(", "["):
            close = {"{": "}", "(": ")", "[": "]"}[tok]
            self.depth += 1
            v = self.expr()
            while self.peek() not in (close, None):
                self.take()
                v = max(v, self.expr())
            self.take()
            self.depth -= 1
            return self.note(v)
        if tok[0].isdigit() or tok[0] == ".":
            try:
                x = float(tok)
            except ValueError:
                return 0.0
            return math.log10(x) if x > 1 else 0.0
        if tok == "\\frac" or tok == "\\dfrac" or tok == "\\tfrac" or tok == "\\binom":
            a = self.atom()
            b = self.atom()
            if tok == "\\binom":
                return self.note(_factorial_digits(a))
            return self.note(a + b)
        if tok == "\\sqrt":
            if self.peek() == "[":
                self.atom()
            return self.atom()
        return 0.0  # symbols, functions, unknown tokens


def _value_upper(digits: float) -> float:
    """Upper bound of a value given a log10 bound (inf when too large to matter)."""
    if digits > 300:
        return _INF
    return 10.0 ** digits


def _power_digits(base: float, exp: float) -> float:
    e = _value_upper(exp)
    if e == _INF:
        return _INF if base > 0 else 0.0
    if base <= 0:  # |base| <= 1 (or a symbol)
        return 0.0
    return base * e


def _factorial_digits(n_digits: float) -> float:
    n = _value_upper(n_digits)
    if n == _INF:
        return _INF
    return n * math.log10(max(n, 2.0))


@contextlib.contextmanager
def guard_disabled(disabled: bool = True):
    """Within this context ``too_big`` is always False (tests of the external timeout)."""
    token = _ENABLED.set(not disabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def too_big(latex: str) -> bool:
    """True if some exact integer in ``latex`` would exceed ``MAX_DIGITS`` digits."""
    if not latex or ("^" not in latex and "!" not in latex and "binom" not in latex):
        return False
    if not _ENABLED.get():
        return False
    try:
        return _Parser(latex[:5000]).run() > MAX_DIGITS
    except RecursionError:
        return True
    except Exception:
        return False
