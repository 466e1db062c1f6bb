"""Sympy backend of the equivalence check (imported only inside worker processes).

Parsing uses latex2sympy2_extended (the parser behind math-verify) with math-verify's
LaTeX normalisation; comparison is our own:

* numbers without symbols: evaluated to 50 digits; exact on both sides -> equal only if the
  relative difference is below 1e-30 (so 1/2004! != 1/2006!, unlike float rounding);
  a decimal on either side -> relative tolerance ``REL_TOL`` (1/3 == 0.333333);
* expressions with symbols: evaluated at several rational probe points (mixed signs), falling
  back to ``simplify(a - b) == 0``;
* equations: ``lhs - rhs`` proportional; inequalities: same direction/strictness and a
  positive factor; relations vs intervals through ``as_set()``;
* sets, intervals, unions, matrices: element/endpoint-wise with the rules above;
* anything else: math-verify's ``sympy_expr_eq``.

Every string goes through ``guard.too_big`` first, because latex2sympy evaluates integer
powers while parsing. Timeouts are not handled here: the parent kills the worker.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

import sympy
from latex2sympy2_extended.latex2sympy2 import NormalizationConfig, latex2sympy
from math_verify.grader import should_treat_as_complex, sympy_expr_eq
from sympy import (
    Abs, And, Basic, Eq, Float, FiniteSet, I, Interval, MatrixBase, Ne, Or, Rational, Set,
    Symbol, Tuple, Union, nan, zoo,
)
from sympy.core.function import AppliedUndef
from sympy.core.relational import GreaterThan, LessThan, Relational, StrictGreaterThan, StrictLessThan

from .equivalence import REL_TOL, Node, Tri, answers_equal, simple_number
from .fastparse import Unsupported, fast_parse
from .guard import guard_disabled, too_big
from .normalize import _gold_states_digits

__all__ = ["SympyBackend", "parse_latex", "expr_equal", "obj_equal", "warmup", "slow_decide"]

logging.getLogger("math_verify").setLevel(logging.ERROR)
logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)

# units=False: latex2sympy's unit list strips trailing single letters (c, t, m, s, g, ...),
# turning "\\frac{1}{\\sqrt{2}}c" into 1/sqrt(2); units are handled in normalize.py instead.
_CFG = NormalizationConfig(
    basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="none", equations=False
)
_EXACT_TOL = sympy.Float("1e-30", 60)
_FLOAT_TOL = sympy.Float(REL_TOL, 30)
_PROBE_TOL = sympy.Float("1e-20", 40)
_PROBES = [Rational(7, 13), Rational(-11, 17), Rational(29, 23), Rational(-37, 19), Rational(53, 41),
           Rational(3, 29), Rational(-71, 31), Rational(89, 37)]


class TooBig(ValueError):
    pass


@lru_cache(maxsize=2048)
def parse_latex(text: str):
    """latex2sympy with math-verify's normalisation; raises on failure or oversized input."""
    if too_big(text):
        raise TooBig(text[:50])
    try:
        return _imaginary(fast_parse(text))
    except Unsupported:
        pass
    expr = latex2sympy(text, is_real=not should_treat_as_complex(text), convert_degrees=False,
                       normalization_config=_CFG)
    return _imaginary(expr)


def _imaginary(expr):
    """Canonical symbols: a free symbol named i is the imaginary unit; every other symbol
    becomes ``Symbol(name, real=True)`` (latex2sympy makes them real or not depending on
    whether the string "looks complex", which would make x != x)."""
    try:
        syms = [s for s in getattr(expr, "free_symbols", ()) if isinstance(s, Symbol)]
        if syms:
            return expr.xreplace({s: (I if s.name == "i" else Symbol(s.name, real=True)) for s in syms})
    except Exception:
        pass
    return expr


def _is_float(expr) -> bool:
    try:
        return bool(expr.has(Float))
    except Exception:
        return False


def _evalf(expr, n: int = 50):
    try:
        v = sympy.N(expr, n)
    except Exception:
        return None
    if not isinstance(v, Basic) or v.free_symbols or not v.is_number or v.has(nan, zoo):
        return None
    return v


def _values_equal(va, vb, inexact: bool, tol=None) -> Tri:
    try:
        if va.is_infinite or vb.is_infinite:
            return bool(va == vb)
        diff = sympy.N(Abs(va - vb), 40)
        scale = max(sympy.N(Abs(va), 40), sympy.N(Abs(vb), 40))
        if scale == 0:
            return True
        if tol is None:
            tol = _FLOAT_TOL if inexact else _EXACT_TOL
        return bool(diff <= tol * scale)
    except Exception:
        return None


