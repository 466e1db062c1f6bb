"""One run per output.dir, with real processes holding and losing the lock (real pids, real
signals, a real second nft-train)."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from _dist_helpers import PYTHON, REPO, env
from megatron_nft.runlock import LOCK_NAME, RunDirBusy, RunLock
from megatron_nft.stability import UserError

HOLD = "import sys, time; from megatron_nft.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def _holder(out):
    p = subprocess.Popen([PYTHON, "-c", HOLD, str(out)], cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_process_refused_naming_holder_then_takes_over_after_kill(tmp_path):
    out = tmp_path / "run"
    a = _holder(out)
    try:
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == a.pid and holder["host"] == socket.gethostname()
        with pytest.raises(RunDirBusy, match=rf"pid {a.pid} on {socket.gethostname()}.*output.dir"):
            RunLock(str(out)).acquire()
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    lock = RunLock(str(out)).acquire()  # the holder is dead: stale lock taken over
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_NAME).exists()


def test_requeued_slurm_job_gets_its_directory_back(tmp_path, monkeypatch):
    """A lock from another host: refused, unless it carries our SLURM_JOB_ID (a requeue)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "slurm_job_id": "4242",
                                             "started": "x"}))
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    with pytest.raises(RunDirBusy, match="node-elsewhere, Slurm job 4242"):
        RunLock(str(out)).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    RunLock(str(out)).acquire().release()


@pytest.mark.slow
def test_nft_train_exits_at_once_on_a_busy_dir(tmp_path):
    """A real nft-train on a directory held by another live process: exit 2 with one line naming
    the holder, nothing written into the directory."""
    out = tmp_path / "run"
    a = _holder(out)
    try:
        t0 = time.time()
        p = subprocess.run([PYTHON, "-m", "megatron_nft.train", "--recipe", str(REPO / "recipes" / "tiny_cpu.yaml"),
                            "--set", f"output.dir={out}"], cwd=REPO, env=env(), capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 2, p.stderr
        assert f"pid {a.pid}" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert time.time() - t0 < 120
        assert sorted(os.listdir(out)) == [LOCK_NAME]
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()


def test_read_only_output_dir_named(tmp_path):
    """A real read-only filesystem (a read-only tmpfs; needs root): one line naming the dir and the fix."""
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.strip()}")
    try:
        with pytest.raises(UserError, match=rf"output.dir {ro}/run is not writable \(Read-only file system"):
            RunLock(str(ro / "run")).acquire()
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
