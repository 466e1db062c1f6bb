"""A small, fast LaTeX -> sympy parser for the common shapes of math answers.

latex2sympy2 (ANTLR, pure Python) spends 0.05-1 s per expression while its prediction DFA is
cold; most answers are simple: ``\\frac{\\sqrt{3}}{3}``, ``16\\sqrt{3}``, ``\\frac{9}{4}\\pi``,
``x^5 - x^4 + 1``, ``2^{k-n}``, ``(1+i)^2``, ``n(n+1)/4``. This parser handles exactly that
subset and raises ``Unsupported`` for anything else (functions, subscripts, relations, sets,
``e``, text ...), in which case the caller falls back to latex2sympy.

Conventions match latex2sympy's so that a mix of both parsers compares correctly: symbols are
lower-cased single letters (``ab`` = a*b), ``i`` is the imaginary unit, ``e`` is Euler's
number (``E`` a symbol), decimals are Floats,
juxtaposition is multiplication, ``x^23`` is ``x^2 * 3``.

The grammar is written once over a small number interface: ``fast_parse`` builds sympy
objects (worker side); ``fast_values`` evaluates the same grammar with mpmath numbers (50
digits) at given values of the symbols, without importing sympy -- the parent process uses it
only to *refute* (two answers whose values differ at a probe point cannot be equal).
"""

from __future__ import annotations

import re

__all__ = ["fast_parse", "fast_values", "Unsupported"]


class Unsupported(ValueError):
    pass


_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|(\\[a-zA-Z]+)|([a-zA-Z])|(.))", re.DOTALL)
_MUL = {"*", "\\cdot", "\\times"}


def _tokens(s: str) -> list[str]:
    out = []
    for m in _TOKEN.finditer(s):
        tok = next((g for g in m.groups() if g is not None), None)
        if tok is None or tok.isspace():
            continue
        out.append(tok)
    return out


