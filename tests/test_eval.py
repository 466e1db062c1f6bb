"""Evaluation harness (megatron_nft.eval + tools/eval.py): grading of the six benchmark files
with their own gold answers, derangements, OlympiadBench multi-answer rules, metrics, the
results JSON, errors, and one tiny generation run with the HF engine."""
from __future__ import annotations

import json
import os
import random

import pytest

from megatron_nft.eval import benchmarks as B
from megatron_nft.eval.metrics import majority_vote, make_record, pass_at_k, standard_errors, summarize
from megatron_nft.eval.reference import reference_gold
from megatron_nft.rewards import MathVerifier, verify_answer
from tools import eval as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "eval")
SIZES = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675}
needs_data = pytest.mark.skipif(not all(os.path.isfile(os.path.join(DATA, f"{b}.jsonl")) for b in SIZES),
                                reason=f"benchmark files not found in {DATA}")

# Deranged golds: problem i gets the gold of problem PERM[i] (seeded Sattolo cycle, see
# _derangement). These problems are still graded correct because the two golds are the same
# answer (checked both ways in test_deranged_golds); every other problem must score 0.
COINCIDENT = {
    "aime24": [5],  # 104 (problem 10 has 104 too)
    "aime25": [],
    "amc23": [23],  # 7 (problem 22)
    "math500": [174, 181],  # 2 (problem 141), \frac{\sqrt{3}}{3} (problem 146)
    "minerva_math": [65],  # 4 (problem 142)
    "olympiadbench": [290, 664],  # 20 (problem 483), 5 (problem 510)
}


def _derangement(n: int, seed: int) -> list[int]:
    """A random cyclic permutation (Sattolo's algorithm): perm[i] != i for all i."""
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _boxed(gold: str) -> str:
    return "Let me think step by step. The answer is \\boxed{%s}." % gold


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=5.0, num_workers=2) as v:
        yield v


@pytest.fixture(scope="module")
def problems():
    return {b: B.load_problems(b, DATA) for b in SIZES}


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- real data


@needs_data
def test_gold_responses_score_100(tmp_path, problems, verifier):
    """Our grader (``--grader ours``) on the benchmark files' own golds."""
    rows = [{"benchmark": b, "idx": p.idx, "response": _boxed(p.gold)} for b in SIZES for p in problems[b]]
    resp = _write_jsonl(tmp_path / "gold.jsonl", rows)
    out, recs = tmp_path / "r.json", tmp_path / "rec.jsonl"
    assert cli.main(["--responses", resp, "--data-dir", DATA, "--out", str(out), "--records", str(recs),
                     "--grader", "ours", "--no-progress"], verifier=verifier) == 0
    res = json.loads(out.read_text())
    assert set(res) == set(SIZES) | {"average", "meta"}
    for b, n in SIZES.items():
        s = res[b]
        assert s["n_problems"] == n == len(problems[b]) and s["k"] == 1 and s["n_samples"] == n
        assert s["accuracy"] == 1.0 and s["pass@1"] == 1.0 and s["pass@k"] == 1.0 and s["maj@k"] == 1.0, b
        assert s["grader"] == ("strict_box" if b in ("aime24", "aime25", "amc23") else "math")
    assert res["average"]["accuracy"] == 1.0 and res["average"]["complete"] is True
    assert res["average"]["benchmarks"] == list(SIZES) and res["average"]["n_benchmarks"] == 6
    lines = _records(recs)
    assert len(lines) == sum(SIZES.values())
    r0 = lines[0]
    assert r0["benchmark"] == "aime24" and r0["idx"] == 0 and r0["gold"] == "204"
    assert r0["answers"] == ["204"] and r0["correct"] == [True] and r0["maj_correct"] is True
    # OlympiadBench multi-answer golds are split into several components
    multi = [p for p in problems["olympiadbench"] if p.multi]
    assert len(multi) >= 90 and all(len(p.gold_parts) >= 2 for p in multi)


