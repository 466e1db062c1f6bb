"""Time limits and preemption through the real trainer (torchrun, gloo, 2 ranks, offline NFT):
a real SIGTERM in the middle of a step leaves a checkpoint no older than the previous step and
the re-run ends bit-identical to an uninterrupted run; a job end time (SLURM_JOB_END_TIME, as
Slurm exports it) makes the trainer checkpoint and exit before it.

Independent reference: the uninterrupted run's exported hf/ weights and metrics.
"""
import os
import re
import signal
import subprocess
import time

import pytest
import torch

from _dist_helpers import REPO, TORCHRUN, env, free_port
from test_train_offline import _metrics, _weights, _write_offline
from megatron_nft.testing import make_tiny_qwen2

pytestmark = pytest.mark.slow
_STEP_LINE = re.compile(r"\[nft\] step +(\d+)/\d+ ")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preempt")
    hf = make_tiny_qwen2(tmp / "hf", vocab=1100, hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32)
    data = _write_offline(tmp, n_groups=24)
    recipe = tmp / "r.yaml"
    recipe.write_text(f"seed: 3\nmodel: {{hf_path: {hf}}}\nparallel: {{tp: 1, pp: 1}}\n"
                      f"algorithm: {{name: nft, epsilon: 1.0}}\n"
                      f"train: {{lr: 1.0e-3, max_steps: 5, prompts_per_step: 12, updates_per_rollout: 6}}\n"
                      f"rollout: {{source: {data}}}\ncheckpoint: {{interval: 0}}\noutput: {{tensorboard: false}}\n")
    return tmp, recipe


def _cmd(recipe, out, *sets):
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "megatron_nft.train", "--recipe", str(recipe), "--set", f"output.dir={out}"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _env(**extra):
    e = env()
    for k in ("SLURM_JOB_ID", "SLURM_JOB_END_TIME", "NFT_STATUS_FILE"):
        e.pop(k, None)
    e.update(extra)
    return e


def _run(cmd, **extra):
    p = subprocess.run(cmd, cwd=REPO, env=_env(**extra), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]
    return p.stdout


def _workers(pid):
    """The trainer processes torchrun started (its direct children)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _checkpoints(out):
    return sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*"))


def test_sigterm_mid_step_then_resume_is_bit_identical(setup):
    tmp, recipe = setup
    full, part = tmp / "full", tmp / "part"
    _run(_cmd(recipe, full))
    status = tmp / "status"
    proc = subprocess.Popen(_cmd(recipe, part), cwd=REPO, env=_env(NFT_STATUS_FILE=str(status)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, done = [], 0
    for line in proc.stdout:  # step 2 is logged: step 3 has begun (old log-probs, then updates)
        lines.append(line)
        m = _STEP_LINE.search(line)
        if m and int(m.group(1)) == 2:
            done = 2
            for pid in _workers(proc.pid):  # Slurm signals every process of the step
                os.kill(pid, signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=600) == 0, "".join(lines)[-6000:]
    log = "".join(lines)
    print("".join(x for x in lines if "SIGTERM" in x or "abandon" in x))
    assert done == 2, log[-4000:]
    assert "[nft] SIGTERM" in log and "exiting so the job can be requeued" in log, log[-4000:]
    saved = _checkpoints(part)
    assert saved and done <= saved[-1] < 5, (saved, log[-4000:])  # no older than the last completed step
    assert "abandoning step 3 (stop seen during old log-probs)" in log or saved == [3], log[-4000:]
    assert status.read_text().strip() == "requeue"
    assert not (part / "hf").exists()

    _run(_cmd(recipe, part), NFT_STATUS_FILE=str(status))
    assert status.read_text().strip() == "done"
    a, b = _weights(full / "hf"), _weights(part / "hf")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref = {r["step"]: r["train/grad_norm"] for r in _metrics(full)}
    got = {r["step"]: r["train/grad_norm"] for r in _metrics(part) if "train/grad_norm" in r}
    assert got == ref


def test_job_end_time_checkpoints_and_exits_before_it(setup):
    tmp, recipe = setup
    out, status = tmp / "deadline", tmp / "status_deadline"
    end = time.time() + 120  # startup on a busy CPU is a good part of it
    log = _run(_cmd(recipe, out, "train.max_steps=100000", "train.stop_margin_s=15"),
               SLURM_JOB_END_TIME=str(int(end)), NFT_STATUS_FILE=str(status))
    assert "[nft] job end time" in log, log[-4000:]
    m = re.search(r"\[nft\] job end time: checkpoint at step (\d+); exiting so the job can be requeued "
                  r"\((-?\d+) s before the job's end time\)", log)
    assert m, log[-4000:]
    assert int(m.group(2)) >= 0
    saved = _checkpoints(out)
    assert saved == [int(m.group(1))] or (int(m.group(1)) == 0 and not saved)
    assert status.read_text().strip() == "requeue"
