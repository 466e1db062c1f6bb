"""Fault injection on the offline tiny model (real torchrun, real megatron-core, real files):
non-finite updates, metrics rows after restarts, input that trains nothing.

References: the files the run leaves (checkpoints, ``metrics.jsonl``, ``hf/``) and the exit
status / message a user sees; no stubs.
"""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from _dist_helpers import PYTHON, REPO, TORCHRUN, _run, env, free_port
from megatron_nft.testing import make_tiny_qwen2

pytestmark = pytest.mark.slow


def write_offline(path, rewards=((1, 0, 0, 1), (0, 1, 1, 0), (1, 1, 0, 1)), seed=0):
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for g, rs in enumerate(rewards):
            prompt = [rng.randrange(5, 1000) for _ in range(6)]
            for r in rs:
                resp = [rng.randrange(5, 1000) for _ in range(5)]
                f.write(json.dumps({"group": f"q{g}", "prompt_ids": prompt, "response_ids": resp, "reward": r}) + "\n")
    return path


def make_hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny"
    make_tiny_qwen2(d, vocab=1100, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128)
    return d


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_hf(tmp_path_factory)


def recipe(tmp, hf, data, out=None, **train):
    t = {"lr": 1.0e-3, "max_steps": 2, "updates_per_rollout": 1, "warmup_steps": 0, **train}
    text = (f"seed: 3\nmodel: {{hf_path: {hf}}}\nparallel: {{tp: 1, pp: 1}}\n"
            f"algorithm: {{name: nft, epsilon: 1.0}}\ntrain: {json.dumps(t)}\n"
            f"rollout: {{source: {data}}}\ncheckpoint: {{interval: 1, keep: 2}}\n"
            f"output: {{dir: {out or tmp / 'run'}, tensorboard: false}}\n")
    p = tmp / "r.yaml"
    p.write_text(text)
    return p


def train(recipe_path, *sets, nproc=1, timeout=600):
    """nft-train as one plain process (``nproc`` 1) or under torchrun."""
    launch = [PYTHON] if nproc == 1 else [TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(free_port())]
    cmd = launch + ["-m", "megatron_nft.train", "--recipe", str(recipe_path)]
    for s in sets:
        cmd += ["--set", s]
    return _run(cmd, timeout)


def metrics(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def ckpt_steps(out):
    root = out / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.iterdir() if p.name.startswith("step_")) if root.exists() else []


def test_exploding_lr_skips_updates_and_stops_without_bad_checkpoint(tmp_path, tiny_hf):
    """lr=1e20: the first update makes the weights huge; the next losses are non-finite, those
    updates are skipped and counted, and after train.max_nonfinite_steps the run stops non-zero
    naming the step and train.lr; no checkpoint after the first bad step, no hf/."""
    out = tmp_path / "run"
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), lr=1e20, max_steps=8, max_nonfinite_steps=2)
    p = train(r, "checkpoint.export_hf_interval=1")
    assert p.returncode == 2, p.output
    assert "consecutive updates had a non-finite loss" in p.stderr and "train.lr" in p.stderr, p.output
    assert "Traceback" not in p.stderr, p.output
    rows = metrics(out)
    skipped = [row["step"] for row in rows if row.get("train/skipped_nonfinite")]
    assert len(skipped) == 2 and skipped == list(range(skipped[0], skipped[0] + 2)), rows
    assert f"step {skipped[-1]}:" in p.stderr
    assert all(s < skipped[0] for s in ckpt_steps(out)), (ckpt_steps(out), skipped)
    w = load_file(str(out / "hf" / "model.safetensors"))  # the periodic export of the last good step only
    assert all(bool(torch.isfinite(t).all()) for t in w.values())
    assert f"step {skipped[0]}: suspect weights" in p.stdout, p.output


def test_fresh_restart_leaves_one_row_per_step(tmp_path, tiny_hf):
    """A run killed before its first checkpoint restarts from scratch: metrics.jsonl gets
    exactly one row per step (no second step-0 row)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.5}) + "\n"
                                       + json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), max_steps=2)
    p = train(r)
    assert p.returncode == 0, p.output
    steps = [row["step"] for row in metrics(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 2, steps


@pytest.mark.parametrize("key,value,fix", [("rollout.n", "1", ">= 2"), ("train.prompts_per_step", "0", ">= 1")])
def test_refuses_settings_that_train_nothing(tmp_path, key, value, fix):
    p = subprocess.run([PYTHON, "-m", "megatron_nft.train", "--recipe", str(REPO / "recipes" / "tiny_cpu.yaml"),
                        "--set", f"{key}={value}", "--set", f"output.dir={tmp_path / 'run'}"],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and key in p.stderr and fix in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real size-limited filesystem (tmpfs; needs root, else the test is skipped)."""
    mounts = []

    def mount(mb: float):
        d = tmp_path / f"disk{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(mb * 1024)}k", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_disk_stops_with_no_space_left_keeping_the_newest_checkpoint(tmp_path, tiny_hf, small_disk):
    """8 MiB disk, ~3.7 MiB per checkpoint: step 1 is written, step 2 does not fit; the run stops
    before writing it, naming the path and the space needed; step 1 and metrics.jsonl survive."""
    out = small_disk(8) / "run"
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), out=out, max_steps=3)
    p = train(r)
    assert p.returncode == 2, p.output
    assert "no space left" in p.stderr and str(out / "checkpoints") in p.stderr and "MiB" in p.stderr, p.output
    assert ckpt_steps(out) == [1] and [row["step"] for row in metrics(out)] == [1, 2]


def test_rotation_makes_room_before_writing(tmp_path, tiny_hf, small_disk):
    """10.5 MiB disk, keep=2: a third checkpoint only fits once the oldest is gone; it is removed
    first (never the newest), so the run finishes instead of crashing mid-write."""
    out = small_disk(10.5) / "run"
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), out=out, max_steps=3)
    p = train(r, "checkpoint.export_hf=false")
    assert p.returncode == 0, p.output
    assert ckpt_steps(out) == [2, 3]
