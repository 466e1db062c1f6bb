"""What a long SPMD run needs around its loop: the stop signal, phase timers, rank-0 logging,
the one-line progress report and the final summary (kept out of ``trainer.py`` so the loop
reads on one screen)."""
from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Optional

import torch
import torch.distributed as dist


class StepAbandoned(Exception):
    """A stop was asked for inside a step: the step's remaining work is dropped and the last
    completed step is checkpointed (its data position and RNG were snapshotted at its end)."""


#: ``what`` a polled stop leads to (all-reduced with MAX: the most urgent rank wins).
GO, CHECKPOINT, EXIT = 0, 1, 2


class StopSignal:
    """When to stop a long SPMD run, polled at the same points on every rank (all-reduced):

    * SIGUSR1 (Slurm's ``--signal=B:USR1@N`` before the time limit): checkpoint and exit;
    * SIGTERM (preemption, ``scancel``): checkpoint when the measured save time fits in the
      grace time (``train.sigterm_grace_s``, Slurm's KillWait), else exit at once, cleanly;
    * the job's end time (:func:`job_end_time`): stop when the work before the next poll plus a
      checkpoint plus ``train.stop_margin_s`` would pass it.

    ``step_s`` / ``save_s`` are the longest measured step and checkpoint (the trainer updates
    them), so the decision follows this run's own speed. Until a checkpoint has been timed, one
    is assumed to take ``margin_s`` before the end time, and to fit in SIGTERM's grace (a
    checkpoint is written atomically, so a save cut short by SIGKILL costs nothing)."""

    def __init__(self, deadline: Optional[float] = None, margin_s: float = 120.0, sigterm_grace_s: float = 30.0):
        self.reason: Optional[str] = None
        self.sigterm_at: Optional[float] = None
        self.deadline, self.margin_s, self.grace_s = deadline, margin_s, sigterm_grace_s
        self.step_s, self.save_s = 0.0, None
        for name in ("SIGUSR1", "SIGTERM"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._handler)

    def _handler(self, signum, frame) -> None:
        if signum == getattr(signal, "SIGTERM", None):
            self.sigterm_at = self.sigterm_at or time.time()
            self.reason = "SIGTERM"
        elif self.reason is None:
            self.reason = "SIGUSR1"

    def _local(self, ahead_s: float) -> int:
        now = time.time()
        if self.sigterm_at is not None:
            return CHECKPOINT if now + (self.save_s or 0.0) < self.sigterm_at + self.grace_s else EXIT
        if self.reason is not None:
            return CHECKPOINT
        save_s = self.margin_s if self.save_s is None else self.save_s
        if self.deadline is not None and now + ahead_s + save_s + self.margin_s > self.deadline:
            self.reason = "job end time"
            return CHECKPOINT
        return GO

    def poll(self, ahead_s: float = 0.0) -> int:
        """Collective. ``ahead_s``: work planned before the next poll (a whole step at a step
        boundary, 0 inside one). -> GO, CHECKPOINT or EXIT, the same on every rank."""
        what = int(all_max(float(self._local(ahead_s))))
        if what != GO and self.reason is None:
            self.reason = "another rank's signal"
        return what

    def left_s(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.time()


def all_max(x: float) -> float:
    """Collective: the largest ``x`` over all ranks (``x`` itself without a process group)."""
    t = torch.tensor([x])
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def job_end_time(limit_minutes: Optional[float], t_start: float, log=print) -> Optional[float]:
    """The earliest of: ``t_start + train.time_limit_minutes``, ``SLURM_JOB_END_TIME`` (epoch
    seconds) and ``squeue -h -j $SLURM_JOB_ID -o %e`` (the scheduler's end time; asked by rank 0
    only -- the stop decision is all-reduced, so one rank knowing it is enough). None = no limit."""
    ends = [t_start + 60.0 * limit_minutes] if limit_minutes else []
    env = os.environ.get("SLURM_JOB_END_TIME", "")
    if env.isdigit():
        ends.append(float(env))
    elif os.environ.get("SLURM_JOB_ID") and os.environ.get("RANK", "0") == "0":
        end = _squeue_end_time(os.environ["SLURM_JOB_ID"], log)
        if end is not None:
            ends.append(end)
    return min(ends) if ends else None


def _squeue_end_time(job_id: str, log) -> Optional[float]:
    import datetime
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True,
                             timeout=20).stdout.strip()
        return datetime.datetime.fromisoformat(out).timestamp()  # local time, as squeue prints it
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log(f"[nft] job end time unknown (squeue -j {job_id} -o %e: {e or 'no output'}); "
            "set train.time_limit_minutes to stop before the limit without SIGUSR1")
        return None


def log0(*args) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


class Timer:
    """Wall time per phase: ``t`` for the current step, ``total`` for the run."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.total: dict[str, float] = {}

    def new_step(self) -> None:
        self.t = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.time()
        yield
        dt = time.time() - t0
        self.t[name] = self.t.get(name, 0.0) + dt
        self.total[name] = self.total.get(name, 0.0) + dt


def progress_line(step: int, total: int, m: dict) -> str:
    parts = [f"step {step:>4}/{total}"]
    for key, label, fmt in (("rollout/reward", "reward", ".3f"), ("rollout/kept_group_frac", "kept", ".2f"),
                            ("train/loss", "loss", ".4f"), ("train/grad_norm", "gnorm", ".3f"),
                            ("rollout/entropy", "ent", ".3f"), ("rollout/resp_len_mean", "len", ".1f"),
                            ("eval/accuracy", "EVAL", ".3f"), ("time/step", "s", ".1f")):
        if key in m:
            parts.append(f"{label} {m[key]:{fmt}}")
    return "[nft] " + "  ".join(parts)


_PHASES = {"warm_start": "model prep / warm start", "rollout": "rollout + verify", "old_logprobs": "old log-probs",
           "train": "train (fwd+bwd+opt)", "sync": "weight sync", "eval": "eval"}


def print_summary(algorithm: str, out_dir: str, summary: dict) -> None:
    hist = summary["eval_history"]
    lines = ["", "=" * 60, f" NFT run summary ({algorithm}) -> {out_dir}", "-" * 60]
    if hist:
        steps = sorted(hist, key=int)
        first, last = hist[steps[0]], hist[steps[-1]]
        lines.append(f" eval accuracy  step {steps[0]:>4}: {first * 100:6.1f}%")
        lines.append(f" eval accuracy  step {steps[-1]:>4}: {last * 100:6.1f}%   ({(last - first) * 100:+.1f} points)")
    for key, label in _PHASES.items():
        if key in summary["phases"]:
            lines.append(f" {label:<24}: {summary['phases'][key]:7.1f} s")
    lines.append(f" {'total wall time':<24}: {summary['seconds']:7.1f} s")
    if summary.get("plot"):
        lines.append(f" {'plot':<24}: {summary['plot']}")
    lines.append(f" {'metrics':<24}: {os.path.join(out_dir, 'metrics.jsonl')}")
    lines.append("=" * 60)
    print("\n".join(lines), file=sys.stdout, flush=True)
