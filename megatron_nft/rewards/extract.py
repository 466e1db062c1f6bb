"""Final-answer extraction from model responses and gold answers (pure Python, no sympy).

Responses
---------
``extract_answer(response)`` returns the text of the final answer, or ``None``:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, ``\\boxed 5`` too; a final box
   that never closes means "no answer", not a fallback to some number); several
   boxes separated only by commas / "and" / whitespace at the end are joined with ", "
   (``\\boxed{-2} and \\boxed{1}`` -> ``-2, 1``);
2. the last "Answer: X" line (DAPO prompts ask for one), ``$``/markdown stripped;
   whichever of 1. and 2. comes later in the text wins;
3. fallbacks: the last "the (final) answer is X" phrase, then the last inline/display math
   segment, then the last number.

Golds
-----
``extract_gold(gold)`` treats the gold as the answer itself: the content of a ``\\boxed{}``
if there is one, otherwise the whole string with ``$`` / ``\\( \\)`` delimiters removed.
It never falls back to "the last number" of the gold.

Everything here is linear in the input length (one pass for brace matching, no
backtracking-prone regexes), so 100 KB responses are cheap.
"""

from __future__ import annotations

import re

from megatron_nft.latex import boxed_spans, strip_math_delims

__all__ = [
    "extract_answer",
    "extract_gold",
    "last_boxed",
    "boxed_spans",
    "answer_line",
]

# What may sit between two boxes that belong to one multi-part answer.
# ("or" is not a joiner: "\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}" restates one answer)
# A short \text{...} holding "and" ("\boxed{(3,3)} \text{ for part (a) and } \boxed{(1,1)}") and a
# variable label before the next box ("y_1 = \boxed{..} and y_2 = \boxed{..}") join too.
_BOX_JOIN_SEP = re.compile(
    r"^(?:\s|,|;|\$|\\quad|\\qquad|\\[()\[\]]|\\text\{[^{}]{0,24}\band\b[^{}]{0,8}\}|\band\b|&"
    r"|[a-zA-Z](?:_\{?\w{1,3}\}?)?\s*=)*$"
)
# "Answer: X" at the start of a line (DAPO's format), not "... check our answer: ..."
_ANSWER_LINE = re.compile(r"^[ \t>*#_]*(?:final\s+)?answer\s*\**\s*[:：]", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS = re.compile(
    r"(?:final\s+)?answer\s+(?:is|would\s+be|will\s+be|=)\s*(?:\\\[|\\\(|\$\$?)?\s*:?",
    re.IGNORECASE,
)
_MATH_SEG = re.compile(r"\$\$(.+?)\$\$|\$([^$]+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_HOPE = re.compile(r"\s*I hope it is correct\.?\s*$", re.IGNORECASE)
_MATH_WORDS = {"and", "or", "pi", "sqrt", "frac", "infty", "inf", "mod", "cm", "mm", "km"}
# "Final Answer: X" after a sentence on the same line ("... = 120. Final Answer: The volume is 120.")
_FINAL_INLINE = re.compile(r"final\s+answer\s*\**\s*[:：]", re.IGNORECASE)
_CHAT_TAIL = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end_of_text)\|>")
_BARE_MAX = 300
_BARE_DELIMS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")
_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mbox|operatorname|begin|end)\s*\{[^{}]*\}")


def last_boxed(text: str, join: bool = True) -> tuple[int, str] | None:
    """Content of the last complete box as ``(start, content)``; optionally join a trailing
    run of boxes separated only by commas/"and"/whitespace."""
    r = _last_boxed_span(text, join)
    return None if r is None else (r[0], r[2])


def _last_boxed_span(text: str, join: bool = True) -> tuple[int, int, str] | None:
    spans = boxed_spans(text)
    if not spans:
        return None
    start, end, content = spans[-1]
    if not join:
        return start, end, content.strip()
    parts = [content.strip()]
    for prev in reversed(spans[:-1]):
        between = text[prev[1] : start]
        if len(between) > 40 or not _BOX_JOIN_SEP.match(between):
            break
        parts.append(prev[2].strip())
        start = prev[0]
    parts.reverse()
    return start, end, ", ".join(p for p in parts if p)


