"""slurm/launch.sh's requeue decision, run for real with stand-ins for `srun` (it plays the
trainer: writes $NFT_STATUS_FILE and exits as told) and `scontrol` (records `requeue` calls):
a trainer that stopped early ("requeue") is requeued, a finished one ("done") is not, a failure
is requeued up to NFT_MAX_FAILURES times per job, SIGUSR1 still requeues."""
import os
import stat
import subprocess

from test_slurm_scripts import ROOT, _env

_SRUN = """#!/usr/bin/env bash
case "$FAKE_TRAINER" in
  requeue|done) echo "$FAKE_TRAINER" > "$NFT_STATUS_FILE" ;;
  fail) exit 1 ;;
  usr1) trap 'exit 0' USR1; kill -USR1 "$PPID"; sleep 5 & wait ;;
esac
"""
_SCONTROL = '#!/usr/bin/env bash\necho "$*" >> "$FAKE_SCONTROL_LOG"\n'


def _launch(tmp_path, trainer, **kw):
    env = _env(tmp_path, SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="1", MASTER_ADDR="h0", NFT_PREFLIGHT="0",
               LOG_DIR=str(tmp_path / "logs"), FAKE_TRAINER=trainer, FAKE_SCONTROL_LOG=str(tmp_path / "sc.log"), **kw)
    del env["NFT_LAUNCH_DRY"]
    for name, text in (("srun", _SRUN), ("scontrol", _SCONTROL)):
        f = tmp_path / "bin" / name
        f.write_text(text)
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    r = subprocess.run(["bash", os.path.join(ROOT, "slurm/launch.sh"), "--recipe", "r.yaml"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    log = tmp_path / "sc.log"
    return r, (log.read_text().splitlines() if log.exists() else [])


def test_stopped_early_is_requeued_finished_is_not(tmp_path):
    r, calls = _launch(tmp_path, "requeue")
    assert r.returncode == 0 and calls == ["requeue 77"], r.stdout + r.stderr
    (tmp_path / "sc.log").unlink()
    r, calls = _launch(tmp_path, "done")
    assert r.returncode == 0 and calls == [], r.stdout + r.stderr


def test_failures_requeue_up_to_the_cap(tmp_path):
    codes, requeues = [], 0
    for _ in range(3):
        r, calls = _launch(tmp_path, "fail", NFT_MAX_FAILURES="2")
        codes.append(r.returncode)
        requeues = len(calls)
    assert codes == [1, 1, 1]
    assert requeues == 2  # failures 1 and 2 requeue, the third does not
    assert "3 failures: not requeueing" in r.stderr


def test_sigusr1_requeues(tmp_path):
    r, calls = _launch(tmp_path, "usr1")
    assert calls == ["requeue 77"], r.stdout + r.stderr
