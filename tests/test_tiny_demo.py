"""The README's main job end to end: the tiny CPU recipe learns (held-out eval accuracy rises by
>= 15 points), writes TensorBoard events, the PNG and an HF export; at TP=2 under torchrun it is
killed mid-way and the same command resumes from the last checkpoint and finishes.

These are the slowest tests (minutes each); they run in CI.
"""
import contextlib
import json
import os
import subprocess
import time

import psutil
import pytest

from _dist_helpers import PYTHON, REPO, TORCHRUN, env, free_port

pytestmark = pytest.mark.slow
RECIPE = str(REPO / "recipes" / "tiny_cpu.yaml")


def _eval_history(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}, rows


def _check_outputs(out, min_gain):
    hist, rows = _eval_history(out)
    first, last = min(hist), max(hist)
    assert first == 0 and last == rows[-1]["step"], hist
    assert hist[last] >= hist[first] + min_gain, hist
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "progress.png").stat().st_size > 1000
    assert (out / "hf" / "model.safetensors").exists() and (out / "hf" / "config.json").exists()
    for key in ("rollout/reward", "rollout/kept_group_frac", "rollout/refill_rounds", "rollout/resp_len_mean",
                "rollout/clipped_frac", "rollout/entropy", "train/grad_norm", "train/lr", "train/neg_clip_frac",
                "time/rollout", "time/train", "time/sync", "perf/tokens_per_s"):
        assert key in rows[-1], key
    return hist


def test_tiny_default_learns(tmp_path):
    out = tmp_path / "tiny"
    cmd = [PYTHON, "-m", "megatron_nft.train", "--recipe", RECIPE, "--set", f"output.dir={out}"]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    hist = _check_outputs(out, 0.15)
    assert "NFT run summary" in p.stdout and "points" in p.stdout
    print("eval history", hist)


def test_tiny_tp2_killed_then_resumed(tmp_path):
    out = tmp_path / "tiny_tp2"
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "megatron_nft.train",
           "--recipe", RECIPE, "--set", "parallel.tp=2", "--set", f"output.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_ckpt = out / "checkpoints" / "step_00000010"
    deadline = time.time() + 1200
    while not first_ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(2)
    assert first_ckpt.exists(), "no checkpoint appeared"
    time.sleep(5)  # let it get into the next steps, then kill the whole job without warning:
    # torchrun's workers live in sessions of their own, so kill the process tree, not a group
    tree = psutil.Process(proc.pid)
    victims = tree.children(recursive=True) + [tree]
    for v in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            v.kill()
    psutil.wait_procs(victims, timeout=60)
    proc.wait()
    cmd[4] = str(free_port())
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resumed from" in p.stdout
    _check_outputs(out, 0.10)
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)), "metrics.jsonl has duplicated or out-of-order steps after resume"
