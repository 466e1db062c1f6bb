"""slurm/launch.sh's requeue decision, run for real with stand-ins for `srun` (it plays the
trainer: writes $NFT_STATUS_FILE and exits as told) and `scontrol` (records `requeue` calls):
a trainer that stopped early ("requeue") is requeued, a finished one ("done") is not, a failure
is requeued up to NFT_MAX_FAILURES times per job, SIGUSR1 still requeues; and the trainer
reads the job's end time from Slurm."""
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


def test_trainer_reads_the_job_end_time(tmp_path, monkeypatch):
    """runtime.job_end_time: SLURM_JOB_END_TIME, else a real `squeue -o %e` call (a stand-in
    printing the end time), and train.time_limit_minutes; the earliest wins."""
    import datetime

    from megatron_nft.runtime import job_end_time

    sq = tmp_path / "squeue"
    sq.write_text('#!/usr/bin/env bash\n[[ "$*" == "-h -j 91 -o %e" ]] && echo "$FAKE_END"\n')
    sq.chmod(sq.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "91")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("FAKE_END", "2030-01-02T03:04:05")
    end = datetime.datetime(2030, 1, 2, 3, 4, 5).timestamp()
    assert job_end_time(None, 0.0) == end
    assert job_end_time(10.0, 1000.0) == 1600.0  # 10 minutes after the start come first
    monkeypatch.setenv("RANK", "3")  # only rank 0 asks the scheduler
    assert job_end_time(None, 0.0) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("FAKE_END", "N/A")
    said = []
    assert job_end_time(None, 0.0, log=said.append) is None and "train.time_limit_minutes" in said[0]
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1900000000")
    assert job_end_time(None, 0.0) == 1900000000.0
