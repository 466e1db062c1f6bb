"""Plain numeric literals, base-b numerals and words (pure Python, exact arithmetic).

``simple_number`` recognises integers, decimals, fractions (``\\frac{a}{b}``, ``a/b``), mixed
numbers (``2\\frac{1}{2}``, ``2 1/2``), repeating decimals (``0.\\overline{3}``) and
scientific notation (``3.3\\times10^{12}``) and returns the exact value as a ``Fraction``
plus, for decimals, half a unit of the last written digit. ``numbers_equal`` implements the
decimal-vs-exact rule shared with the sympy backend.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["REL_TOL", "simple_number", "numbers_equal", "pct_candidates", "base_numeral", "is_word"]

# Relative accuracy a decimal needs to stand for an exact value (1/3 vs 0.333333 pass,
# 0.333 does not). Exact values (integers, fractions, surds) are compared exactly.
REL_TOL = 2e-6

_INT = r"\d+"
_DEC = r"(?:\d+\.\d*|\.\d+|\d+)"
_RE_DEC = re.compile(rf"([+-]?)({_DEC})")
_RE_FRAC = re.compile(rf"([+-]?)\\frac\{{([+-]?{_DEC})\}}\{{([+-]?{_DEC})\}}")
_RE_FRAC_SHORT = re.compile(r"([+-]?)\\frac(\d)(\d)")
_RE_SLASH = re.compile(rf"([+-]?)\(?([+-]?{_DEC})\)?/\(?([+-]?{_DEC})\)?")
_RE_MIXED = re.compile(rf"([+-]?)({_INT})\s*\\frac\{{({_INT})\}}\{{({_INT})\}}")
_RE_MIXED_SLASH = re.compile(rf"([+-]?)({_INT}) ({_INT})/({_INT})")
_RE_REPEAT = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d{1,20})\}")
_RE_SCI = re.compile(rf"([+-]?)(?:({_DEC})\\times)?10\^\{{?([+-]?\d+)\}}?")
_RE_BASE = re.compile(r"([0-9A-Za-z]+)_\{?\(?(\d+)\)?\}?")
_RE_WORD = re.compile(r"[A-Za-z][A-Za-z '\-]*[A-Za-z]")


def simple_number(text: str) -> tuple[Fraction, Fraction | None] | None:
    """``(value, half_ulp)`` for plain numeric literals, else None. ``half_ulp`` is half a unit
    of the last written digit of a decimal ("0.333" -> 0.0005), None for exact literals."""
    t = text.replace(" ", "")
    if not t or len(t) > 200:
        return None
    try:
        m = _RE_MIXED_SLASH.fullmatch(text.strip())  # "1 1/2" before "11/2"
        if m:
            whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
            if den != 0 and num < den:
                return _sign(m.group(1), whole + Fraction(num, den)), None
        m = _RE_REPEAT.fullmatch(t)
        if m:
            whole, fixed, rep = m.group(2) or "0", m.group(3) or "", m.group(4)
            v = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
            v += Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
            return _sign(m.group(1), v), None
        m = _RE_DEC.fullmatch(t)
        if m:
            return _sign(m.group(1), Fraction(m.group(2))), _half_ulp(m.group(2), 0)
        m = _RE_FRAC.fullmatch(t) or _RE_FRAC_SHORT.fullmatch(t) or _RE_SLASH.fullmatch(t)
        if m:
            if "." in m.group(2) + m.group(3):
                return None  # a fraction of decimals: leave it to sympy
            num, den = Fraction(m.group(2)), Fraction(m.group(3))
            if den == 0:
                return None
            return _sign(m.group(1), num / den), None
        m = _RE_MIXED.fullmatch(t)
        if m:
            whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
            if den == 0 or num >= den:
                return None
            return _sign(m.group(1), whole + Fraction(num, den)), None
        m = _RE_SCI.fullmatch(t)
        if m and abs(int(m.group(3))) <= 400:
            mant = Fraction(m.group(2)) if m.group(2) else Fraction(1)
            exp = int(m.group(3))
            hu = _half_ulp(m.group(2), exp) if m.group(2) else None
            return _sign(m.group(1), mant * Fraction(10) ** exp), hu
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _half_ulp(literal: str, exp10: int) -> Fraction | None:
    if "." not in literal:
        return None
    k = len(literal.split(".", 1)[1])
    if k == 0:
        return None
    return Fraction(1, 2) * Fraction(10) ** (exp10 - k)


def _sign(sign: str, v: Fraction) -> Fraction:
    return -v if sign == "-" else v


def numbers_equal(a: Fraction, ua: Fraction | None, b: Fraction, ub: Fraction | None) -> bool:
    """Exact values must be equal. A decimal matches an exact value if it is that value
    rounded to the decimal's own last digit *and* within ``REL_TOL`` (so 0.333333 = 1/3 but
    0.333 != 1/3, and 16386.03 != 16386). Two decimals must be equal as written."""
    if a == b:
        return True
    if (ua is None) == (ub is None):
        return False
    dec, u, ex = (a, ua, b) if ua is not None else (b, ub, a)
    diff = abs(dec - ex)
    return diff <= u and diff <= Fraction(REL_TOL) * max(abs(dec), abs(ex))


def pct_candidates(v: tuple[Fraction, Fraction | None], pct: bool) -> list:
    if not pct:
        return [v]
    return [v, (v[0] / 100, None if v[1] is None else v[1] / 100)]


def base_numeral(text: str) -> tuple[str, int] | None:
    m = _RE_BASE.fullmatch(text.replace(" ", ""))
    if not m:
        return None
    digits, base = m.group(1), int(m.group(2))
    if not 2 <= base <= 36:
        return None
    try:
        int(digits, base)
    except ValueError:
        return None
    return digits.upper().lstrip("0") or "0", base


def is_word(text: str) -> bool:
    return bool(_RE_WORD.fullmatch(text)) and text.lower() not in {"pi", "infty", "inf", "e"}


# --------------------------------------------------------------------------- comparison
