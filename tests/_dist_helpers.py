"""Launch helpers for multi-process (gloo) tests: torchrun / plain python subprocesses."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DIST_SCRIPTS = REPO / "tests" / "dist_scripts"
CONVERT = REPO / "tools" / "convert_checkpoint.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONWARNINGS"] = "ignore"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        e.pop(k, None)
    return e


def _run(cmd, timeout):
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    p.output = f"$ {' '.join(map(str, cmd))}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-6000:]}"
    return p


def run_torchrun(nproc: int, script, *args, timeout: int = 600):
    cmd = [TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
           str(script), *map(str, args)]
    return _run(cmd, timeout)


def run_python(script, *args, timeout: int = 600):
    return _run([PYTHON, str(script), *map(str, args)], timeout)