def _numbers_equal(a, b) -> Tri:
    fa, fb = _is_float(a), _is_float(b)
    inexact = fa or fb
    va, vb = _evalf(a), _evalf(b)
    if va is None or vb is None:
        return None
    if fa and fb:  # decimals on both sides: equal as written (up to binary rounding)
        return _values_equal(va, vb, False, sympy.Float("1e-12", 30))
    r = _values_equal(va, vb, inexact)
    if r is not True or inexact:
        return r
    # Exact values that agree to ~30 digits: evaluate the difference itself (sympy's evalf
    # raises the working precision on cancellation), so 2^100 + 1 != 2^100.
    try:
        d = sympy.N(a - b, 30)
        if d == 0:
            return True
        if not d.is_number or d.free_symbols:
            return r
        scale = max(sympy.N(Abs(va), 40), sympy.N(Abs(vb), 40))
        return bool(sympy.N(Abs(d), 40) <= sympy.Float("1e-60", 60) * scale)
    except Exception:
        return r


def _probe_equal(a, b, symbols) -> Tri:
    inexact = _is_float(a) or _is_float(b)
    syms = sorted(symbols, key=lambda s: s.name)
    valid = 0
    for probe in range(6):
        sub = {s: _PROBES[(probe * 3 + j) % len(_PROBES)] for j, s in enumerate(syms)}
        try:
            va, vb = _evalf(a.xreplace(sub), 40), _evalf(b.xreplace(sub), 40)
        except Exception:
            va = vb = None
        if va is None or vb is None or va.is_infinite or vb.is_infinite:
            continue
        r = _values_equal(va, vb, inexact)
        if r is False:
            return False
        if r is True:
            valid += 1
        if valid >= 4:
            break
    return True if valid >= 3 else None


def _simplify_zero(a, b) -> bool:
    try:
        d = sympy.simplify(a - b)
        return bool(d == 0 or d.is_zero)
    except Exception:
        return False


def _unwrap_undef(e):
    """Undefined function calls u(t) become symbols "u(t)" so that probing can evaluate."""
    try:
        reps = {f: Symbol(f"{f.func.__name__}({','.join(map(str, f.args))})", real=True)
                for f in e.atoms(AppliedUndef)}
        return e.xreplace(reps) if reps else e
    except Exception:
        return e


def expr_equal(a, b) -> bool:
    """Equality of two sympy expressions (no containers)."""
    try:
        if a == b:
            return True
    except Exception:
        pass
    a, b = _unwrap_undef(a), _unwrap_undef(b)
    syms = (getattr(a, "free_symbols", set()) or set()) | (getattr(b, "free_symbols", set()) or set())
    if not syms:
        r = _numbers_equal(a, b)
    else:
        r = _probe_equal(a, b, syms)
    if r is not None:
        return r
    return _simplify_zero(a, b)


# --------------------------------------------------------------------------- relations

def _ineq_form(rel) -> tuple | None:
    """``f > 0`` (strict) or ``f >= 0`` for an inequality."""
    if isinstance(rel, (StrictGreaterThan, GreaterThan)):
        return rel.lhs - rel.rhs, isinstance(rel, StrictGreaterThan)
    if isinstance(rel, (StrictLessThan, LessThan)):
        return rel.rhs - rel.lhs, isinstance(rel, StrictLessThan)
    return None


def _ratio(f1, f2) -> Basic | None:
    """The constant c with f1 = c * f2, if there is one."""
    syms = f1.free_symbols | f2.free_symbols
    if not syms:
        return None
    ratios = []
    syms = sorted(syms, key=lambda s: s.name)
    for probe in range(5):
        sub = {s: _PROBES[(probe * 3 + j) % len(_PROBES)] for j, s in enumerate(syms)}
        v1, v2 = _evalf(f1.xreplace(sub), 40), _evalf(f2.xreplace(sub), 40)
        if v1 is None or v2 is None or v2 == 0:
            continue
        ratios.append(v1 / v2)
    if len(ratios) < 3:
        try:
            c = sympy.simplify(f1 / f2)
            return c if not c.free_symbols and c != 0 else None
        except Exception:
            return None
    c = ratios[0]
    if c == 0 or any(_values_equal(c, r, False) is not True for r in ratios[1:]):
        return None
    return c


def relation_equal(a, b) -> bool:
    if isinstance(a, Eq) and isinstance(b, Eq) or isinstance(a, Ne) and isinstance(b, Ne):
        f1, f2 = a.lhs - a.rhs, b.lhs - b.rhs
        if expr_equal(f1, f2) or expr_equal(f1, -f2):
            return True
        return _ratio(f1, f2) is not None
    fa, fb = _ineq_form(a), _ineq_form(b)
    if fa is not None and fb is not None:
        if fa[1] != fb[1]:
            return False
        c = _ratio(fa[0], fb[0])
        if c is None:
            return expr_equal(fa[0], fb[0])
        try:
            return bool(sympy.N(c) > 0)
        except Exception:
            return False
    return _mv_equal(a, b)


