"""String normalisation of math answers (pure Python, no sympy).

Two levels:

* ``normalize(s)``: whole-answer rewriting that is safe everywhere -- delimiters, ``\\left``/
  ``\\right``, spacing macros, ``\\dfrac``/``\\tfrac``, relation spellings, unicode symbols,
  degrees, ``\\$``, "x \\in ...", trailing punctuation, "and"/"or" between answers -> ",",
  thousands separators of a lone number ("1,000", "1{,}000", "1,\\!000", "1\\,000").
* ``clean_atom(s)``: rules for one answer element -- units after a number (``\\text{ cm}^2``,
  "dollars", "meters"), a lone ``\\text{...}``, "(C)" -> "C", scientific notation
  ("3.3e12" -> ``3.3\\times10^{12}``), percent (returned as a flag).

``key(s)`` is the whitespace-free form used for plain string equality.

Plain numeric literals (exact arithmetic): ``simple_number`` recognises integers, decimals,
fractions (``\\frac{a}{b}``, ``a/b``), mixed numbers (``2\\frac{1}{2}``, ``2 1/2``), repeating
decimals (``0.\\overline{3}``) and scientific notation (``3.3\\times10^{12}``) and returns the
exact value as a ``Fraction`` plus, for decimals, half a unit of the last written digit;
``numbers_equal`` implements the decimal-vs-exact rule shared with the sympy backend;
``base_numeral`` / ``is_word`` recognise ``204_5`` and plain words.
"""

from __future__ import annotations

import re
from fractions import Fraction

from megatron_nft.latex import close_index, strip_math_delims

__all__ = ["normalize", "clean_atom", "key", "strict_normalize", "THOUSANDS", "REL_TOL", "simple_number",
           "numbers_equal", "pct_candidates", "base_numeral", "is_word"]

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ", "\u00f7": "\\div ", "\u221e": "\\infty ", "\u03c0": "\\pi ",
    "\u221a": "\\sqrt", "\u2264": "\\leq ", "\u2265": "\\geq ", "\u2260": "\\neq ",
    "\u222a": "\\cup ", "\u2229": "\\cap ", "\u2205": "\\emptyset ", "\u00b0": "^\\circ ",
    "\u2009": " ", "\u00a0": " ", "\u202f": " ", "\u3000": " ", "\uff1a": ":", "\uff0c": ",",
}
_UNICODE_RE = re.compile("|".join(re.escape(k) for k in _UNICODE))

_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])\.?")
_SPACES = re.compile(r"(?<!\\)\\(?:[,;: ]|quad|qquad|enspace|thinspace|medspace|hspace\{[^{}]*\})|~")
_WRAPPERS = r"(?:text|textbf|textit|textrm|textnormal|textsf|mathrm|mathbf|mathit|mathsf|mbox|operatorname|hbox)"
_TEXT_ANDOR = re.compile(r"\\" + _WRAPPERS + r"\s*\{\s*,?\s*(?:and|or)\s*\}")
_PLAIN_ANDOR = re.compile(r"(?<![a-zA-Z\\])\s*,?\s*\b(?:and|or)\b\s*(?![a-zA-Z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\^\s*\{\s*\\text\{\s*o\s*\}\s*\}")
_IN_PREFIX = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*\\in\s*")
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:\\" + _WRAPPERS + r"\s*\{\s*)?(?:the\s+)?(?:final\s+)?answer(?:\s+is)?(?![a-zA-Z])\s*[:：]?\s*\}?\s*",
    re.IGNORECASE,
)
THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_THOUSANDS_SPACE = re.compile(r"^[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_SCI = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*[eE]\s*([+-]?\d+)$")
_SCI_TIMES = re.compile(r"(\d)\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*")
_WHOLE_TEXT = re.compile(r"^\\" + _WRAPPERS + r"\s*\{([^{}]*)\}$")
_TRAIL_TEXT = re.compile(
    r"^(.*?\S)\s*\\" + _WRAPPERS + r"\s*\{[^{}\d]*\}(?:\s*\^\s*\{?-?\d\}?)?\s*(?:/\s*\\" + _WRAPPERS + r"\s*\{[^{}\d]*\}(?:\s*\^\s*\{?-?\d\}?)?)*$"
)
_PLAIN_NUMBER = r"[+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:\s*\\times\s*10\^\{?[+-]?\d+\}?)?"
_NUM_FRAC = r"(?:" + _PLAIN_NUMBER + r"|[+-]?\\frac\{[^{}]*\}\{[^{}]*\}|[+-]?\\sqrt\{[^{}]*\})"
_UNIT_WORDS = re.compile(
    r"^(" + _NUM_FRAC + r")\s*(?:(?:\\(?:mu|AA|Omega|ohm)\s*)?[a-zA-Z]{2,}[a-zA-Z .\-/]*|[mshgJKNWVL])(?:\s*\^\s*\{?-?\d\}?)?(?:\s*/\s*[a-zA-Z]+(?:\s*\^\s*\{?-?\d\}?)?)*\.?$"
)
_KEEP_WORDS = {"pi", "sqrt", "infty", "inf", "i", "e", "frac", "cdot", "times"}
_PCT = re.compile(r"\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\s\bpercent\b|\s\bpct\b)\s*$")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?$")
_DOLLAR_WORDS = re.compile(r"\s*\b(?:dollars?|usd|cents?)\b\.?\s*$", re.IGNORECASE)


