"""Benchmark: our MathVerifier vs math-verify, accuracy on an independent set and speed, one run.

1. **Accuracy** on ``benchmarks/verifier_heldout.jsonl``: (gold, response, label) cases taken
   from public graders' tests and bug reports (math-verify's test files and issues, the
   Qwen2.5-Math grader, verl, NeMo-RL, the Hendrycks MATH equivalence tests; every row names
   its source; labels are the mathematically right verdict, not what a grader said). Rows of
   split ``unseen`` were collected after our rules were written. Compared: ours
   (``MathVerifier.verify_batch``), plain math-verify ``verify(parse(gold), parse(response))``
   and math-verify with the gold wrapped in ``\\boxed{}`` (how verl and NeMo-RL call it).
2. **Speed** on ``--n`` synthetic (response, gold) pairs built from the evaluation golds
   (MATH500, OlympiadBench, Minerva, AIME, AMC; correct / reformatted / wrong answers):
   serial plain math-verify against our ``verify_batch`` cold (incl. worker start) and warm.

    python benchmarks/verifier_bench.py --n 500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_nft.rewards import MathVerifier  # noqa: E402
from megatron_nft.rewards.extract import extract_gold  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "eval"
HELDOUT = REPO / "benchmarks" / "verifier_heldout.jsonl"
FILLER = (
    "Let's work through this step by step. First we set up the relevant quantities and note "
    "that 2 + 3 = 5 and 7 * 6 = 42. Substituting back, the expression simplifies, and checking the "
    "boundary case n = 1 gives 10, which is consistent. "
)


def load_golds(data_dir: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def rows(name):
        path = data_dir / name
        if not path.exists():
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    out += [("math500", r["answer"]) for r in rows("math500.jsonl")]
    out += [("olympiad", r["final_answer"][0]) for r in rows("olympiadbench.jsonl")]
    out += [("minerva", extract_gold(r["solution"])) for r in rows("minerva_math.jsonl")]
    for name in ("aime24", "aime25", "amc23"):
        out += [(name, str(r["answer"])) for r in rows(f"{name}.jsonl")]
    return [(src, g) for src, g in out if g and str(g).strip()]


def _strip_dollars(g: str) -> str:
    return re.sub(r"(?<!\\)\$", "", g).strip()


def reformat(g: str, rng: random.Random) -> str | None:
    """An equivalent rewrite of gold answer ``g`` (None if no rewrite applies)."""
    g = _strip_dollars(g)
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", g)
    if m and int(m.group(3)) != 0:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        d = v.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        if d == 1:
            return m.group(1) + str(float(v)).rstrip("0").rstrip(".")
        return f"{m.group(1)}{v.numerator}/{v.denominator}"
    if re.fullmatch(r"-?\d+", g):
        n = int(g)
        choices = [f"{n}.0", f"x = {n}", f"{n} \\text{{ units}}", f"{float(n):.2f}"]
        if abs(n) >= 1000:
            choices.append(f"{n:,}")
        return rng.choice(choices)
    if re.fullmatch(r"-?\d+\.\d+", g):
        return rng.choice([g + "0", f"\\frac{{{Fraction(g).numerator}}}{{{Fraction(g).denominator}}}"])
    if "\\frac" in g:
        return g.replace("\\frac", "\\dfrac")
    if g.startswith("(") and g.endswith(")") and "," in g:
        return "\\left" + g[:-1] + "\\right)"
    if "^\\circ" in g:
        return g.replace("^\\circ", "")
    return None


def wrong(g: str, others: list[str], rng: random.Random) -> str:
    g = _strip_dollars(g)
    nums = list(re.finditer(r"\d+", g))
    if nums and rng.random() < 0.7:
        m = rng.choice(nums)
        return g[: m.start()] + str(int(m.group(0)) + rng.randint(1, 9)) + g[m.end() :]
    while True:
        o = _strip_dollars(rng.choice(others))
        if o != g:
            return o


def make_pairs(golds: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str, bool, str]]:
    rng = random.Random(seed)
    all_golds = [g for _, g in golds]
    pairs = []
    while len(pairs) < n:
        src, g = rng.choice(golds)
        kind = rng.choices(["correct", "reformat", "wrong"], weights=[0.35, 0.3, 0.35])[0]
        if kind == "reformat":
            ans = reformat(g, rng)
            if ans is None:
                kind, ans = "correct", _strip_dollars(g)
        elif kind == "correct":
            ans = _strip_dollars(g)
        else:
            ans = wrong(g, all_golds, rng)
        filler = FILLER * rng.randint(1, 8)
        if rng.random() < 0.15:  # DAPO style
            resp = f"{filler}\n\nAnswer: ${ans}$"
        else:
            resp = f"{filler}\nTherefore, the final answer is $\\boxed{{{ans}}}$."
        pairs.append((resp, g, kind != "wrong", f"{src}/{kind}"))
    return pairs


def math_verify_one(gold: str, response: str, box_gold: bool) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse("\\boxed{" + gold + "}" if box_gold else gold), parse(response)))
    except Exception:
        return False


def run_math_verify(pairs, box_gold: bool):
    out = []
    t0 = time.perf_counter()
    for resp, gold, _, _ in pairs:
        out.append(math_verify_one(gold, resp, box_gold))
    return out, time.perf_counter() - t0


def score(results, pairs):
    tp = sum(r and p[2] for r, p in zip(results, pairs))
    tn = sum((not r) and (not p[2]) for r, p in zip(results, pairs))
    fp = sum(r and not p[2] for r, p in zip(results, pairs))
    fn = sum((not r) and p[2] for r, p in zip(results, pairs))
    return (tp + tn) / len(pairs), fp, fn


def heldout_report(path: Path, timeout: float, workers) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    golds, resps = [r["gold"] for r in rows], [r["response"] for r in rows]
    with MathVerifier(timeout_s=timeout, num_workers=workers) as v:
        results = {"ours (MathVerifier)": v.verify_batch(resps, golds)}
    results["math-verify, plain"] = [math_verify_one(g, r, False) for g, r in zip(golds, resps)]
    results["math-verify, gold in \\boxed{}"] = [math_verify_one(g, r, True) for g, r in zip(golds, resps)]
    splits = ["all"] + sorted({r["split"] for r in rows})
    print(f"held-out set {path.name}: {len(rows)} cases ({sum(r['label'] for r in rows)} should match), "
          f"{len({r['source'].split()[0] for r in rows})} sources")
    print(f"{'method':34}" + "".join(f"{s + ' correct':>18} {'FP':>4}" for s in splits))
    for name, res in results.items():
        line = f"{name:34}"
        for split in splits:
            idx = [i for i, r in enumerate(rows) if split == "all" or r["split"] == split]
            correct = sum(res[i] == rows[i]["label"] for i in idx)
            fp = sum(res[i] and not rows[i]["label"] for i in idx)
            line += f"{f'{correct}/{len(idx)}':>18} {fp:4d}"
        print(line)
    ours = results["ours (MathVerifier)"]
    for i in [i for i, r in enumerate(rows) if ours[i] != r["label"]][:12]:
        print(f"  ours wrong on #{rows[i]['id']} ({rows[i]['source']}): gold={rows[i]['gold'][:50]!r} "
              f"response={rows[i]['response'][-60:]!r} label={rows[i]['label']}")


def speed_report(args) -> None:
    golds = load_golds(args.data_dir)
    if not golds:
        raise SystemExit(f"no gold answers found under {args.data_dir} (pass --data-dir)")
    pairs = make_pairs(golds, args.n, args.seed)
    responses, gold_list = [p[0] for p in pairs], [p[1] for p in pairs]
    print(f"\nspeed: {len(pairs)} pairs from {len(golds)} golds; {sum(p[2] for p in pairs)} should match; "
          f"cpus={os.cpu_count()}")
    rows = [("math-verify serial: verify(parse(gold), parse(resp))", *run_math_verify(pairs, box_gold=False))]
    t0 = time.perf_counter()
    with MathVerifier(timeout_s=args.timeout, num_workers=args.workers) as v:
        res = v.verify_batch(responses, gold_list)
        rows.append((f"ours, cold (incl. start of {v.num_workers} workers)", res, time.perf_counter() - t0))
    with MathVerifier(timeout_s=args.timeout, num_workers=args.workers, cache_size=0) as v:
        v.warmup()
        t0 = time.perf_counter()
        res = v.verify_batch(responses, gold_list)
        rows.append(("ours, warm pool", res, time.perf_counter() - t0))
    print(f"{'method':58} {'answers/s':>10} {'time s':>8} {'accuracy':>9} {'FP':>4} {'FN':>4}")
    for name, res, dt in rows:
        acc, fp, fn = score(res, pairs)
        print(f"{name:58} {len(pairs) / dt:10.1f} {dt:8.2f} {acc:9.3f} {fp:4d} {fn:4d}")
    base = rows[0][2]
    print(f"speed ratio vs serial plain math-verify: cold {base / rows[1][2]:.2f}x, warm {base / rows[2][2]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--heldout", type=Path, default=HELDOUT)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    heldout_report(args.heldout, args.timeout, args.workers)
    speed_report(args)


if __name__ == "__main__":
    main()