@needs_data
def test_deranged_golds(tmp_path, problems, verifier):
    rows, perms = [], {}
    for b in SIZES:
        ps = problems[b]
        perm = perms[b] = _derangement(len(ps), seed=2024)
        assert all(perm[i] != i for i in range(len(ps)))
        rows += [{"benchmark": b, "idx": p.idx, "response": _boxed(ps[perm[p.idx]].gold)} for p in ps]
    resp = _write_jsonl(tmp_path / "deranged.jsonl", rows)
    out, recs = tmp_path / "r.json", tmp_path / "rec.jsonl"
    cli.main(["--responses", resp, "--data-dir", DATA, "--out", str(out), "--records", str(recs),
              "--grader", "ours", "--no-progress"], verifier=verifier)
    res = json.loads(out.read_text())
    correct = {b: [] for b in SIZES}
    for r in _records(recs):
        if r["correct"][0]:
            correct[r["benchmark"]].append(r["idx"])
    assert correct == COINCIDENT
    for b, n in SIZES.items():
        assert res[b]["accuracy"] == pytest.approx(len(COINCIDENT[b]) / n)
        for i in COINCIDENT[b]:  # a genuine coincidence: the two golds are one answer, both ways
            p, q = problems[b][i], problems[b][perms[b][i]]
            assert verify_answer(_boxed(q.gold), p.gold, mode=p.grader), (b, i, p.gold, q.gold)
            assert verify_answer(_boxed(p.gold), q.gold, mode=p.grader), (b, i, p.gold, q.gold)


@needs_data
def test_reference_golds_score_100_and_both(tmp_path, problems, verifier):
    """``--grader reference`` (the default) on the golds the reference compares with: boxed,
    they all score (strict box: the exact string; math-verify: the boxed gold parses as itself).
    The zero-padded AIME24 golds boxed as written ("025") are wrong there, right for ours."""
    rows = [{"benchmark": b, "idx": p.idx, "response": _boxed(reference_gold(p))} for b in SIZES for p in problems[b]]
    padded = [p.idx for p in problems["aime24"] if p.gold != reference_gold(p)]
    assert len(padded) == 7 and all(problems["aime24"][i].gold.startswith("0") for i in padded)
    rows += [{"benchmark": "aime24", "idx": i, "response": _boxed(problems["aime24"][i].gold)} for i in padded]
    out, recs = tmp_path / "r.json", tmp_path / "rec.jsonl"
    assert cli.main(["--responses", _write_jsonl(tmp_path / "g.jsonl", rows), "--data-dir", DATA, "--out", str(out),
                     "--records", str(recs), "--grader", "both", "--no-progress"], verifier=verifier) == 0
    res = json.loads(out.read_text())
    for b, n in SIZES.items():
        s = res[b]
        if b != "aime24":
            assert s["pass@1"] == 1.0 and s["graders"]["ours"]["pass@1"] == 1.0 and s["disagreements"] == 0, b
    a = res["aime24"]  # 23 problems with 1 sample, 7 with 2 (right, then "025": wrong / right)
    assert (a["n_samples"], a["k"], a["k_max"], a["disagreements"]) == (37, 1, 2, 7)
    assert a["pass@1"] == pytest.approx((23 + 7 * 0.5) / 30) and a["graders"]["ours"]["pass@1"] == 1.0
    assert a["accuracy"] == pytest.approx(30 / 37)  # pooled over samples: differs from pass@1
    rec = {r["idx"]: r for r in _records(recs) if r["benchmark"] == "aime24"}
    r7 = rec[7]
    assert r7["gold"] == "25" and r7["answers"] == ["25", "025"] and r7["correct"] == [True, False]
    assert r7["graders"]["ours"] == {"gold": "025", "answers": ["25", "025"], "correct": [True, True]}
    assert r7["graders"]["reference"]["correct"] == r7["correct"] and r7["grader"] == "reference"


