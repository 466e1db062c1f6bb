"""The one LaTeX scanner of the project: brackets, top-level splitting, boxes, ``\\pm``.

Every function here is a single linear pass (no regex backtracking), so it is safe on
100 KB model responses. Conventions shared by all of them:

* a backslash escapes the next character: ``\\{`` and ``\\}`` never count as plain braces;
* for *bracket* matching (``close_index``, ``split_top``) the escaped set braces ``\\{ \\}``
  do count as a bracket pair (``\\{1, 2\\}`` is one set), as do ``( [ {`` against ``) ] }``
  (so half-open intervals ``(0, 1]`` nest like any bracket);
* ``\\begin{..}`` / ``\\end{..}`` open / close one level in ``split_top``.

Used by ``megatron_nft.rewards`` (answer extraction and equivalence), ``megatron_nft.data``
(gold answers of MATH-style solutions) and ``megatron_nft.eval`` (multi-answer splitting).
"""

from __future__ import annotations

__all__ = [
    "brace_matches",
    "close_index",
    "split_top",
    "boxed_spans",
    "last_boxed",
    "expand_pm",
    "BOX_COMMANDS",
]

BOX_COMMANDS = ("\\boxed", "\\fbox")
_OPEN = "([{"
_CLOSE = ")]}"


def brace_matches(text: str) -> dict[int, int]:
    """Map the index of every plain ``{`` to the index of its matching ``}``.

    Escaped braces (``\\{``, ``\\}``) and any other character after a backslash are skipped;
    an unmatched ``{`` has no entry, an unmatched ``}`` is ignored.
    """
    matches: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


def close_index(s: str, i: int) -> int:
    """Index of the bracket that closes the one starting at ``s[i]``, or -1.

    Any of ``( [ {`` closes with any of ``) ] }`` (intervals like ``(0, 1]``). If ``s[i]`` is
    the backslash of ``\\{``, the result is the index of the ``}`` of the matching ``\\}``.
    Other escaped characters (``\\(``, ``\\,``) are skipped.
    """
    depth, j, n = 0, i, len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            if j + 1 < n and s[j + 1] in "{}":
                depth += 1 if s[j + 1] == "{" else -1
                if depth == 0:
                    return j + 1
            j += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def split_top(s: str, seps: str = ",", drop_empty: bool = False) -> list[str]:
    """Split ``s`` at any character of ``seps`` that sits outside every bracket.

    Brackets: ``( [ {`` / ``) ] }``, ``\\{ \\}`` and ``\\begin`` / ``\\end``. Parts are
    stripped; empty parts are kept unless ``drop_empty`` (so ``"1,,2"`` gives three parts).
    A stray closing bracket never makes the depth negative enough to hide a later separator
    from the top level of what follows it.
    """
    parts: list[str] = []
    depth, start, i, n = 0, 0, 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            if s.startswith("\\begin", i):
                depth += 1
            elif s.startswith("\\end", i):
                depth -= 1
            elif i + 1 < n and s[i + 1] in "{}":
                depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c in seps and depth <= 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    out = [p.strip() for p in parts]
    return [p for p in out if p] if drop_empty else out


def _bare_token_end(text: str, k: int) -> int:
    """End of the ``\\boxed 5`` argument starting at ``k``: up to whitespace or ``$``."""
    j, n = k, min(len(text), k + 200)
    while j < n and text[j] not in " \t\n$":
        j += 1
    return j


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """Every complete ``\\boxed``/``\\fbox`` as ``(start, end, content)``, in text order.

    ``\\boxed{...}`` takes the brace-matched argument (``\\{``/``\\}`` inside are content);
    ``\\boxed 5`` takes the token up to whitespace or ``$``. A box whose brace never closes
    is left out; ``\\boxedx`` (a longer command name) is not a box.
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    matches = brace_matches(text)
    spans: list[tuple[int, int, str]] = []
    n = len(text)
    for cmd in BOX_COMMANDS:
        start = text.find(cmd)
        while start != -1:
            j = start + len(cmd)
            if j < n and text[j].isalpha():
                start = text.find(cmd, j)
                continue
            k = j
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] == "{":
                close = matches.get(k)
                if close is not None:
                    spans.append((start, close + 1, text[k + 1 : close]))
            elif j < k < n:
                end = _bare_token_end(text, k)
                if end > k:
                    spans.append((start, end, text[k:end]))
            start = text.find(cmd, j)
    spans.sort()
    return spans


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed``/``\\fbox`` in ``text``; None if there is none or if
    the last one is incomplete (a truncated final box is no answer, not the previous box)."""
    last_cmd = max(text.rfind(c) for c in BOX_COMMANDS)
    if last_cmd == -1:
        return None
    for start, _end, content in reversed(boxed_spans(text)):
        if start == last_cmd:
            return content
        if start < last_cmd:
            break
    return None


def _sign_positions(text: str) -> list[int]:
    """Indices of ``\\pm``/``\\mp`` commands (not ``\\pmod``, ``\\pmb``...)."""
    out = []
    for cmd in ("\\pm", "\\mp"):
        i = text.find(cmd)
        while i != -1:
            if not text[i + 3 : i + 4].isalpha():
                out.append(i)
            i = text.find(cmd, i + 3)
    return sorted(out)


def expand_pm(text: str) -> list[str] | None:
    """``a \\pm b`` -> ``["a + b", "a - b"]`` (``\\mp``: minus first); None unless the text
    holds exactly one ``\\pm``/``\\mp`` (several signs are ambiguous: left to the caller).
    ``\\pmod`` and other longer command names are not signs."""
    pos = _sign_positions(text)
    if len(pos) != 1:
        return None
    i = pos[0]
    first, second = ("+", "-") if text.startswith("\\pm", i) else ("-", "+")
    return [text[:i] + first + text[i + 3 :], text[:i] + second + text[i + 3 :]]


_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def strip_math_delims(s: str) -> str:
    """Remove enclosing ``$$..$$``, ``$..$``, ``\\(..\\)`` and ``\\[..\\]`` pairs (repeatedly, with
    the white space inside them)."""
    s = s.strip()
    changed = True
    while changed and s:
        changed = False
        for a, b in _MATH_DELIMS:
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a): len(s) - len(b)].strip()
                changed = True
    return s