def _strip_outer(s: str) -> str:
    s = s.strip()
    changed = True
    while changed and s:
        inner = strip_math_delims(s)
        changed, s = inner != s, inner
        if s.startswith("{") and s.endswith("}") and close_index(s, 0) == len(s) - 1:
            s = s[1:-1].strip()
            changed = True
    return s


_DOUBLED_CMD = re.compile(
    r"\\\\(?=(?:le|ge|leq|geq|neq|lt|gt|frac|dfrac|sqrt|left|right|text|pi|cdot|times|infty|in|cup|cap|pm)(?![a-zA-Z]))"
)
_THIN_THOUSANDS = re.compile(r"(\d),\\!\s*(?=\d{3}(?!\d))")
_ROW_END = re.compile(r"\\\\\s*(?=\\end\{)")


def _repair(s: str) -> str:
    """Spelling repairs: a doubled backslash before a command (``-2 \\\\le x``, JSON escaped
    twice), ``12,\\!000`` thousands (before ``\\!`` is dropped), a ``\\\\`` ending the last row
    of a matrix."""
    s = _DOUBLED_CMD.sub(lambda m: "\\", s)
    s = _THIN_THOUSANDS.sub(r"\1,", s)
    return _ROW_END.sub("", s)


def normalize(s: str) -> str:
    """Whole-answer normalisation (see module docstring). Never raises."""
    if not s:
        return ""
    s = str(s)
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = re.sub(r"\s+", " ", s)  # first: no regex below ever sees a long run of spaces
    s = re.sub(r"\\boxed\s*|\\fbox\s*", "", s)
    s = re.sub(r"(?<!\\)\$", " ", s)
    s = _strip_outer(s)
    s = _repair(s)
    s = s.replace("\\displaystyle", " ").replace("\\!", "")
    s = _SIZING.sub("", s)
    s = _SPACES.sub(" ", s)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\\[dt]binom", r"\\binom", s)
    s = re.sub(r"\\geqslant|\\geq?(?![a-zA-Z])|>=", r"\\geq ", s)
    s = re.sub(r"\\leqslant|\\leq?(?![a-zA-Z])|<=", r"\\leq ", s)
    s = re.sub(r"\\neq?(?![a-zA-Z])|!=", r"\\neq ", s)
    s = re.sub(r"\\lt(?![a-zA-Z])", "<", s)
    s = re.sub(r"\\gt(?![a-zA-Z])", ">", s)
    s = re.sub(r"\\varnothing|\\emptyset|\\\{\s*\\\}", r"\\emptyset ", s)
    s = re.sub(r"(?<![a-zA-Z\\])(?:infinity|inf)(?![a-zA-Z])", r"\\infty ", s)
    s = re.sub(r"(?<![a-zA-Z\\])pi(?![a-zA-Z])", r"\\pi ", s)
    s = re.sub(r"\+\s*\\infty", r"\\infty", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\$", "")
    s = _TEXT_ANDOR.sub(",", s)
    s = _PLAIN_ANDOR.sub(", ", s)
    s = _IN_PREFIX.sub("", s)
    s = _ANSWER_PREFIX.sub("", s)
    s = re.sub(r"\\(?:dots|ldots|cdots)", "...", s)
    s = re.sub(r"\s+", " ", s).strip()
    # trailing sentence punctuation (but keep an ellipsis)
    while s and s[-1] in ".,;:" and not s.endswith("...") and not s.endswith("\\."):
        s = s[:-1].rstrip()
    while s.endswith("\\\\"):
        s = s[:-2].rstrip()
    s = _strip_outer(s)
    # thousands separators: "1{,}000" -> "1,000" ("1,000" itself is resolved by the
    # comparison: a number, unless the other answer is a list); "1 000" -> "1000"
    s = re.sub(r"(\d)\s*\{,\}\s*(\d)", r"\1,\2", s)
    if _THOUSANDS_SPACE.match(s):
        s = s.replace(" ", "")
    if re.fullmatch(r"[+-]?0,\d+", s):  # decimal comma "0,5" (a list would not start with 0)
        s = s.replace(",", ".")
    return s


_UNIT_ALIASES = {
    "cm": "cm", "centimeter": "cm", "centimetre": "cm", "m": "m", "meter": "m", "metre": "m",
    "mm": "mm", "millimeter": "mm", "km": "km", "kilometer": "km", "in": "in", "inch": "in",
    "ft": "ft", "foot": "ft", "feet": "ft", "yd": "yd", "yard": "yd", "mi": "mi", "mile": "mi",
    "s": "s", "sec": "s", "second": "s", "min": "min", "minute": "min", "h": "h", "hr": "h",
    "hour": "h", "day": "day", "week": "week", "month": "month", "year": "year", "yr": "year",
    "g": "g", "gram": "g", "kg": "kg", "kilogram": "kg", "lb": "lb", "pound": "lb",
    "degree": "deg", "radian": "rad", "rad": "rad", "unit": "unit", "mph": "mph",
}


def _canonical_unit(tail: str) -> str:
    """A canonical spelling of a simple unit ("\\text{ cm}^2" -> "cm^2"), or "?" if unknown."""
    t = re.sub(r"\\" + _WRAPPERS + r"\s*\{([^{}]*)\}", r"\1", tail)
    t = t.replace("{", "").replace("}", "").replace("~", " ").strip().lower().rstrip(".")
    power = ""
    m = re.match(r"^(?:square|sq\.?)\s+(.*)$", t)
    if m:
        t, power = m.group(1), "^2"
    m = re.match(r"^(?:cubic|cu\.?)\s+(.*)$", t)
    if m:
        t, power = m.group(1), "^3"
    m = re.match(r"^([a-z]+)\s*(\^\s*-?\d)?$", t)
    if not m:
        return "?"
    word = m.group(1)
    base = None
    for cand in (word, word[:-1] if word.endswith("s") else "", word[:-2] if word.endswith("es") else ""):
        if cand and cand in _UNIT_ALIASES:
            base = _UNIT_ALIASES[cand]
            break
    if base is None:
        return "?"
    return base + (power or (m.group(2) or "").replace(" ", ""))


def clean_atom(s: str) -> tuple[str, bool, str]:
    """Normalise one answer element. Returns ``(text, is_percent, unit)``; ``unit`` is the
    canonical spelling of a unit that was stripped ("" if none, "?" if not recognised)."""
    s = _strip_outer(s)
    m = _WHOLE_TEXT.match(s)
    if m:
        s = m.group(1).strip()
    pct, unit = False, ""
    for _ in range(3):
        before = s
        m = _PCT.search(s)
        if m and m.start() > 0:
            s, pct = s[: m.start()].strip(), True
        s = _DOLLAR_WORDS.sub("", s).strip() or s
        m = _TRAIL_TEXT.match(s)
        if m and re.search(r"[\d}]", m.group(1)):
            unit = unit or _canonical_unit(s[m.end(1) :])
            s = m.group(1).strip()
        m = _UNIT_WORDS.match(s)
        if m:
            tail = s[m.end(1) :].strip()
            first = re.split(r"[\s^/.]", tail.lower().lstrip("\\"))[0]
            if first not in _KEEP_WORDS:
                unit = unit or _canonical_unit(tail)
                s = m.group(1).strip()
        s = _strip_outer(s)
        if s == before:
            break
    s = re.sub(r"\\" + _WRAPPERS + r"\s*\{([^{}]*)\}", r"\1", s).strip()
    m = _CHOICE.match(s)
    if m:
        s = m.group(1)
    m = _SCI.match(s.replace(" ", ""))
    if m:
        s = f"{m.group(1)}\\times10^{{{m.group(2)}}}"
    s = _SCI_TIMES.sub(r"\1\\times10^", s)
    if THOUSANDS.match(s):
        s = s.replace(",", "")
    return s.strip(), pct, unit


def key(s: str) -> str:
    """Whitespace-free comparison key."""
    return re.sub(r"\s+", "", s)


def strict_normalize(s: str) -> str:
    """Light normalisation for exact-match grading (AIME/AMC "strict box" mode)."""
    if s is None:
        return ""
    s = str(s)
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = re.sub(r"(?<!\\)\$", "", s)
    s = s.replace("\\!", "").replace("\\displaystyle", "")
    s = _SIZING.sub("", s)
    s = _SPACES.sub("", s)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    m = _WHOLE_TEXT.match(s.strip())
    if m:
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    s = re.sub(r"(\d)\{,\}(\d)", r"\1,\2", s)
    if THOUSANDS.match(s):
        s = s.replace(",", "")
    m = re.fullmatch(r"([+-]?)0*(\d+)(?:\.0*)?", s)
    if m:
        digits = m.group(2)
        s = ("-" if m.group(1) == "-" and digits.strip("0") else "") + (digits.lstrip("0") or "0")
    return s


# --------------------------------------------------------------------------- numbers

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


def _gold_states_digits(g: Fraction, ug: Fraction | None) -> bool:
    """The gold is a decimal with at least three significant digits (``33.3``, ``2.74``)."""
    return ug is not None and abs(g) >= 200 * ug


def numbers_equal(a: Fraction, ua: Fraction | None, b: Fraction, ub: Fraction | None) -> bool:
    """``a`` (prediction, half-ulp ``ua``) against ``b`` (gold, ``ub``). Exact values must be
    equal. A gold decimal with three or more significant digits is a rounding of the true
    value: an exact or more precise prediction matches when it rounds to it (``100/3`` for
    ``33.3``, ``16386.164`` for ``16386.16``). A decimal prediction of an exact gold must be
    the gold rounded or truncated at its last digit *and* within ``REL_TOL`` (``0.333333``
    = 1/3, ``0.333`` != 1/3, ``3.1415926`` = pi). Otherwise two decimals must be equal."""
    if a == b:
        return True
    diff = abs(a - b)
    if _gold_states_digits(b, ub) and (ua is None or ua < ub):
        return diff <= ub
    close = diff <= Fraction(REL_TOL) * max(abs(a), abs(b))
    if ua is None and ub is not None:  # exact prediction, short gold decimal
        return diff <= ub and close
    if ua is not None and ub is None:  # decimal prediction, exact gold
        return diff <= 2 * ua and close
    return False


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