# --------------------------------------------------------------------------- multi-answer


def _mk(gold: str, question: str) -> B.Problem:
    parts = tuple(B.split_answers(gold))
    ordered = B.is_ordered_request(question)
    return B.Problem("olympiadbench", 0, question, gold, "math", True, ordered, parts)


@pytest.mark.parametrize("gold,question,response,expected", [
    ("1,3,5", "Determine all positive integers $a$ for which ...", r"\boxed{5, 3, 1}", True),
    ("1,3,5", "Determine all positive integers $a$ for which ...", r"\boxed{1, 3}", False),
    ("1,3,5", "Determine all positive integers $a$ for which ...", r"\boxed{1, 3, 5, 7}", False),
    ("1,3,5", "Determine all positive integers $a$ for which ...", r"\boxed{\{1, 3, 5\}}", True),
    ("1,3,5", "Determine all positive integers $a$ for which ...", r"$\boxed{1}, \boxed{3}$ and $\boxed{5}$", True),
    ("(6,3),(9,3),(9,5),(54,5)", "Find all pairs $(m, n)$ of nonnegative integers for which ...",
     r"\boxed{(9,5), (54, 5), (6,3), (9,3)}", True),
    ("(6,3),(9,3),(9,5),(54,5)", "Find all pairs $(m, n)$ of nonnegative integers for which ...",
     r"\boxed{(3,6), (9,3), (9,5), (54,5)}", False),
    ("-2,0,2", "Determine all values of $q$ such that ...", r"\boxed{0, \pm 2}", True),
    (r"$1,\frac{3 + \sqrt{21}}{2},\frac{3 - \sqrt{21}}{2}$", "Determine all real values of $x$ for which ...",
     r"\boxed{\frac{3\pm\sqrt{21}}{2}, 1}", True),
    ("$2,-1,-18$", "What are the values of $a, h$ and $k$ ?", r"\boxed{2, -1, -18}", True),
    ("$2,-1,-18$", "What are the values of $a, h$ and $k$ ?", r"\boxed{a=2, h=-1, k=-18}", True),
    ("$2,-1,-18$", "What are the values of $a, h$ and $k$ ?", r"\boxed{-1, 2, -18}", False),
    ("-3,0", "If $T=x$, determine the values of $b$ and $c$ so that $x=T$ for all $x$.", r"\boxed{0, -3}", False),
    ("5,1", "If $f(x)=x$, what are the minimum and maximum values of $f(x)$ ?", r"\boxed{1, 5}", True),
    (r"$\frac{32}{9}$,$\frac{1}{2}$", "Determine all the values of $a$ for which ...", r"\boxed{0.5, \frac{32}{9}}", True),
    ("$f(x)=x$,$f(x)=2-x$", "Determine all functions $f$ satisfying ...", r"\boxed{f(x)=2-x \text{ and } f(x)=x}", True),
])
def test_multi_answer(verifier, gold, question, response, expected):
    p = _mk(gold, question)
    assert B.grade(verifier, [p], [[response]]) == [[expected]]


def test_order_detection():
    assert B.is_ordered_request("Determine $a$ and $b$.")
    assert B.is_ordered_request("Compute $d(6), d(16)$, and $d(72)$.")
    assert B.is_ordered_request("How many of each did she buy?")
    assert not B.is_ordered_request("Determine all values of $k$ for which the points $A(1,2), B(11,2)$ "
                                    "and $C(k, 6)$ form a right-angled triangle.")
    assert not B.is_ordered_request("Find the smallest and largest possible value of $N$.")
    assert B.split_answers(r"$(1,8,19), (2,7,13)$") == ["(1,8,19)", "(2,7,13)"]
    assert B.split_answers(r"x = 3 \pm \sqrt{2}") == ["x = 3 + \\sqrt{2}", "x = 3 - \\sqrt{2}"]