def _as_set(obj):
    if isinstance(obj, (Relational, And, Or)):
        syms = obj.free_symbols
        if len(syms) == 1:
            try:
                return obj.as_set()
            except Exception:
                return None
    return None


# --------------------------------------------------------------------------- containers

def _sets_equal(a: Set, b: Set) -> bool:
    try:
        if a == b:
            return True
    except Exception:
        pass
    if isinstance(a, Interval) and isinstance(b, Interval):
        return (a.left_open == b.left_open and a.right_open == b.right_open
                and obj_equal(a.start, b.start) and obj_equal(a.end, b.end))
    if isinstance(a, Union) and isinstance(b, Union) and len(a.args) == len(b.args):
        return all(_sets_equal(x, y) for x, y in zip(_sorted_sets(a.args), _sorted_sets(b.args)))
    if isinstance(a, FiniteSet) and isinstance(b, FiniteSet):
        return _unordered_equal(list(a.args), list(b.args))
    try:
        return bool(a.symmetric_difference(b).is_empty)
    except Exception:
        return False


def _sorted_sets(args):
    def k(s):
        try:
            return float(sympy.N(s.inf))
        except Exception:
            return 0.0
    return sorted(args, key=k)


def _unordered_equal(xs: list, ys: list) -> bool:
    if len(xs) != len(ys):
        return False
    used = [False] * len(ys)
    for x in xs:
        for j, y in enumerate(ys):
            if not used[j] and obj_equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def obj_equal(a, b) -> bool:
    """Equality of parsed objects of any kind."""
    if isinstance(a, MatrixBase) or isinstance(b, MatrixBase):
        if isinstance(a, MatrixBase) and isinstance(b, MatrixBase) and a.shape == b.shape:
            return all(obj_equal(x, y) for x, y in zip(a, b))
        return False
    a_rel = isinstance(a, (Relational, And, Or))
    b_rel = isinstance(b, (Relational, And, Or))
    if isinstance(a, Set) or isinstance(b, Set):
        sa = a if isinstance(a, Set) else _as_set(a)
        sb = b if isinstance(b, Set) else _as_set(b)
        if sa is None or sb is None:
            return False
        return _sets_equal(sa, sb)
    if a_rel or b_rel:
        if a_rel and b_rel:
            return relation_equal(a, b)
        return False
    if isinstance(a, Tuple) or isinstance(b, Tuple):
        if isinstance(a, Tuple) and isinstance(b, Tuple) and len(a) == len(b):
            return all(obj_equal(x, y) for x, y in zip(a, b))
        return False
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        return expr_equal(a, b)
    return _mv_equal(a, b)


def _mv_equal(a, b) -> bool:
    try:
        return bool(sympy_expr_eq(b, a, 6, 15, allow_set_relation_comp=True, strict=True))
    except Exception:
        return False


# --------------------------------------------------------------------------- backend

def _decimal_vs_exact(pred: str, a, pred_pct: bool, gold: str, b, gold_pct: bool) -> Tri:
    """A plain decimal against an exact expression (pi, sqrt 2, ...), the same rule as
    ``normalize.numbers_equal`` for rationals: a gold decimal of three or more significant
    digits matches the exact prediction it rounds (``1.73`` for ``\\sqrt{3}``); a predicted
    decimal must be the exact gold rounded or truncated at its last digit with ``REL_TOL``
    relative accuracy (``3.14159`` = pi, ``3.14`` != pi)."""
    pn, gn = simple_number(pred), simple_number(gold)
    if pn is not None and gn is not None:
        return None
    if pn is not None and pn[1] is not None:
        dec, pct, other = pn, pred_pct, b
    elif gn is not None and gn[1] is not None:
        dec, pct, other = gn, gold_pct, a
    else:
        return None
    if not isinstance(other, sympy.Expr) or other.free_symbols or _is_float(other):
        return None
    v = _evalf(other, 40)
    if v is None or not v.is_real:
        return None
    value, half_ulp = dec
    dec_is_gold = dec is gn
    cands = [(value, half_ulp)] + ([(value / 100, half_ulp / 100)] if pct else [])
    for val, hu in cands:
        diff = abs(sympy.Rational(val.numerator, val.denominator) - v)
        scale = max(abs(v), abs(sympy.Rational(val.numerator, val.denominator)))
        hu_s = sympy.Rational(hu.numerator, hu.denominator)
        if dec_is_gold and _gold_states_digits(val, hu):
            if diff <= hu_s:  # the gold is the rounding of the exact prediction
                return True
        elif diff <= (hu_s if dec_is_gold else 2 * hu_s) and diff <= _FLOAT_TOL * scale:
            return True
    return False


