"""No orphans: after SIGTERM / SIGKILL of nft-train or of torchrun, no rank and no
dist-checkpointing writer Manager survives (real processes, real signals, the process tree
read from /proc by psutil)."""
import signal
import subprocess
import time

import psutil
import pytest

from _dist_helpers import PYTHON, REPO, TORCHRUN, env, free_port
from test_faults import make_hf, recipe, write_offline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_hf(tmp_path_factory)


def _alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _cmd(p):
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return f"pid {p.pid} (gone)"


def _wait_for(cond, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize("launcher", ["nft-train", "torchrun"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_process_survives(tmp_path, tiny_hf, launcher, sig):
    out = tmp_path / "run"
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), out=out, max_steps=10000)
    cmd = [PYTHON] if launcher == "nft-train" else [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port())]
    top = subprocess.Popen(cmd + ["-m", "megatron_nft.train", "--recipe", str(r)], cwd=REPO, env=env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = []
    try:
        assert _wait_for(lambda: (out / "checkpoints" / "step_00000002" / "trainer_state.json").exists(), 400)
        tree = _alive(psutil.Process(top.pid).children(recursive=True))  # (finished writers are zombies)
        names = [_cmd(p) for p in tree]
        assert len(tree) >= (1 if launcher == "nft-train" else 2), names  # the writer Manager / the ranks
        tree += [p for p in _alive(psutil.Process(top.pid).children(recursive=True)) if p not in tree]
        top.send_signal(sig)
        top.wait(timeout=120)
        time.sleep(2)  # workers forked after the snapshot carry the recipe path in their command line
        tree += [p for p in psutil.process_iter() if str(r) in _cmd(p) and p not in tree]
        assert _wait_for(lambda: not _alive(tree), 60), [_cmd(p) for p in _alive(tree)]
    finally:
        top.kill()
        for p in _alive(tree):  # a failed test leaves nothing behind either
            p.kill()


VERIFIER_PARENT = r"""
import sys, time
from megatron_nft.rewards import MathVerifier
v = MathVerifier(timeout_s=30.0, num_workers=2)
# a pair the fast path cannot decide, so the workers start and take it
print(v.verify_batch([r"\boxed{(x+1)^2}"] * 4, ["x^2+2x+1"] * 4), flush=True)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_verifier_workers_die_with_their_parent(sig):
    parent = subprocess.Popen([PYTHON, "-c", VERIFIER_PARENT], cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True)
    tree = []
    try:
        for line in parent.stdout:
            if line.strip() == "ready":
                break
        tree = _alive(psutil.Process(parent.pid).children(recursive=True))
        assert any("spawn_main" in _cmd(p) for p in tree), [_cmd(p) for p in tree]
        parent.send_signal(sig)
        parent.wait(timeout=60)
        assert _wait_for(lambda: not _alive(tree), 30), [_cmd(p) for p in _alive(tree)]
    finally:
        parent.kill()
        for p in _alive(tree):
            p.kill()
