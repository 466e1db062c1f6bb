"""Metrics sinks: ``metrics.jsonl`` (one JSON object per step), TensorBoard, a PNG plot.

Only the global rank 0 writes; other ranks get a no-op logger so call sites need no
rank checks. ``metrics.jsonl`` is appended to, so a resumed run continues the same file
(entries past the resume step are dropped on open: they belong to the lost future).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


class MetricsLogger:
    def __init__(self, out_dir: str, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int = 0, wandb: bool = False):
        self.enabled = enabled
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._tb = self._wandb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._last_step = self._truncate_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=resume_step + 1 if resume_step else 0)
        if wandb:
            self._wandb = _wandb_offline(out_dir)

    def _truncate_after(self, step: int) -> Optional[int]:
        """Keep rows with step <= ``step`` (rows of a crashed future are dropped on resume); a
        fresh start (``step`` 0, no checkpoint) logs step 0 again, so it keeps nothing.
        Returns the last kept row's step."""
        if not os.path.exists(self.path):
            return None
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash
                if step > 0 and row.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        self._rewrite(keep)
        return json.loads(keep[-1]).get("step") if keep else None

    def _rewrite(self, lines: list) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, self.path)

    def _append_or_merge(self, row: dict) -> None:
        """One row per step: a second log of the last step (e.g. the eval a resumed run owes the
        step it stopped at) is merged into that row."""
        if row["step"] != self._last_step:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        else:
            with open(self.path) as f:
                lines = f.readlines()
            last = json.loads(lines[-1])
            last.update(row)
            self._rewrite(lines[:-1] + [json.dumps(last) + "\n"])
        self._last_step = row["step"]

    def log(self, step: int, metrics: dict, histograms: Optional[dict] = None) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: (float(v) if _is_number(v) else v) for k, v in metrics.items()})
        self._append_or_merge(row)
        if self._tb is not None:
            for k, v in metrics.items():
                if _is_number(v):
                    self._tb.add_scalar(k, float(v), step)
            for k, values in (histograms or {}).items():
                if len(values):
                    import numpy as np

                    self._tb.add_histogram(k, np.asarray(values, dtype=np.float64), step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: float(v) for k, v in metrics.items() if _is_number(v)}, step=int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _wandb_offline(out_dir: str):
    """An offline wandb run in ``out_dir/wandb`` (``wandb sync`` uploads it later)."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError("output.wandb: true needs wandb: pip install 'megatron-nft[wandb]' "
                          "(or set output.wandb: false)") from e
    os.makedirs(os.path.join(out_dir, "wandb"), exist_ok=True)
    return wandb.init(mode="offline", dir=out_dir, project="megatron-nft", name=os.path.basename(out_dir.rstrip("/")))


def read_metrics(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_metrics(metrics_path: str, png_path: str,
                 keys: tuple[str, ...] = ("rollout/reward", "eval/accuracy")) -> Optional[str]:
    """Plot the given keys against step into one PNG; returns the path or None if nothing to plot."""
    if not os.path.exists(metrics_path):  # a run that logged nothing (max_steps 0, no eval)
        return None
    rows = read_metrics(metrics_path)
    series = {k: [(r["step"], r[k]) for r in rows if _is_number(r.get(k))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for k, pts in series.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=k)
    ax.set_xlabel("rollout step")
    ax.set_ylabel("fraction correct")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
