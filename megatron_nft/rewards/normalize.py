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
"""

from __future__ import annotations

import re

__all__ = ["normalize", "clean_atom", "key", "strict_normalize", "THOUSANDS"]

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
        changed = False
        for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a) : len(s) - len(b)].strip()
                changed = True
        if s.startswith("{") and s.endswith("}") and _matching_close(s, 0) == len(s) - 1:
            s = s[1:-1].strip()
            changed = True
    return s


def _matching_close(s: str, i: int) -> int:
    """Index of the bracket closing s[i] (any of ([{ vs )]}), or -1."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c == "\\" and j + 1 < len(s) and s[j + 1] not in "{}":
            j += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


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
