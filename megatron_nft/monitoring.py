"""What a day-long run shows besides metrics.jsonl: ``samples.jsonl`` (a few decoded answers per
step), memory metrics, the elapsed/ETA part of the progress line, and quiet non-zero ranks.

``samples.jsonl`` (rank 0, one line per sample): ``step``, ``group``, ``prompt``, ``response``
(decoded with the run's tokenizer from the gathered token ids -- no text travels between
ranks), ``extracted`` (the verifier's answer extraction), ``gold``, ``reward``, ``correct``,
``r_hat``, ``truncated``. Per step it takes one correct and one wrong answer from each of the
first ``per_step // 2`` kept groups.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from typing import Optional, Sequence

import torch

from megatron_nft.types import Sample

GiB = 1024 ** 3


def quiet_nonzero_ranks(rank: int) -> None:
    """Only rank 0 logs by default: vLLM (read at its import) logs warnings only on other ranks;
    NFT_LOG_ALL_RANKS=1 keeps every rank's logs."""
    if rank != 0 and os.environ.get("NFT_LOG_ALL_RANKS") != "1":
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def memory_metrics() -> dict:
    """``mem/max_allocated`` (GiB): torch's peak allocated GPU memory since the last call (then
    reset); on CPU the process's peak resident set size."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / GiB
        torch.cuda.reset_peak_memory_stats()
        return {"mem/max_allocated": peak, "mem/reserved": torch.cuda.memory_reserved() / GiB}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"mem/max_allocated": rss_kib * (1 if sys.platform == "darwin" else 1024) / GiB}


def eta_text(step: int, start_step: int, total: int, elapsed_s: float, run_s: float) -> str:
    """``elapsed 1:02:03  eta 4:05:06``: ``elapsed_s`` since this process started, the ETA from
    this process's mean step time (``run_s`` over the steps it ran)."""
    done = step - start_step
    eta = (total - step) * run_s / done if done > 0 else None
    return f"elapsed {_hms(elapsed_s)}" + (f"  eta {_hms(eta)}" if eta is not None else "")


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class SampleLog:
    """Appends a few decoded samples per step to ``output.dir/samples.jsonl`` (rank 0 only)."""

    def __init__(self, out_dir: str, tokenizer, gold: Optional[dict] = None, enabled: bool = True,
                 per_step: int = 4, resume_step: int = 0):
        self.path = os.path.join(out_dir, "samples.jsonl")
        self.tokenizer, self.gold = tokenizer, gold or {}
        self.enabled = enabled and tokenizer is not None
        self.per_step = per_step
        if self.enabled and os.path.exists(self.path):  # rows after the resumed step are a lost future
            keep = [ln for ln in open(self.path) if ln.endswith("\n") and json.loads(ln)["step"] <= resume_step]
            with open(self.path + ".tmp", "w") as f:
                f.writelines(keep)
            os.replace(self.path + ".tmp", self.path)

    def pick(self, samples: Sequence[Sample]) -> list[Sample]:
        groups: dict = {}
        for s in samples:
            groups.setdefault(s.group, []).append(s)
        out = []
        for g in list(groups.values())[:max(1, self.per_step // 2)]:
            for want in (True, False):
                hit = next((s for s in g if s.correct == want), None)
                if hit is not None:
                    out.append(hit)
        return out

    def write(self, step: int, samples: Sequence[Sample]) -> None:
        if not self.enabled or not samples:
            return
        from megatron_nft.rewards.extract import extract_answer

        with open(self.path, "a") as f:
            for s in self.pick(samples):
                response = self.tokenizer.decode(s.tokens[s.prompt_len:], skip_special_tokens=True)
                row = {"step": step, "group": s.group,
                       "prompt": self.tokenizer.decode(s.tokens[:s.prompt_len], skip_special_tokens=True),
                       "response": response, "extracted": extract_answer(response), "gold": self.gold.get(s.uid),
                       "reward": s.reward, "correct": s.correct, "r_hat": s.r_hat, "truncated": s.truncated}
                f.write(json.dumps(row) + "\n")
