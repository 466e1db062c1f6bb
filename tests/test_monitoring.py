"""Monitoring of a real (short) online run on the tiny task: samples.jsonl, mem/max_allocated,
rollout/gen_tokens_per_s, elapsed/ETA in the progress line, progress.png at an eval.

Independent references: the arithmetic problem in each decoded prompt (its sum is the gold
answer, and "correct" must match the extracted answer against it), the step's own counters
(tokens generated vs. the gen rate and the rollout phase time) and the process's RSS > 0.
"""
import json
import os
import re
import subprocess

import pytest

from _dist_helpers import PYTHON, REPO, env
from megatron_nft.data.synthetic import correct_answer, parse_problem

pytestmark = pytest.mark.slow
RECIPE = os.path.join(REPO, "recipes", "tiny_cpu.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("monitor") / "run"
    sets = ["train.max_steps=2", "eval.interval=1", "data.eval_size=16", "train.prompts_per_step=16",
            "checkpoint.interval=0", "output.tensorboard=false", f"output.dir={out}"]
    cmd = [PYTHON, "-m", "megatron_nft.train", "--recipe", RECIPE] + [a for s in sets for a in ("--set", s)]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return out, p.stdout


def test_samples_jsonl_decodes_graded_answers(run):
    out, _ = run
    rows = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert rows and {r["step"] for r in rows} <= {1, 2}
    for r in rows:
        a, op, b = parse_problem(r["prompt"])
        assert r["gold"] == str(correct_answer(a, b, op))
        assert isinstance(r["response"], str) and r["response"]
        if not r["truncated"]:
            assert r["correct"] == (r["extracted"] == r["gold"]), r
        assert r["reward"] == (1.0 if r["correct"] else 0.0)  # plain NFT reward
        assert 0.0 < r["r_hat"] < 1.0  # kept (informative) groups only
    assert any(r["correct"] for r in rows) and any(not r["correct"] for r in rows)


def test_new_metrics_and_progress_line(run):
    out, stdout = run
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [r for r in rows if "rollout/gen_tokens_per_s" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["mem/max_allocated"] > 0
        tokens = r["rollout/resp_len_mean"] * r["rollout/generated"]
        # generated in the rounds, which are part of the rollout phase
        assert tokens / r["rollout/gen_tokens_per_s"] <= r["time/rollout"] * 1.001
    lines = re.findall(r"^\[nft\] step +\d/2 .*$", stdout, re.M)
    assert len(lines) == 2 and all(re.search(r"elapsed \d+:\d\d:\d\d", ln) for ln in lines)
    assert re.search(r"eta \d+:\d\d:\d\d", lines[0])
    assert (out / "progress.png").stat().st_size > 0
