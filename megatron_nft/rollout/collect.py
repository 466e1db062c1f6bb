"""One rollout step: generate K answers per prompt, grade them, keep informative groups,
refill until the batch is full (DAPO-style dynamic sampling, PAPER.md: generation batch 3x,
at most 10 rounds).

Distribution: the world is split into rollout engines (``hf``: one per rank; ``vllm``: one per
``vllm_tp`` ranks). Each engine generates and grades its slice of the prompts; results are
all-gathered so every rank holds the same batch (ranks then pick their own DP shard).
"""
from __future__ import annotations

import datetime
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch.distributed as dist

from megatron_nft.rollout.base import SamplingConfig
from megatron_nft.types import PromptItem, Sample

#: ``reward_fn(correct, response_length) -> reward``: the algorithm's shaping (registry).
RewardFn = Callable[[bool, int], float]


def plain_reward(correct: bool, length: int) -> float:
    return 1.0 if correct else 0.0


@dataclass
class PromptStream:
    """Deterministic epoch-shuffled prompt order with a resumable position."""

    items: Sequence[PromptItem]
    seed: int
    epoch: int = 0
    pos: int = 0
    _order: list = field(default_factory=list, repr=False)

    def _shuffle(self) -> None:
        self._order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self._order)

    def take(self, n: int) -> list:
        if not self.items:
            raise ValueError("the prompt dataset is empty")
        out = []
        while len(out) < n:
            if not self._order:
                self._shuffle()
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._shuffle()
            out.append(self.items[self._order[self.pos]])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        self._shuffle()


@dataclass
class EngineSlot:
    """This rank's place among the rollout engines."""

    index: int  # engine id
    count: int  # number of engines
    leader: bool  # contributes results to the gather


def engine_slot(kind: str, vllm_tp: int = 1) -> EngineSlot:
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    per = vllm_tp if kind == "vllm" else 1
    return EngineSlot(index=rank // per, count=max(world // per, 1), leader=rank % per == 0)


_CPU_GROUP: list = []
_GATHER_TIMEOUT_MIN = [30.0]


def set_gather_timeout(minutes: float) -> None:
    """``parallel.timeout_minutes`` for the rollout's gloo group (set before the first gather)."""
    _GATHER_TIMEOUT_MIN[0] = float(minutes)


def _cpu_group():
    """A gloo group over all ranks (made once, collectively, at the first gather): pickled
    rollouts travel through host memory, not as GPU tensors over NCCL."""
    if dist.get_backend() == "gloo":
        return None  # the default group already is
    if not _CPU_GROUP:
        timeout = datetime.timedelta(minutes=_GATHER_TIMEOUT_MIN[0])
        _CPU_GROUP.append(dist.new_group(backend="gloo", timeout=timeout))
    return _CPU_GROUP[0]


def _all_gather(obj):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group())
    return out


def generate_and_grade(engine, verifier, prompts: Sequence[PromptItem], sampling: SamplingConfig, slot: EngineSlot,
                       reward_fn: RewardFn = plain_reward) -> list[list[dict]]:
    """Generate ``sampling.n`` answers for each prompt of this engine's slice, grade them, and
    gather everything. Returns, per prompt (input order), a list of answer dicts. Only token
    ids, log-probs and grades travel between ranks (text stays with the engine that made it)."""
    mine = list(range(slot.index, len(prompts), slot.count))
    local = {}
    if mine:
        outs = engine.generate([prompts[i].prompt_ids for i in mine], sampling)
        flat = [(i, c) for i, cs in zip(mine, outs) for c in cs]
        ok = verifier.verify_batch([c.text for _, c in flat], [prompts[i].answer for i, _ in flat])
        for (i, c), good in zip(flat, ok):
            truncated = c.finish_reason == "length"
            correct = bool(good) and not truncated  # over-long answers count as wrong
            local.setdefault(i, []).append({
                "token_ids": list(c.token_ids), "logprobs": list(c.logprobs), "correct": correct,
                "reward": reward_fn(correct, len(c.token_ids)), "truncated": truncated})
    merged = {}
    for part in _all_gather(local if slot.leader else {}):
        merged.update(part)
    return [merged[i] for i in range(len(prompts))]


@dataclass
class RolloutBatch:
    samples: list[Sample]  # groups of n consecutive
    metrics: dict
    histograms: dict = field(default_factory=dict)


