"""benchmarks/gpu_check.sh must stay ready for its one unattended run on a GPU box: its CPU
mode runs every stage (environment, GPU unit tests, step / log-prob benchmark with the
log-prob equivalence check, weight sync) and must pass end to end."""
import os
import subprocess
import sys

import pytest

from _dist_helpers import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_cpu_mode_runs_every_stage(tmp_path):
    # the 460 s budget is the GPU box's; a loaded 2-core CI machine gets more room per stage
    env = dict(os.environ, NFT_GPU_CHECK_ALLOW_CPU="1", PYTHON=sys.executable, OUT=str(tmp_path),
               NFT_GPU_SITE=str(tmp_path / "site"), NFT_GPU_CHECK_BUDGET_S="1500")
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1700)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    summary = out[out.rindex("======== summary"):]
    for stage in ("environment: OK", "unit tests: PASS", "gpu_step_bench: OK", "weight_sync: OK"):
        assert stage in summary, summary
    assert "FAIL" not in summary
    # the equivalence check compares the policy's log-probs with HF's on the exported weights
    assert "Log-prob equivalence" in out and "-> PASS" in out
    for row in ("| ours: megatron-core sdpa", "| HF sdpa", "| materialized", "| chunked-1024",
                "| export+bucket"):
        assert row in out, row
    assert "======== summary" in (tmp_path / "gpu_check.log").read_text()  # the log reaches $OUT