def _strip_delims(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^(?:\*\*|__|`)+|(?:\*\*|__|`)+$", "", s).strip()
    return strip_math_delims(s)


def _trim_prose(s: str) -> str:
    """Cut trailing prose after a math-looking head: "5 because ..." -> "5"."""
    s = _HOPE.sub("", s).strip()
    tokens = s.split()
    kept: list[str] = []
    for tok in tokens:
        word = tok.strip(".,;:!?")
        if (
            kept
            and len(word) >= 3
            and word.isalpha()
            and word.lower() not in _MATH_WORDS
            and "\\" not in tok
        ):
            break
        kept.append(tok)
    out = " ".join(kept).strip()
    return out.rstrip(".,;:!? ") if out else out


def _answer_from_segment(seg: str) -> str | None:
    """Answer inside a short piece of text (the rest of an "Answer:" line, an "answer is" tail)."""
    seg = seg.strip()
    if not seg:
        return None
    b = last_boxed(seg)
    if b is not None:
        return b[1]
    m = None
    for m in _ANSWER_IS.finditer(seg):
        pass
    if m is not None and m.end() < len(seg):
        inner = _answer_from_segment(seg[m.end() :])
        if inner:
            return inner
    seg = _HOPE.sub("", seg).strip()
    if seg.startswith(("$", "\\(", "\\[")):
        mm = _MATH_SEG.match(seg)
        if mm:
            return next(g for g in mm.groups() if g is not None).strip().rstrip(".,;")
    # Math inside prose ("The largest $n$ is $34$." / "... $n$ is 34."): the last math
    # segment, unless a plain number comes after it.
    segs = list(_MATH_SEG.finditer(seg))
    if segs and not re.match(r"^[-+\d\\({\[]", seg):
        last = segs[-1]
        nums = list(_NUMBER.finditer(seg, last.end()))
        if nums:
            return nums[-1].group(0).rstrip(",").strip()
        return next(g for g in last.groups() if g is not None).strip().rstrip(".,;")
    seg = _strip_delims(seg.replace("$", " ").strip())
    # Sentence end: a period followed by whitespace (keeps decimals like 3.5 intact).
    cut = re.search(r"\.\s", seg)
    if cut:
        seg = seg[: cut.start()]
    first = seg.split(" ", 1)[0].strip(".,;:!?")
    if len(seg.split()) <= 2:  # "Answer: Evelyn", "Answer: yes"
        return _HOPE.sub("", seg).strip(" .,;:!?") or None
    if len(first) >= 3 and first.isalpha() and first.lower() not in _MATH_WORDS:
        # a sentence: "The minimum value is 12." -> what follows the last "is"/"="
        tail = None
        for tail in re.finditer(r"(?:\b(?:is|are|equals|be|was)\b|=)\s*", seg):
            pass
        if tail is not None and _trim_prose(seg[tail.end() :]):
            return _trim_prose(seg[tail.end() :])
        nums = _NUMBER.findall(seg)
        return nums[-1].rstrip(",").strip() if nums else None
    out = _trim_prose(seg)
    return out or None


def answer_line(text: str) -> tuple[int, str] | None:
    """The last "Answer: X" (DAPO style) as ``(start, X)``."""
    if "nswer" not in text and "NSWER" not in text:
        return None
    last = None
    for last in _ANSWER_LINE.finditer(text):
        pass
    for inline in _FINAL_INLINE.finditer(text):
        if last is None or inline.start() > last.end():
            last = inline
    if last is None:
        return None
    rest = text[last.end() :]
    line_end = rest.find("\n")
    line = rest if line_end == -1 else rest[:line_end]
    if not line.strip().strip("*").strip():
        # "**Final Answer:**\n\n$5$": take the next non-empty line
        for nxt in rest.split("\n")[1:6]:
            if nxt.strip():
                line = nxt
                break
    ans = _answer_from_segment(line.strip().strip("*").strip())
    if ans is None:
        return None
    return last.start(), ans


def _bare_answer(text: str) -> str | None:
    """The whole response when it *is* the answer: short, no delimiters or boxes, at most one
    word of two letters or more (segment names like ``AB`` aside) outside ``\\text{}``:
    "\\frac{1}{3}", "x \\in [-2,7]", "odd", "28 percent"; not "Thus it is 19"."""
    s = text.strip()
    if not s or len(s) > _BARE_MAX or "\n\n" in s or any(d in s for d in _BARE_DELIMS):
        return None
    words = [w for w in _PROSE_WORD.findall(_TEXT_CMD.sub(" ", s))
             if w.lower() not in _MATH_WORDS and not (w.isupper() and len(w) <= 3)]  # AB, CD: names
    return s if len(words) <= 1 else None


def _tidy(ans: str | None) -> str | None:
    """Drop a closing ``\\)``/``\\]``/``$`` left over when the opening one was consumed."""
    if not ans:
        return ans
    ans = ans.strip()
    for close, open_ in (("\\)", "\\("), ("\\]", "\\["), ("$", "$")):
        if ans.endswith(close) and ans.count(open_) < ans.count(close) + (close == "$"):
            ans = ans[: -len(close)].rstrip()
    return ans or None


def _fallback_answer(response: str) -> str | None:
    """No box and no "Answer:" line: "the answer is X", a bare answer, the last math segment
    (or a number written after it), the last number."""
    m = None
    for m in _ANSWER_IS.finditer(response):
        pass
    if m is not None:
        tail = response[m.end() : m.end() + 500]
        nl = tail.find("\n\n")
        ans = _answer_from_segment(tail if nl == -1 else tail[:nl])
        if ans:
            return ans
    bare = _bare_answer(response)
    if bare is not None:
        return bare
    tail = response[-3000:]
    segs = [mm for mm in _MATH_SEG.finditer(tail)]
    if segs:
        mm = segs[-1]
        after = _NUMBER.findall(tail, mm.end())
        if after:  # "... $x$ ... increases by 100%."
            return after[-1].rstrip(",").strip()
        seg = next(g for g in mm.groups() if g is not None).strip().rstrip(".,;")
        if seg:
            return seg
    nums = _NUMBER.findall(response[-2000:])
    if nums:
        return nums[-1].rstrip(",").strip()
    return None


def extract_answer(response: str) -> str | None:
    """Final answer text of a model response, or None if none can be found."""
    if not isinstance(response, str):
        response = "" if response is None else str(response)
    head = _CHAT_TAIL.split(response, 1)[0]
    if head.strip():
        response = head  # "... I hope it is correct. <|im_start|>user ..." (a leaked turn)
    if not response.strip():
        return None
    boxed = _last_boxed_span(response)
    line = answer_line(response)
    last_cmd = max(response.rfind("\\boxed"), response.rfind("\\fbox"))
    if last_cmd != -1 and (boxed is None or last_cmd >= boxed[1]):
        # the final box is broken (unbalanced/truncated): a formatting failure, no answer --
        # unless a DAPO "Answer:" line follows it
        return _tidy(line[1]) if line is not None and line[0] > last_cmd else None
    if boxed is not None and (line is None or boxed[0] >= line[0] or line[0] < boxed[1]):
        return boxed[2]  # the box comes last (or the "Answer:" is inside the box)
    if line is not None:
        return _tidy(line[1])
    return _tidy(_fallback_answer(response))


def extract_gold(gold) -> str:
    """The gold answer as text. Boxed content if boxed, else the string itself minus ``$``."""
    if gold is None:
        return ""
    if isinstance(gold, (list, tuple)):
        gold = ", ".join(str(g) for g in gold)
    if isinstance(gold, float):
        gold = repr(gold)
    s = str(gold).strip()
    if not s:
        return ""
    b = last_boxed(s)
    if b is not None:
        return b[1]
    if "$" in s:
        # OlympiadBench writes several answers as "$a$,$b$": drop every unescaped $.
        s = re.sub(r"(?<!\\)\$", "", s)
    return _strip_delims(s)