class _P:
    def __init__(self, s: str, ops):
        self.t = _tokens(s)
        self.i = 0
        self.ops = ops

    def peek(self, k: int = 0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def take(self):
        tok = self.peek()
        if tok is None:
            raise Unsupported("unexpected end")
        self.i += 1
        return tok

    def expect(self, tok: str):
        if self.take() != tok:
            raise Unsupported(f"expected {tok}")

    def parse(self):
        v = self.expr()
        if self.peek() is not None:
            raise Unsupported(f"trailing {self.peek()!r}")
        return v

    def expr(self):
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            r = self.term()
            v = v + r if op == "+" else v - r
        return v

    def _starts_atom(self, tok) -> bool:
        return tok is not None and (
            tok in ("(", "{", "\\frac", "\\sqrt", "\\pi", "\\infty")
            or tok[0].isalpha()
            or tok[0].isdigit()
            or tok[0] == "."
        )

    def term(self):
        v = self.unary()
        while True:
            tok = self.peek()
            if tok in _MUL:
                self.take()
                v = v * self.unary()
            elif tok == "/":
                self.take()
                d = self.unary()
                if d == 0:
                    raise Unsupported("division by zero")
                v = v / d
            elif self._starts_atom(tok):
                prev = self.t[self.i - 1]
                if (tok[0].isdigit() or tok[0] == ".") and (prev[0].isdigit() or prev in (")", "}")):
                    raise Unsupported("number after number")  # "2 3", "(x)2": ambiguous
                if tok == "\\frac" and prev[0].isdigit():
                    raise Unsupported("mixed number")  # 2\frac{1}{2} = 5/2 (latex2sympy's rule)
                v = v * self.power()
            else:
                return v

    def unary(self):
        tok = self.peek()
        if tok == "-":
            self.take()
            return -self.unary()
        if tok == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            exp = self.exponent()
            return self.ops.power(base, exp)
        return base

    def exponent(self):
        tok = self.peek()
        if tok == "{":
            self.take()
            v = self.expr()
            self.expect("}")
            return v
        if tok == "-":
            self.take()
            return -self.exponent()
        tok = self.take()
        if tok[0].isdigit():
            if not tok.isdigit():
                raise Unsupported("decimal exponent")
            if len(tok) > 1:  # x^23 = x^2 * 3: push back the rest
                self.t.insert(self.i, tok[1:])
            return self.ops.integer(tok[0])
        if len(tok) == 1 and tok.isalpha():
            return self._symbol(tok)
        if tok == "\\pi":
            return self.ops.pi
        if tok == "(":
            v = self.expr()
            self.expect(")")
            return v
        raise Unsupported(f"exponent {tok!r}")

    def postfix(self):
        v = self.atom()
        while self.peek() == "!":
            self.take()
            v = self.ops.factorial(v)
        return v

    def _symbol(self, ch: str):
        if ch == "i":
            return self.ops.i
        if ch == "e":
            return self.ops.e  # as latex2sympy: lower-case e is Euler's number, E a symbol
        return self.ops.symbol(ch.lower())

    def group(self):
        tok = self.take()
        if tok == "{":
            v = self.expr()
            self.expect("}")
            return v
        if tok[0].isdigit() and tok.isdigit():  # \frac12, \sqrt3
            if len(tok) > 1:
                self.t.insert(self.i, tok[1:])
            return self.ops.integer(tok[0])
        if len(tok) == 1 and tok.isalpha():
            return self._symbol(tok)
        raise Unsupported("group")

    def atom(self):
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return self.ops.decimal(tok) if "." in tok else self.ops.integer(tok)
        if len(tok) == 1 and tok.isalpha():
            if self.peek() == "_":
                raise Unsupported("subscript")
            if self.peek() == "(" and (tok.isupper() or tok in "fghpq" or self.peek(2) == ")"
                                       or self.peek(1) == ")" or self.peek(2) == ","):
                raise Unsupported("function call")  # f(x), P(A), u(t): latex2sympy's call
            return self._symbol(tok)
        if tok == "(":
            v = self.expr()
            self.expect(")")
            return v
        if tok == "{":
            v = self.expr()
            self.expect("}")
            return v
        if tok == "\\pi":
            return self.ops.pi
        if tok == "\\infty":
            return self.ops.infinity()
        if tok == "\\frac":
            num = self.group()
            den = self.group()
            if den == 0:
                raise Unsupported("division by zero")
            return num / den
        if tok == "\\sqrt":
            if self.peek() == "[":
                self.take()
                n = self.expr()
                self.expect("]")
                return self.ops.power(self.group(), self.ops.integer("1") / n)
            return self.ops.sqrt(self.group())
        raise Unsupported(f"token {tok!r}")


class _SympyOps:
    def __init__(self):
        import sympy

        self.sympy = sympy
        self.pi, self.e, self.i = sympy.pi, sympy.E, sympy.I

    def integer(self, tok: str):
        return self.sympy.Integer(tok)

    def decimal(self, tok: str):
        return self.sympy.Float(tok)

    def symbol(self, name: str):
        return self.sympy.Symbol(name, real=True)

    def sqrt(self, x):
        return self.sympy.sqrt(x)

    def power(self, base, exp):
        return base**exp

    def infinity(self):
        return self.sympy.oo

    def factorial(self, v):
        if not (isinstance(v, self.sympy.Integer) and 0 <= v <= 3000):
            raise Unsupported("factorial")
        return self.sympy.factorial(v)


class _ValueOps:
    """mpmath numbers (50 digits); symbols take the given values."""

    def __init__(self, values: dict):
        self.mp = _value_context()
        self.values = values
        self.pi, self.e, self.i = self.mp.pi, self.mp.e, self.mp.mpc(0, 1)

    def integer(self, tok: str):
        if len(tok) > 40:
            raise Unsupported("long integer")
        return self.mp.mpf(int(tok))

    def decimal(self, tok: str):
        return self.mp.mpf(tok)

    def symbol(self, name: str):
        return self.values.setdefault(name, self.mp.mpf(_PROBES[len(self.values) % len(_PROBES)]))

    def sqrt(self, x):
        return self.mp.sqrt(x)

    def power(self, base, exp):
        """Bounded: a result beyond 10^10000 is not evaluated (power towers stay cheap)."""
        mp = self.mp
        size = abs(exp) * mp.log10(abs(base)) if abs(base) > 1 else abs(exp) * 0
        if abs(exp) > 10_000 or size > 10_000:
            raise Unsupported("huge power")
        return mp.power(base, exp)

    def infinity(self):
        raise Unsupported("infinity")

    def factorial(self, v):
        if self.mp.im(v) != 0 or v != int(self.mp.re(v)) or not 0 <= v <= 200:
            raise Unsupported("factorial")
        return self.mp.factorial(v)


_PROBES = ["0.5377", "-0.6471", "1.2609", "-1.9474", "1.2927", "0.1034"]
_CONTEXT = []


def _value_context():
    """A private mpmath context at 50 digits (the global ``mpmath.mp`` stays untouched)."""
    if not _CONTEXT:
        import mpmath

        ctx = mpmath.MPContext()
        ctx.dps = 50
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def _run(text: str, ops):
    if len(text) > 300:
        raise Unsupported("long")
    try:
        return _P(text, ops).parse()
    except Unsupported:
        raise
    except (RecursionError, TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError) as e:
        raise Unsupported(str(e)) from e


def fast_parse(text: str):
    """sympy expression for ``text`` or raise ``Unsupported``."""
    return _run(text, _SympyOps())


def fast_values(text: str, values: dict):
    """The value of ``text`` (an mpmath number) with its symbols set from ``values`` (name ->
    number; symbols not in it get probe values, added to ``values``); raises ``Unsupported``."""
    return _run(text, _ValueOps(values))
