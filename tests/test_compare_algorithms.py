"""``benchmarks/compare_algorithms.py --reduced`` (the CI size) trains all five algorithms from one
warm start and writes the table, the JSON and the curves; and the trainer validates on a
benchmark directory (``data.eval: DIR``) with per-benchmark curves.

Independent references: each run's own ``metrics.jsonl`` (final accuracy recomputed here), the
bytes of the copied warm start, and the benchmark files' row counts.
"""
import hashlib
import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import compare_algorithms as C  # noqa: E402

pytestmark = pytest.mark.slow
EVAL_DIR = os.path.join(ROOT, "..", "shared", "data", "eval")


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert C.main(["--reduced", "--seeds", "1", "--out", str(out)]) == 0
    return out


def _digest(d):
    h = hashlib.sha256()
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            h.update(open(os.path.join(d, name), "rb").read())
    return h.hexdigest()


def test_reduced_comparison_of_the_five_algorithms(reduced):
    res = json.loads((reduced / "results.json").read_text())
    assert sorted(res["summary"]) == sorted(C.ALGOS) and res["n_eval"] > 50
    base = _digest(reduced / "base" / "base_model")
    for algo in C.ALGOS:
        finals = []
        for seed in (1,):
            run = reduced / algo / f"seed{seed}"
            assert _digest(run / "base_model") == base  # every run starts from the same weights
            rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
            recipe = (sorted(run.glob("recipes/start_*.yaml")) or [run / "recipe.yaml"])[0].read_text()
            assert f"name: {algo}" in recipe and f"seed: {seed}" in recipe
            evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
            assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 3]
            finals.append(evals[-1])
        assert res["summary"][algo]["final_acc"] == pytest.approx(finals)
    table = (reduced / "results.md").read_text()
    assert all(f"| {a} | 1 |" in table for a in C.ALGOS) and "separated" in table
    assert (reduced / "curves.png").stat().st_size > 10_000


def _run(finals, rewards):
    return {"series": {"eval/accuracy": [(0, 0.1), (9, finals)], "rollout/reward": list(enumerate(rewards)),
                       "rollout/entropy": [(1, 0.9), (9, 0.5)]}, "seconds": 10.0}


def test_summary_statistics_and_separation():
    res = {"runs": {"a": [_run(0.50, [0.1] * 8), _run(0.52, [0.3] * 8), _run(0.54, [0.2] * 8)],
                    "b": [_run(0.10, [0.0] * 3 + [1.0] * 5), _run(0.12, [0.5] * 8), _run(0.14, [0.5] * 8)]},
           "base": _run(0.1, []), "n_eval": 9}
    s = C.summarize(res)
    assert s["a"]["final_mean"] == pytest.approx(0.52) and s["a"]["final_std"] == pytest.approx(0.02)
    assert s["b"]["reward_first"] == pytest.approx((0.4 + 0.5 + 0.5) / 3)  # first 5 steps of each run
    assert s["b"]["reward_last"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert s["a"]["entropy_first"] == pytest.approx(0.9) and s["a"]["entropy_last"] == pytest.approx(0.5)
    assert C.separated_pairs(s) == ["a > b (0.400 > 2 x 0.016)"]
    assert "| a | 3 | 0.520 ± 0.020 |" in C.format_table(res, s)


@pytest.mark.skipif(not os.path.isdir(EVAL_DIR), reason=f"{EVAL_DIR} not present")
def test_trainer_validates_per_benchmark_on_a_benchmark_directory(reduced, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reduced / "base" / "base_model", out / "base_model")
    C.train(str(out), C.REDUCED + [f"data.eval={EVAL_DIR}", "eval.benchmarks=aime24,math500", "eval.limit=2",
                                   "train.max_steps=1"], log=lambda m: None)
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1]
    for r in evals:
        per = [r["eval/aime24/accuracy"], r["eval/math500/accuracy"]]
        assert all(0.0 <= x <= 1.0 for x in per) and r["eval/accuracy"] == pytest.approx(sum(per) / 2)
        assert not any(k.startswith("eval/") and k.split("/")[1] not in ("aime24", "math500", "accuracy")
                       for k in r)
