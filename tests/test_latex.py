"""megatron_nft.latex: every expectation below is derived by hand from the input string
(indices counted character by character), not from running the code."""

from megatron_nft import latex as L


def test_brace_matches_skips_escapes():
    #        0123456789
    text = "a{b\\{c}d}"
    # '{' at 1; '\{' at 3-4 is escaped; '}' at 6 closes 1; '}' at 8 is unmatched
    assert L.brace_matches(text) == {1: 6}
    assert L.brace_matches("{{}}") == {1: 2, 0: 3}
    assert L.brace_matches("{") == {} and L.brace_matches("}") == {}
    assert L.brace_matches("\\}{}") == {2: 3}


def test_close_index_any_bracket_kind():
    assert L.close_index("(0, 1]", 0) == 5  # half-open interval
    assert L.close_index("[a, (b)] c", 0) == 7
    assert L.close_index("{a}{b}", 3) == 5
    assert L.close_index("(a", 0) == -1
    # \{ ... \} as one set: s[0] is the backslash, the result is the index of the final '}'
    s = "\\{1, \\{2\\}\\} x"
    assert L.close_index(s, 0) == 11
    # escaped parentheses are not brackets
    assert L.close_index("(\\)a)", 0) == 4


def test_split_top_levels():
    assert L.split_top("1, 2,3") == ["1", "2", "3"]
    assert L.split_top("(1,2), [3,4)") == ["(1,2)", "[3,4)"]
    assert L.split_top("\\{1,2\\}, 3") == ["\\{1,2\\}", "3"]
    assert L.split_top("\\frac{1,2}{3}, 4") == ["\\frac{1,2}{3}", "4"]
    assert L.split_top("\\begin{pmatrix} 1, 2 \\end{pmatrix}, 5") == [
        "\\begin{pmatrix} 1, 2 \\end{pmatrix}",
        "5",
    ]
    assert L.split_top("1,,2") == ["1", "", "2"]
    assert L.split_top("1,,2", drop_empty=True) == ["1", "2"]
    assert L.split_top("a; b, c", ";") == ["a", "b, c"]
    assert L.split_top("a; b, c", ",;") == ["a", "b", "c"]
    assert L.split_top("") == [""]
    # a stray closer does not hide later separators
    assert L.split_top("a), b") == ["a)", "b"]


def test_boxed_spans_all_and_last():
    #       0         1         2
    #       0123456789012345678901234567
    text = "x \\boxed{1} y \\fbox{a{b}}"
    assert L.boxed_spans(text) == [(2, 11, "1"), (14, 25, "a{b}")]
    assert L.last_boxed(text) == "a{b}"
    assert L.boxed_spans("\\boxed{\\{1,2\\}}") == [(0, 15, "\\{1,2\\}")]
    assert L.boxed_spans("\\boxed 5$ and") == [(0, 8, "5")]
    assert L.boxed_spans("\\boxed {7}") == [(0, 10, "7")]
    assert L.boxed_spans("\\boxedx{7}") == []
    assert L.boxed_spans("no box") == [] and L.last_boxed("no box") is None


def test_last_boxed_truncated_final_box_is_none():
    assert L.last_boxed("\\boxed{1} then \\boxed{2") is None
    assert L.last_boxed("\\boxed{a{b}c} then \\boxed {d}") == "d"
    assert L.last_boxed("\\boxed{}") == ""


def test_expand_pm():
    assert L.expand_pm("1 \\pm \\sqrt{2}") == ["1 + \\sqrt{2}", "1 - \\sqrt{2}"]
    assert L.expand_pm("\\mp 3") == ["- 3", "+ 3"]
    assert L.expand_pm("3") is None
    assert L.expand_pm("\\pm 1 \\pm 2") is None  # two signs: ambiguous
    assert L.expand_pm("x \\equiv 3 \\pmod{5}") is None  # \pmod is not a sign
    assert L.expand_pm("\\pm1") == ["+1", "-1"]


def test_strip_math_delims_removes_nested_pairs_only_when_they_enclose():
    from megatron_nft.latex import strip_math_delims

    assert strip_math_delims("  $$ \\(x+1\\) $$ ") == "x+1"
    assert strip_math_delims("\\[\\frac{1}{2}\\]") == "\\frac{1}{2}"
    assert strip_math_delims("x") == "x" and strip_math_delims("$") == "$"
