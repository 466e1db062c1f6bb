"""What a long SPMD run needs around its loop: the stop signal, phase timers, rank-0 logging,
the one-line progress report and the final summary (kept out of ``trainer.py`` so the loop
reads on one screen)."""
from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist


class StopSignal:
    """SIGUSR1 (Slurm's ``--signal=B:USR1@...`` before the time limit) asks for a checkpoint at
    the next step boundary and a clean exit; the launcher then requeues the job, which
    resumes from that checkpoint. Ranks see the signal at different times, so the flag is
    all-reduced at the boundary."""

    def __init__(self):
        self.flag = False
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, self._handler)

    def _handler(self, signum, frame) -> None:
        self.flag = True

    def any_rank(self) -> bool:
        t = torch.tensor([1.0 if self.flag else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


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