def _node_to_sympy(node: Node):
    if node.kind == "atom":
        return parse_latex(node.text)
    items = [_node_to_sympy(i) for i in node.items]
    if node.kind == "tuple":
        if len(items) == 2 and node.open in "([" and node.close in ")]":
            lo, hi = items
            if _is_real_bound(lo) and _is_real_bound(hi):
                return Interval(lo, hi, left_open=node.open == "(", right_open=node.close == ")")
        return Tuple(*items)
    if node.kind == "list" and items and all(isinstance(x, (Relational, And, Or)) for x in items):
        return Or(*items)
    return FiniteSet(*items)


def _is_real_bound(x) -> bool:
    try:
        return bool(x.is_extended_real) and not x.free_symbols
    except Exception:
        return False


class SympyBackend:
    """Implements the ``Backend`` protocol of ``equivalence.py``. ``unparsed`` records that some
    comparison was lost because a side could not be parsed (the cue for math-verify's verdict);
    ``too_big`` that a side was rejected by the size guard (math-verify is not asked then)."""

    def __init__(self):
        self.unparsed = False
        self.too_big = False

    def _parse(self, parse, pred, gold):
        try:
            return parse(pred), parse(gold)
        except TooBig:
            self.too_big = True
        except Exception:
            self.unparsed = True
        return None

    def atom(self, pred: str, gold: str, pred_pct: bool, gold_pct: bool) -> Tri:
        parsed = self._parse(parse_latex, pred, gold)
        if parsed is None:
            return False
        a, b = parsed
        r = _decimal_vs_exact(pred, a, pred_pct, gold, b, gold_pct)
        if r is not None:
            return r
        cands_a = [a, a / 100] if pred_pct and isinstance(a, sympy.Expr) else [a]
        cands_b = [b, b / 100] if gold_pct and isinstance(b, sympy.Expr) else [b]
        return any(obj_equal(x, y) for x in cands_a for y in cands_b)

    def relation(self, pred: str, gold: str) -> Tri:
        parsed = self._parse(parse_latex, pred, gold)
        return False if parsed is None else obj_equal(*parsed)

    def mismatch(self, pred: Node, gold: Node) -> Tri:
        parsed = self._parse(_node_to_sympy, pred, gold)
        if parsed is None:
            return False
        a, b = parsed
        if isinstance(a, MatrixBase) != isinstance(b, MatrixBase):
            return False
        return obj_equal(a, b)


def warmup() -> None:
    """Exercise the parsers and sympy once so that a fresh worker's first real task is not
    slowed down by lazy initialisation (sympy's assumption system, ANTLR's prediction DFA)."""
    samples = [("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"), ("y=2x+1", "2x-y+1=0")]
    backend = SympyBackend()
    for a, b in samples:
        try:
            backend.relation(a, b) if "=" in a else backend.atom(a, b, False, False)
        except Exception:
            pass


_CMD_OR_TEXT = re.compile(r"\\text\{[^{}]*\}|\\[a-zA-Z]+")


def _faithful(parsed, text: str) -> bool:
    """math-verify's parse kept the variables of ``text``: an input with letters (other than
    e and i) must not come back as a plain number (``\\hbar \\omega(v+1/2) - ...`` parsed as
    ``2`` made two different formulas "equal")."""
    if not parsed:
        return False
    letters = set(re.findall(r"[a-zA-Z]", _CMD_OR_TEXT.sub(" ", text))) - {"e", "i"}
    if not letters:
        return True
    try:
        return bool(getattr(parsed[0], "free_symbols", None)) or isinstance(parsed[0], str)
    except Exception:
        return False


def math_verify_judge(pred: str, gold: str) -> bool:
    """math-verify's own verdict, fed as verl and NeMo-RL feed it: the gold wrapped in
    ``\\boxed{}``; the prediction (already extracted by us) boxed too. Only a faithful parse
    counts (see ``_faithful``). No signal-based timeouts: the parent's SIGKILL is the limit."""
    from math_verify import parse, verify

    try:
        g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
        p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
        if not (_faithful(g, gold) and _faithful(p, pred)):
            return False
        return bool(verify(g, p, timeout_seconds=None))
    except Exception:
        return False


def slow_decide(pred: str, gold: str, guard: bool) -> bool:
    """What a worker runs. Our rules with the sympy backend decide; where they lost a
    comparison only because LaTeX did not parse, math-verify's verdict (parser with more
    coverage) is taken instead. Where both sides parsed, our exact comparison stands (it
    refutes math-verify's known false positives: float rounding of tiny values,
    ``1 - 1/e`` vs ``1 + 1/e``, ``12:00`` vs ``1:00``)."""
    backend = SympyBackend()
    with guard_disabled(not guard):
        if answers_equal(pred, gold, backend=backend):
            return True
        if backend.unparsed and not backend.too_big and not (guard and (too_big(pred) or too_big(gold))):
            return math_verify_judge(pred, gold)
    return False