def collect_rollouts(engine, verifier, stream: PromptStream, *, prompts_per_step: int, sampling: SamplingConfig,
                     slot: EngineSlot, gen_batch_multiplier: float = 3.0, max_rounds: int = 10,
                     filter_groups: bool = True, reward_fn: RewardFn = plain_reward,
                     step_seed: int = 0, group_offset: int = 0,
                     poll: Optional[Callable[[], None]] = None) -> RolloutBatch:
    """Dynamic sampling: generate ``gen_batch_multiplier`` x prompts per round, keep groups with
    0 < r-hat < 1, refill until ``prompts_per_step`` groups or ``max_rounds`` rounds."""
    kept: list[tuple] = []  # (prompt, answers, r_hat)
    stats = _RoundStats()
    rounds = 0
    gen_size = max(int(round(prompts_per_step * gen_batch_multiplier)), 1)
    while len(kept) < prompts_per_step and rounds < max_rounds:
        if poll is not None and rounds:  # the trainer's stop check (collective); it raises to abandon the step
            poll()
        prompts = stream.take(gen_size if filter_groups else prompts_per_step)
        sp = SamplingConfig(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens, seed=step_seed * 100 + rounds * 10007 + slot.index)
        t0 = time.time()
        graded = generate_and_grade(engine, verifier, prompts, sp, slot, reward_fn)
        stats.gen_s += time.time() - t0
        rounds += 1
        for p, answers in zip(prompts, graded):
            r_hat = stats.add(answers)
            if not filter_groups or 0.0 < r_hat < 1.0:
                kept.append((p, answers, r_hat))
    samples = [Sample(tokens=list(p.prompt_ids) + a["token_ids"], prompt_len=len(p.prompt_ids),
                      correct=a["correct"], reward=a["reward"], r_hat=r_hat, group=group_offset + g, uid=p.uid,
                      truncated=a["truncated"], rollout_logprobs=a["logprobs"])
               for g, (p, answers, r_hat) in enumerate(kept[:prompts_per_step]) for a in answers]
    metrics = {**stats.metrics(), "rollout/kept_groups": min(len(kept), prompts_per_step),
               "rollout/refill_rounds": rounds}
    return RolloutBatch(samples=samples, metrics=metrics, histograms={"rollout/correct_rate_hist": stats.rates})


@dataclass
class _RoundStats:
    """Counts over every generated answer of a step (before filtering)."""

    rates: list = field(default_factory=list)  # r-hat of every generated group
    n_gen: int = 0
    n_correct: int = 0
    truncated: int = 0
    lengths: list = field(default_factory=list)
    gen_s: float = 0.0  # wall time of the generate + grade rounds

    def add(self, answers: list[dict]) -> float:
        r_hat = sum(a["correct"] for a in answers) / len(answers)
        self.rates.append(r_hat)
        self.n_gen += len(answers)
        self.n_correct += sum(a["correct"] for a in answers)
        self.lengths += [len(a["token_ids"]) for a in answers]
        self.truncated += sum(a["truncated"] for a in answers)
        return r_hat

    def metrics(self) -> dict:
        n = max(self.n_gen, 1)
        return {"rollout/reward": self.n_correct / n,
                "rollout/kept_group_frac": len([r for r in self.rates if 0 < r < 1]) / max(len(self.rates), 1),
                "rollout/resp_len_mean": sum(self.lengths) / max(len(self.lengths), 1),
                "rollout/resp_len_max": max(self.lengths) if self.lengths else 0,
                "rollout/clipped_frac": self.truncated / n,
                "rollout/generated": self.n_gen,
                # response tokens of all engines per second of rollout rounds (generation + grading)
                "rollout/gen_tokens_per_s": sum(self.lengths) / max(self.gen_s, 1e-9)}


def assign_advantages(samples: Sequence[Sample], advantages: Callable) -> None:
    """``sample.advantage`` from the (possibly shaped) rewards by the algorithm's group
    normalisation (``Algorithm.advantages``)."""
    if not samples:
        return
    for s, a in zip(samples, advantages([s.reward for s in samples], [s.group for s in samples])):
        s.advantage = a


def evaluate(engine, verifier, prompts: Sequence[PromptItem], sampling: SamplingConfig, slot: EngineSlot) -> float:
    """Mean accuracy over ``sampling.n`` answers for each held-out prompt."""
    graded = generate_and_grade(engine, verifier, prompts, sampling, slot)
    flat = [a["correct"] for answers in graded for a in answers]
    return sum(flat) / max(len(flat), 1)
