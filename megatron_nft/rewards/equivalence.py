"""Answer equivalence: structure, cheap exact comparisons, and the driver.

``answers_equal(pred, gold, backend)`` compares two extracted answers (strings):

1. normalise both (``normalize.py``); equal keys -> equal;
2. split into a structure: bare comma lists (unordered: several answers), parenthesised or
   bracketed tuples/intervals (ordered, bracket types must agree for 2 elements), ``\\{..\\}``
   sets (unordered); ``\\pm`` expands to two answers; "x = 3" assignments are unwrapped;
3. compare elements. Plain numbers (integers, decimals, fractions, mixed numbers, scientific
   notation, percentages), words and base-``b`` numerals are compared here in pure Python,
   exactly (``fractions.Fraction``; decimals: see ``normalize.numbers_equal``).
   Anything else is handed to ``backend`` (the sympy backend in ``symbolic.py``, used in the
   worker processes, where math-verify judges what our parser cannot read). Without a
   backend the result can be ``None`` = "undecided".

Rules on top of math-verify (bottom of this file, one regression case each in
``tests/test_rewards.py::RULE_CASES``): a left side that only names the quantity
(``|AB| = 1``, ``V_1:V_2 = 11:21``), ratios and clock times, ``;``-separated solutions written
as assignments, inequality chains with a named middle (``0 < f(x) < 1``), decimal commas, and
repeated solution tuples.

Results are tri-state (True / False / None). The parent process runs this with no backend as
its fast path and only ships undecided pairs to the worker pool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Protocol

from megatron_nft.latex import close_index as _close_index
from megatron_nft.latex import expand_pm as _expand_pm
from megatron_nft.latex import split_top as _split_top

from .normalize import (REL_TOL, THOUSANDS, base_numeral, clean_atom, is_word, key, normalize, numbers_equal,
                        pct_candidates, simple_number)

__all__ = [
    "Node",
    "Backend",
    "answers_equal",
    "parse_structure",
    "simple_number",
    "numbers_equal",
    "split_relation",
    "REL_TOL",
]

MAX_ATOM_LEN = 1000
MAX_BRACKETS = 300
Tri = Optional[bool]


@dataclass
class Node:
    kind: str  # "atom" | "list" | "tuple" | "set"
    text: str = ""
    items: list["Node"] = field(default_factory=list)
    open: str = ""
    close: str = ""
    pct: bool = False
    unit: str = ""  # canonical unit stripped from the atom ("" none, "?" unrecognised)

    def __repr__(self) -> str:  # compact, for debugging
        if self.kind == "atom":
            return f"A({self.text!r}{',%' if self.pct else ''})"
        return f"{self.kind}{self.open}{self.items}{self.close}"


class Backend(Protocol):
    def atom(self, pred: str, gold: str, pred_pct: bool, gold_pct: bool) -> Tri: ...

    def relation(self, pred: str, gold: str) -> Tri: ...

    def mismatch(self, pred: Node, gold: Node) -> Tri: ...


# --------------------------------------------------------------------------- structure


def parse_structure(s: str, list_ok: bool = True) -> Node:
    """Structure of a normalised answer string."""
    s = s.strip()
    if s.startswith("\\{") and s.endswith("\\}") and _close_index(s, 0) == len(s) - 1:
        inner = s[2:-2].strip()
        items = [p for p in _split_top(inner) if p] if inner else []
        return Node("set", items=_items(items), open="{", close="}")
    if s[:1] in "([" and s[-1:] in ")]" and _close_index(s, 0) == len(s) - 1:
        parts = _split_top(s[1:-1])
        if len(parts) >= 2 and all(parts):
            return Node("tuple", items=_items(parts), open=s[0], close=s[-1])
    if list_ok:
        groups = _split_top(s, ";") if ";" in s else []
        if len(groups) >= 2 and all(len(_split_top(x)) >= 2 for x in groups):
            # "p=5,q=2; p=7,q=2": each group is one solution, written as assignments
            return Node("list", items=[Node("tuple", items=_items(_split_top(x)), open="(", close=")")
                                       for x in groups])
        parts = _split_top(s)
        if len(parts) == 1 and ";" in s:
            parts = _split_top(s, ";")
        parts = [p for p in parts if p]
        if len(parts) >= 2:
            return Node("list", items=_items(parts))
    return _atom(s)


def _items(parts: list[str]) -> list[Node]:
    out: list[Node] = []
    for p in parts:
        node = parse_structure(p, list_ok=False)
        if node.kind == "atom":
            lhs, rhs, kind = split_relation(node.text)
            if kind == "assign":  # "x = 1, y = 2" -> values
                node = parse_structure(rhs, list_ok=False)
        if node.kind == "atom":
            pm = _expand_pm(node.text)
            if pm:
                out.extend(_atom(x) for x in pm)
                continue
        out.append(node)
    return out


def _atom(s: str) -> Node:
    text, pct, unit = clean_atom(s)
    return Node("atom", text=text, pct=pct, unit=unit)


# --------------------------------------------------------------------------- relations

_REL_SPLIT = re.compile(r"(?<![<>!\\])=(?!=)|\\approx")
_INEQ = re.compile(r"\\leq|\\geq|\\neq|<|>|\\in(?![a-zA-Z])")
_SIMPLE_LHS = re.compile(
    r"^(?:[a-zA-Z](?:_\{?[\w\\]+\}?|')*"  # x, a_n, x_{1}, f'
    r"|\\[a-zA-Z]+(?:_\{?\w+\}?)?"  # \theta, \alpha_1
    r"|[a-zA-Z]{1,3}\s*\([^()=]*\)"  # f(x), P(A), g(2)
    r"|\((?:\s*[a-zA-Z](?:_\{?\w+\}?)?\s*,)+\s*[a-zA-Z](?:_\{?\w+\}?)?\s*\)"  # (x, y, z)
    r"|[A-Z]{1,3}|\\angle\s*[A-Za-z]{1,3}|m\s*\\angle\s*[A-Za-z]{1,3}"  # AB, \angle ABC
    r"|\\text\{[^{}]*\}|\\(?:sin|cos|tan)\s*\\?[a-zA-Z]+"
    r")$"
)


def split_relation(text: str) -> tuple[str, str, str]:
    """Classify an atom: ``(lhs, rhs, kind)`` with kind in
    ``plain`` | ``assign`` (simple lhs "x = ...") | ``equation`` | ``inequality``.
    Chains "x = a = b" keep the first lhs and the last rhs."""
    depth_free = _top_level(text)
    parts = [p.strip() for p in _REL_SPLIT.split(depth_free)] if "=" in depth_free or "\\approx" in depth_free else [text]
    if len(parts) >= 2:
        # map back to original slices (same lengths: _top_level only masks characters)
        spans, pos = [], 0
        for m in _REL_SPLIT.finditer(depth_free):
            spans.append(text[pos : m.start()])
            pos = m.end()
        spans.append(text[pos:])
        spans = [p.strip() for p in spans]
        lhs, rhs = spans[0], spans[-1]
        if not rhs:
            return "", text, "plain"
        if not lhs:
            return "", rhs, "plain"
        if _INEQ.search(depth_free):
            return "", text, "inequality"
        if _SIMPLE_LHS.match(lhs) or _named_quantity(lhs):
            return lhs, rhs, "assign"
        return lhs, rhs, "equation"
    if _INEQ.search(depth_free):
        return "", text, "inequality"
    return "", text, "plain"


_NAME_CMDS = re.compile(r"\\(?:frac|angle|overline|overrightarrow|vec|triangle|mathrm|text|operatorname|left|right)(?![a-zA-Z])")
_SUBSCRIPT = re.compile(r"_\{[^{}]*\}|_\w")


def _named_quantity(lhs: str) -> bool:
    """A left side that only *names* the asked quantity: ``|AB|``, ``V_1:V_2``, ``S_{MBCN}:S``,
    ``\\frac{NO}{BO}``, ``a_n``, ``xy`` -- letters, subscripts, ``| : /`` and naming commands, no
    digits and no top-level ``+``/``-`` (so ``2x + z = 1`` is an equation, not a name)."""
    t = _NAME_CMDS.sub("", _SUBSCRIPT.sub("", lhs))
    if not re.search(r"[A-Za-z]", t) or re.search(r"\d|\\[a-zA-Z]", t):
        return False
    return not re.search(r"[+\-*^<>=]", _top_level(t))


def _top_level(text: str) -> str:
    """Mask characters inside brackets with '#' so top-level operators can be found."""
    out, depth = [], 0
    for c in text:
        if c in "([{":
            depth += 1
            out.append(c)
        elif c in ")]}":
            depth -= 1
            out.append(c)
        else:
            out.append(c if depth <= 0 else "#")
    return "".join(out)


# --------------------------------------------------------------------------- comparison


def _atoms_equal(p: Node, g: Node, backend: Backend | None) -> Tri:
    pt, gt = p.text, g.text
    if not pt or not gt:
        return False
    if p.unit and g.unit and "?" not in (p.unit, g.unit) and p.unit != g.unit:
        return False  # "5 cm" vs "5 m": both sides name different known units
    if key(pt) == key(gt):
        return True
    if len(pt) > MAX_ATOM_LEN or len(gt) > MAX_ATOM_LEN:
        return False
    plhs, prhs, pkind = split_relation(pt)
    glhs, grhs, gkind = split_relation(gt)
    if gkind == "plain":
        if pkind in ("assign", "equation"):
            return _atoms_equal(_atom(prhs), g, backend)
        if pkind == "inequality":
            if simple_number(gt) is not None:
                return False
            return backend.relation(pt, gt) if backend else None
    elif gkind == "assign":
        if pkind == "plain":
            return _compare(parse_structure(pt), parse_structure(grhs), backend)
        if pkind == "assign":
            if key(plhs).lower() != key(glhs).lower():
                return False
            return _compare(parse_structure(prhs), parse_structure(grhs), backend)
        return backend.relation(pt, gt) if backend else None
    elif gkind == "equation":
        if pkind == "plain":
            return False
        return backend.relation(pt, gt) if backend else None
    else:  # inequality / membership in gold
        return backend.relation(pt, gt) if backend else None

    return _plain_equal(p, g, backend)


def _plain_equal(p: Node, g: Node, backend: Backend | None) -> Tri:
    """Two plain atoms (no relation): ratios, exact numbers, base-b numerals, words, symbols."""
    pt, gt = p.text, g.text
    r = _ratios_equal(pt, gt)
    if r is not None:
        return r
    pn, gn = simple_number(pt), simple_number(gt)
    if pn is not None and gn is not None:
        return any(
            numbers_equal(a[0], a[1], b[0], b[1])
            for a in pct_candidates(pn, p.pct)
            for b in pct_candidates(gn, g.pct)
        )
    pb, gb = base_numeral(pt), base_numeral(gt)
    if pb or gb:
        if pb and gb:
            return pb == gb
        other = pt if gb else gt
        if re.fullmatch(r"[0-9A-Za-z]+", other.replace(" ", "")):
            return (pb or gb)[0] == (other.replace(" ", "").upper().lstrip("0") or "0")
        return backend.atom(pt, gt, p.pct, g.pct) if backend else None
    pw, gw = is_word(pt), is_word(gt)
    if pw and gw:
        return key(pt).lower() == key(gt).lower()
    if (pw and gn is not None) or (gw and pn is not None):
        return False
    if len(pt) == 1 and len(gt) == 1 and pt.isalpha() and gt.isalpha():
        return pt.lower() == gt.lower()
    if (pn is not None and len(gt) == 1 and gt.isalpha()) or (gn is not None and len(pt) == 1 and pt.isalpha()):
        return False  # a number is never a letter (a choice "B", a free symbol "x")
    if backend is None:
        return None if p.pct or g.pct else _values_differ(pt, gt)
    return backend.atom(pt, gt, p.pct, g.pct)


_REFUTE_REL = 1e-15  # equal expressions agree to ~1e-45 at 50 digits; between: cancellation
_DECIMAL_REFUTE_REL = 0.05


def _values_differ(pt: str, gt: str) -> Tri:
    """Parent-side refutation without sympy: False when both sides are in the fast parser's
    subset and their values (50 digits, the same probe value for each symbol) differ;
    otherwise None (the worker decides). With a decimal on either side only a difference of
    more than 5% refutes (no rounding rule accepts that much)."""
    from .fastparse import Unsupported, fast_values

    rel = _DECIMAL_REFUTE_REL if "." in pt or "." in gt else _REFUTE_REL

    values: dict = {}
    try:
        a, b = fast_values(pt, values), fast_values(gt, values)
        diff, scale = abs(a - b), max(abs(a), abs(b))
        finite = all(x == x and abs(x) != float("inf") for x in (a, b))
    except (Unsupported, ArithmeticError, ValueError, TypeError):
        return None
    return False if finite and diff > rel * scale else None


def _ordered(ps: list[Node], gs: list[Node], backend: Backend | None) -> Tri:
    if len(ps) != len(gs):
        return False
    result: Tri = True
    for a, b in zip(ps, gs):
        r = _compare(a, b, backend)
        if r is False:
            return False
        if r is None:
            result = None
    return result


def perfect_matching(table: list[list[bool]]) -> bool:
    """True when the square 0/1 ``table`` has a perfect matching (rows to columns; Kuhn's
    augmenting paths) -- unordered answer sets: every predicted item pairs with its own gold."""
    n = len(table)
    owner = [-1] * n

    def try_row(i: int, seen: list[bool]) -> bool:
        for j in range(n):
            if table[i][j] and not seen[j]:
                seen[j] = True
                if owner[j] == -1 or try_row(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(try_row(i, [False] * n) for i in range(n))


def _unordered(ps: list[Node], gs: list[Node], backend: Backend | None) -> Tri:
    n = len(ps)
    if n != len(gs):
        return False
    if n > 40:
        return _ordered(ps, gs, backend)
    table = [[_compare(a, b, backend) for b in gs] for a in ps]

    def match(allowed) -> bool:
        return perfect_matching([[allowed(r) for r in row] for row in table])

    if match(lambda r: r is True):
        return True
    if not match(lambda r: r is not False):
        return False
    return None


def _compare(p: Node, g: Node, backend: Backend | None) -> Tri:
    # single-element containers of a bare list are just the element
    if p.kind == "list" and len(p.items) == 1:
        p = p.items[0]
    if g.kind == "list" and len(g.items) == 1:
        g = g.items[0]
    if p.kind == "atom" and g.kind == "atom":
        pm, gm = _expand_pm(p.text), _expand_pm(g.text)
        if pm or gm:
            pl = Node("list", items=[_atom(x) for x in pm]) if pm else p
            gl = Node("list", items=[_atom(x) for x in gm]) if gm else g
            if pl.kind == "list" and gl.kind == "list":
                return _unordered(pl.items, gl.items, backend)
            return False
        return _atoms_equal(p, g, backend)
    if p.kind == "atom" or g.kind == "atom":
        atom, seq = (p, g) if p.kind == "atom" else (g, p)
        pm = _expand_pm(atom.text)
        if pm and seq.kind in ("list", "set"):
            expanded = Node("list", items=[_atom(x) for x in pm])
            return _compare(expanded, seq, backend) if atom is p else _compare(p, expanded, backend)
        if simple_number(atom.text) is not None or is_word(atom.text):
            return False  # a number or a word can't equal a list/tuple/set
        return backend.mismatch(p, g) if backend else None
    if p.kind == "tuple" and g.kind == "tuple":
        if len(p.items) != len(g.items):
            return False
        if len(g.items) == 2 and (p.open != g.open or p.close != g.close):
            return False  # (1,2] vs [1,2): different intervals
        if len(g.items) > 2 and (p.open + p.close) not in ("()", "[]"):
            return False
        return _ordered(p.items, g.items, backend)
    if g.kind == "tuple" or p.kind == "tuple":
        tup, other = (g, p) if g.kind == "tuple" else (p, g)
        if other.kind == "list" and tup.open == "(" and tup.close == ")":
            # "(1,2)" vs "1, 2": same ordered elements
            return _ordered(p.items, g.items, backend)
        if other.kind == "list" and backend is not None:
            return backend.mismatch(p, g)  # interval vs inequalities "x<2, x>3"
        return False if other.kind == "set" else (backend.mismatch(p, g) if backend else None)
    # list/set vs list/set: unordered multisets of answers (a repeated solution tuple is one)
    ps, gs = p.items, g.items
    if len(ps) != len(gs) and any(x.kind == "tuple" for x in ps + gs):
        ps, gs = _distinct(ps), _distinct(gs)
    return _unordered(ps, gs, backend)


def _count_brackets(s: str) -> int:
    return s.count("(") + s.count("[") + s.count("{")


def answers_equal(pred: str | None, gold: str | None, backend: Backend | None = None) -> Tri:
    """Compare extracted answers. ``None`` = undecided without a backend."""
    if pred is None or gold is None:
        return False
    p, g = normalize(pred), normalize(gold)
    if not p or not g:
        return False
    if key(p) == key(g):
        return True
    if len(p) > 20 * MAX_ATOM_LEN or len(g) > 20 * MAX_ATOM_LEN:
        return False
    if max(_count_brackets(p), _count_brackets(g)) > MAX_BRACKETS:
        return False  # keeps the structure parser linear-ish on adversarial input
    gn = parse_structure(g)
    pn = parse_structure(p)
    # "1,000" (no space after the comma) is a number unless the other side is a list too
    if pn.kind == "list" and THOUSANDS.match(p) and not (gn.kind == "list" and len(gn.items) == len(pn.items)):
        pn = _atom(p.replace(",", ""))
    if gn.kind == "list" and THOUSANDS.match(g) and not (pn.kind == "list" and len(pn.items) == len(gn.items)):
        gn = _atom(g.replace(",", ""))
    pn, gn = _decimal_comma(pn, p, gn), _decimal_comma(gn, g, pn)
    pn, gn = _chain_interval(pn), _chain_interval(gn)
    # whole-answer assignment "(x, y) = (1, 2)" / "S = \{1, 2\}"
    for side in ("p", "g"):
        node, text = (pn, p) if side == "p" else (gn, g)
        if node.kind != "atom":
            continue
        lhs, rhs, kind = split_relation(text)
        if kind == "assign" and (rhs.startswith(("(", "[", "\\{")) or "," in _top_level(rhs)):
            new = parse_structure(rhs)
            if new.kind != "atom":
                if side == "p":
                    pn = new
                else:
                    gn = new
    return _compare(pn, gn, backend)


# --------------------------------------------------------------------------- rules on top
# Each rule below carries a regression case in tests/test_rewards.py (test_rule_*).

_RATIO_PART = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def _ratios_equal(pt: str, gt: str) -> Tri:
    """``a:b`` answers. Clock times / a zero part (``12:00`` vs ``1:00``) compare part by part;
    otherwise ratios are equal when proportional (``2:4`` = ``1:2``), and a two-part ratio
    equals the number ``a/b`` (``7:32`` vs ``\\frac{7}{32}``). None when neither is a ratio."""
    pp, gp = _split_top(pt, ":"), _split_top(gt, ":")
    if len(pp) < 2 and len(gp) < 2:
        return None
    if len(pp) >= 2 and not all(_RATIO_PART.match(x) for x in pp):
        return None
    if len(gp) >= 2 and not all(_RATIO_PART.match(x) for x in gp):
        return None
    if len(pp) != len(gp):
        ratio, other = (pp, gt) if len(pp) == 2 else (gp, pt) if len(gp) == 2 else (None, None)
        num = simple_number(other) if ratio else None
        if num is None or Fraction(ratio[1]) == 0:
            return False
        return num[1] is None and num[0] == Fraction(ratio[0]) / Fraction(ratio[1])
    a, b = [Fraction(x) for x in pp], [Fraction(x) for x in gp]
    if 0 in a or 0 in b:
        return a == b
    return all(x * b[0] == y * a[0] for x, y in zip(a, b))


_INT_PAIR = re.compile(r"^[+-]?\d+,\d+$")


def _decimal_comma(node: Node, text: str, other: Node) -> Node:
    """``1000,99`` / ``2,74`` against a decimal number is a decimal comma (European style);
    against anything else it stays a list of two answers."""
    if node.kind != "list" or not _INT_PAIR.match(text) or THOUSANDS.match(text) or other.kind != "atom":
        return node
    num = simple_number(other.text)
    if num is None or num[1] is None:
        return node
    return _atom(text.replace(",", "."))


_CHAIN = re.compile(r"^(.+?)\s*(<|\\leq)\s*(.+?)\s*(<|\\leq)\s*(.+)$")


def _chain_interval(node: Node) -> Node:
    """``0 < f(x) < 1`` (a named middle between two plain bounds) -> the interval ``(0, 1)``.
    Not for ``1 \\leq |z| \\leq 2`` (a union of two intervals: left to sympy)."""
    if node.kind != "atom" or "<" not in node.text and "\\leq" not in node.text:
        return node
    m = _CHAIN.match(node.text)
    if not m or "|" in m.group(3) or not (_SIMPLE_LHS.match(m.group(3)) or _named_quantity(m.group(3))):
        return node
    lo, hi = m.group(1), m.group(5)
    if any(c in lo + hi for c in "<>=") or "\\leq" in lo + hi or "\\geq" in lo + hi:
        return node
    return Node("tuple", items=[_atom(lo), _atom(hi)], open="(" if m.group(2) == "<" else "[",
                close=")" if m.group(4) == "<" else "]")


def _node_key(node: Node) -> str:
    if node.kind == "atom":
        return key(node.text)
    return node.kind + node.open + "|".join(_node_key(i) for i in node.items) + node.close


def _distinct(items: list[Node]) -> list[Node]:
    seen, out = set(), []
    for it in items:
        k = _node_key(it)
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out
