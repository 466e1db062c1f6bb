"""One rollout step: generate K answers per prompt, grade them, keep informative groups,
refill until the batch is full (DAPO-style dynamic sampling, PAPER.md: generation batch 3x,
at most 10 rounds).

Distribution: the world is split into rollout engines (``hf``: one per rank; ``vllm``: one per
``vllm_tp`` ranks). Each engine generates and grades its slice of the prompts; results are
all-gathered so every rank holds the same batch (ranks then pick their own DP shard).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist

from megatron_nft.algorithms import group_advantages
from megatron_nft.megatron.batches import TrainSample
from megatron_nft.rollout.base import SamplingConfig


@dataclass
class PromptStream:
    """Deterministic epoch-shuffled prompt order with a resumable position."""

    items: Sequence  # PromptItem-like: .uid .prompt_ids .answer
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


def _all_gather(obj):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def generate_and_grade(engine, verifier, prompts: Sequence, sampling: SamplingConfig, slot: EngineSlot,
                       *, overlong_buffer: int = 0, overlong_penalty: float = 0.0) -> list[list[dict]]:
    """Generate ``sampling.n`` answers for each prompt of this engine's slice, grade them, and
    gather everything. Returns, per prompt (input order), a list of answer dicts."""
    mine = list(range(slot.index, len(prompts), slot.count))
    local = {}
    if mine:
        outs = engine.generate([prompts[i].prompt_ids for i in mine], sampling)
        flat = [(i, c) for i, cs in zip(mine, outs) for c in cs]
        ok = verifier.verify_batch([c.text for _, c in flat], [prompts[i].answer for i, _ in flat])
        for (i, c), good in zip(flat, ok):
            truncated = c.finish_reason == "length"
            reward = 1.0 if (good and not truncated) else 0.0  # over-long answers count as wrong
            shaped = reward + _overlong_shaping(len(c.token_ids), sampling.max_tokens,
                                                overlong_buffer, overlong_penalty)
            local.setdefault(i, []).append({
                "token_ids": list(c.token_ids), "logprobs": list(c.logprobs), "text": c.text,
                "correct": reward, "reward": shaped, "truncated": truncated})
    merged = {}
    for part in _all_gather(local if slot.leader else {}):
        merged.update(part)
    return [merged[i] for i in range(len(prompts))]


def _overlong_shaping(length: int, max_tokens: int, buffer: int, penalty: float) -> float:
    """DAPO soft over-long punishment: linear penalty in the last ``buffer`` tokens."""
    if buffer <= 0:
        return 0.0
    start = max_tokens - buffer
    if length <= start:
        return 0.0
    return -min((length - start) / buffer, 1.0) * penalty


@dataclass
class RolloutBatch:
    samples: list  # TrainSample, groups of n consecutive
    metrics: dict
    correct_rates: list  # r-hat of every generated group (before filtering)


def collect_rollouts(engine, verifier, stream: PromptStream, *, prompts_per_step: int, sampling: SamplingConfig,
                     slot: EngineSlot, gen_batch_multiplier: float = 3.0, max_rounds: int = 10,
                     filter_groups: bool = True, overlong_buffer: int = 0, overlong_penalty: float = 0.0,
                     step_seed: int = 0, group_offset: int = 0) -> RolloutBatch:
    kept: list[tuple] = []  # (prompt, answers, r_hat)
    all_rates, n_gen, n_correct, lengths, truncs = [], 0, 0, [], 0
    rounds = 0
    gen_size = max(int(round(prompts_per_step * gen_batch_multiplier)), 1)
    while len(kept) < prompts_per_step and rounds < max_rounds:
        prompts = stream.take(gen_size if filter_groups else prompts_per_step)
        sp = SamplingConfig(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens, seed=step_seed * 100 + rounds * 10007 + slot.index)
        graded = generate_and_grade(engine, verifier, prompts, sp, slot,
                                    overlong_buffer=overlong_buffer, overlong_penalty=overlong_penalty)
        rounds += 1
        for p, answers in zip(prompts, graded):
            r_hat = sum(a["correct"] for a in answers) / len(answers)
            all_rates.append(r_hat)
            n_gen += len(answers)
            n_correct += sum(a["correct"] for a in answers)
            lengths += [len(a["token_ids"]) for a in answers]
            truncs += sum(a["truncated"] for a in answers)
            if not filter_groups or 0.0 < r_hat < 1.0:
                kept.append((p, answers, r_hat))
    kept = kept[:prompts_per_step]
    samples = []
    for g, (p, answers, r_hat) in enumerate(kept):
        for a in answers:
            samples.append(TrainSample(
                tokens=list(p.prompt_ids) + a["token_ids"], prompt_len=len(p.prompt_ids),
                reward=a["correct"], correct_rate=r_hat, group=group_offset + g,
                rollout_logprobs=a["logprobs"], meta={"shaped_reward": a["reward"], "uid": p.uid}))
    metrics = {
        "rollout/reward": n_correct / max(n_gen, 1),
        "rollout/kept_group_frac": len([r for r in all_rates if 0 < r < 1]) / max(len(all_rates), 1),
        "rollout/kept_groups": len(kept),
        "rollout/refill_rounds": rounds,
        "rollout/resp_len_mean": sum(lengths) / max(len(lengths), 1),
        "rollout/resp_len_max": max(lengths) if lengths else 0,
        "rollout/clipped_frac": truncs / max(n_gen, 1),
        "rollout/generated": n_gen,
    }
    return RolloutBatch(samples=samples, metrics=metrics, correct_rates=all_rates)


def assign_advantages(samples: Sequence[TrainSample], std_normalize: bool) -> None:
    """Group-normalised advantages of the (possibly over-long-shaped) rewards: r - mean_group,
    divided by the group's population std for GRPO/DAPO."""
    if not samples:
        return
    rewards = torch.tensor([s.meta.get("shaped_reward", s.reward) for s in samples], dtype=torch.float64)
    groups = torch.tensor([s.group for s in samples])
    adv = group_advantages(rewards, groups, std_normalize=std_normalize)
    for s, a in zip(samples, adv.tolist()):
        s.advantage = a


def evaluate(engine, verifier, prompts: Sequence, sampling: SamplingConfig, slot: EngineSlot) -> float:
    """Mean accuracy over ``sampling.n`` answers for each held-out prompt."""
    graded = generate_and_grade(engine, verifier, prompts, sampling, slot)
    flat = [a["correct"] for answers in graded for a in answers]
    return sum(flat) / max(len(flat), 1)