def test_strict_box_and_float_gold(verifier):
    p = B.Problem("amc23", 0, "q", "27", "strict_box")
    assert B.grade(verifier, [p], [[r"so \boxed{27}", r"\boxed{27.0}", r"\boxed{26}", "27", r"\boxed{2}7"]]) == \
        [[True, True, False, False, False]]
    aime = B.Problem("aime24", 0, "q", "025", "strict_box")
    assert B.grade(verifier, [aime], [[r"\boxed{25}", r"\boxed{025}", r"\boxed{25} then \boxed{3}"]]) == \
        [[True, True, False]]


# --------------------------------------------------------------------------- metrics


def test_pass_at_k_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(32, 0, 32) == 0.0 and pass_at_k(32, 32, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote():
    assert majority_vote(["a", "b", "b", None], [True, False, False, False]) == (1, False)
    assert majority_vote(["a", "b", None, None], [True, False, False, False]) == (0, True)  # tie: first
    assert majority_vote([None, None], [False, False]) == (None, False)


def test_summarize_hand_made():
    r1 = make_record("aime24", 0, "7", ["7", "1", "1", "2"], ["7", "1", "1", "2"], [True, False, False, False])
    r2 = make_record("aime24", 1, "9", ["9", "9", "4", None], ["9", "9", "4", None], [True, True, False, False])
    s = summarize([r1, r2])
    assert s["k"] == 4 and s["n_problems"] == 2 and s["n_samples"] == 8
    assert s["accuracy"] == pytest.approx(3 / 8) and s["pass@1"] == pytest.approx((0.25 + 0.5) / 2)
    assert s["pass@k"] == 1.0 and s["maj@k"] == 0.5
    assert r1.maj_answer == "1" and r2.maj_answer == "9"
    s1 = summarize([r1])
    assert (s1["accuracy"], s1["pass@1"], s1["pass@k"], s1["maj@k"]) == (0.25, 0.25, 1.0, 0.0)


def test_standard_errors_hand_computed():
    # p = 1/4, 1/2: mean 3/8; total var = 2 * (1/8)^2 / (2-1) / 2 = 1/64 -> se 1/8
    # sampling var = (1/4*3/4/3 + 1/2*1/2/3) / 2^2 = (1/16 + 1/12) / 4 = 7/192
    se = standard_errors([(4, 1), (4, 2)])
    assert se["se"] == pytest.approx(1 / 8) and se["se_sampling"] == pytest.approx((7 / 192) ** 0.5)
    assert se["se_problems"] == 0.0  # sampling noise explains all the spread here
    # avg@1, 4 problems, 1 right: p = (1,0,0,0), mean 1/4, var = (9/16 + 3/16) / 3 / 4 = 1/16
    se1 = standard_errors([(1, 1), (1, 0), (1, 0), (1, 0)])
    assert se1["se"] == pytest.approx(0.25) and se1["se_sampling"] == 0.0 and se1["se_problems"] == pytest.approx(0.25)
    assert standard_errors([(4, 1)]) == {"se": 0.0, "se_sampling": 0.0, "se_problems": 0.0}
    s = summarize([make_record("aime24", 0, "7", ["7"] * 4, ["7"] * 4, [True, False, False, False]),
                   make_record("aime24", 1, "9", ["9"] * 4, ["9"] * 4, [True, True, False, False])])
    assert s["se"] == pytest.approx(1 / 8)


def test_table1_layout():
    from megatron_nft.eval.report import PAPER_TABLE1, build_results, format_table1, paper_row

    recs = {b: [make_record(b, i, "1", ["1"], ["1"], [i % 2 == 0]) for i in range(4)] for b in ("math500", "aime24")}
    res = build_results({b: summarize(r) for b, r in recs.items()})
    row = paper_row("/models/Qwen2.5-32B/", "nft")
    assert row == PAPER_TABLE1[("Qwen2.5-32B", "nft")] == (37.8, 88.4, 31.5, 93.8, 55.0, 48.9, 59.2)
    assert paper_row("Qwen2.5-32B", "drgrpo") is None and paper_row("Qwen2.5-Math-7B", "drgrpo")[-1] == 49.8
    lines = format_table1(res, paper=row, paper_label="paper").splitlines()
    assert lines[1].split() == ["AIME24", "MATH500", "AIME25", "AMC23", "OlympiadBench", "Minerva", "Avg"]
    # p = (1,0,1,0): 50.0, se = sqrt(4 * 1/4 / 3 / 4) = 0.2887 -> "28.9"; avg se = sqrt(2) * 0.2887 / 2
    assert lines[2].split()[:8] == ["ours", "50.0", "±", "28.9", "50.0", "±", "28.9", "-"]
    assert "50.0 ± 20.4(2)" in lines[2]
    assert lines[3].split() == ["paper", "37.8", "88.4", "31.5", "93.8", "55.0", "48.9", "59.2"]


@needs_data
def test_cli_hand_made_metrics(tmp_path, verifier):
    samples = {0: [r"\boxed{204}", r"\boxed{1}", r"\boxed{1}", r"\boxed{2}"],  # 1/4, maj "1" wrong
               1: [r"\boxed{113}", r"\boxed{113}", r"\boxed{4}", "no answer"]}  # 2/4, maj right
    rows = [{"benchmark": "aime24", "idx": i, "response": r} for i, rs in samples.items() for r in rs]
    out, recs = tmp_path / "r.json", tmp_path / "rec.jsonl"
    cli.main(["--responses", _write_jsonl(tmp_path / "x.jsonl", rows), "--data-dir", DATA,
              "--out", str(out), "--records", str(recs), "--no-progress"], verifier=verifier)
    res = json.loads(out.read_text())
    assert set(res) == {"aime24", "average", "meta"}
    s = res["aime24"]
    assert (s["k"], s["n_problems"], s["n_samples"]) == (4, 2, 8)
    assert s["accuracy"] == pytest.approx(3 / 8) and s["pass@1"] == pytest.approx(0.375)
    assert s["pass@k"] == 1.0 and s["maj@k"] == 0.5
    assert res["average"]["accuracy"] == pytest.approx(3 / 8) and res["average"]["complete"] is False
    recs_ = _records(recs)
    assert recs_[0]["answers"] == ["204", "1", "1", "2"] and recs_[0]["correct"] == [True, False, False, False]
    assert recs_[0]["maj_answer"] == "1" and recs_[1]["answers"][3] is None
    # --n 1 keeps the first sample of each problem
    cli.main(["--responses", str(tmp_path / "x.jsonl"), "--data-dir", DATA, "--n", "1", "--out", str(out),
              "--no-progress"], verifier=verifier)
    s = json.loads(out.read_text())["aime24"]
    assert (s["k"], s["accuracy"], s["pass@k"]) == (1, 1.0, 1.0)


# --------------------------------------------------------------------------- errors


def _err(argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return str(e.value)


def test_errors(tmp_path):
    ok = _write_jsonl(tmp_path / "ok.jsonl", [{"benchmark": "aime24", "idx": 0, "response": "x"}])
    msg = _err(["--responses", ok, "--data-dir", DATA, "--benchmarks", "aime24,gsm8k"])
    assert "gsm8k" in msg and all(b in msg for b in SIZES)
    bad = _write_jsonl(tmp_path / "b.jsonl", [{"benchmark": "aime26", "idx": 0, "response": "x"}])
    msg = _err(["--responses", bad, "--data-dir", DATA, "--benchmarks", "aime24"])
    assert "aime26" in msg and "olympiadbench" in msg and "b.jsonl:1" in msg
    if os.path.isfile(os.path.join(DATA, "aime24.jsonl")):
        oor = _write_jsonl(tmp_path / "o.jsonl", [{"benchmark": "aime24", "idx": 0, "response": "x"},
                                                  {"benchmark": "aime24", "idx": 30, "response": "x"}])
        msg = _err(["--responses", oor, "--data-dir", DATA])
        assert "o.jsonl:2" in msg and "out of range" in msg and "0..29" in msg
        neg = _write_jsonl(tmp_path / "n.jsonl", [{"benchmark": "aime24", "idx": -1, "response": "x"}])
        assert "out of range" in _err(["--responses", neg, "--data-dir", DATA])
    (tmp_path / "data").mkdir()
    msg = _err(["--responses", ok, "--data-dir", str(tmp_path / "data")])
    assert "file not found" in msg and "aime24.jsonl" in msg
    assert "no such directory" in _err(["--responses", ok, "--data-dir", str(tmp_path / "nope")])
    assert "exactly one of" in _err(["--data-dir", DATA])
    assert "exactly one of" in _err(["--responses", ok, "--model", str(tmp_path), "--data-dir", DATA])
    assert "not found" in _err(["--responses", str(tmp_path / "missing.jsonl"), "--data-dir", DATA,
                                "--benchmarks", "aime24"])
    (tmp_path / "j.jsonl").write_text("{not json\n")
    assert "invalid JSON" in _err(["--responses", str(tmp_path / "j.jsonl"), "--data-dir", DATA,
                                   "--benchmarks", "aime24"])
    assert "neither an HF model dir" in _err(["--model", str(tmp_path / "data"), "--data-dir", DATA,
                                              "--benchmarks", "aime24"])
    with pytest.raises(ValueError, match="allowed: aime24, aime25"):
        B.parse_benchmarks("aime24,foo")
    assert not set(B.BENCHMARKS) & set(B.RESERVED_KEYS)


# --------------------------------------------------------------------------- generation


@needs_data
def test_generate_hf_tiny(tmp_path, verifier):
    from megatron_nft.testing import make_tiny_qwen2

    model = make_tiny_qwen2(tmp_path / "tiny")
    out, recs, gens = tmp_path / "g.json", tmp_path / "g.jsonl", tmp_path / "gens.jsonl"
    assert cli.main(["--model", str(model), "--data-dir", DATA, "--benchmarks", "math500", "--limit", "2",
                     "--max-tokens", "8",
                     "--engine", "hf", "--n", "2", "--out", str(out), "--records", str(recs),
                     "--save-responses", str(gens), "--no-progress"], verifier=verifier) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"math500", "average", "meta"}
    s = res["math500"]
    assert (s["n_problems"], s["k"], s["n_samples"]) == (2, 2, 4)
    assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["pass@k"] <= 1.0 and 0.0 <= s["maj@k"] <= 1.0
    assert res["meta"]["temperature"] == 0.6 and res["meta"]["top_p"] == 0.7 and res["meta"]["n"] == {"math500": 2}
    rs = _records(recs)
    assert [r["idx"] for r in rs] == [0, 1] and all(len(r["correct"]) == 2 for r in rs)
    assert all(0 <= r["n_truncated"] <= 2 for r in rs)
    lines = _records(gens)
    assert len(lines) == 4 and {(x["benchmark"], x["idx"]) for x in lines} == {("math500", 0), ("math500", 1)}
    # the saved generations re-grade to the same numbers
    cli.main(["--responses", str(gens), "--data-dir", DATA, "--out", str(out), "--no-progress"], verifier=verifier)
    s2 = json.loads(out.read_text())["math500"]
    assert {k: s2[k] for k in ("accuracy", "k", "n_problems", "pass@k")} == \
        {k: s[k] for k in ("accuracy", "k", "n_problems", "pass@k")}


def test_model_may_be_a_run_directory(tmp_path):
    """nft-eval --model accepts a training run directory (-> checkpoints/latest); with no
    complete checkpoint yet the error says so instead of 'not an HF dir'."""
    import tools.eval as E

    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)  # no trainer_state.json: incomplete
    with pytest.raises(SystemExit, match="no complete step_"):
        E.resolve_model(str(run), str(tmp_path / "tmp"))
