"""Rollout sources: where a training step's graded answers come from.

Both sources have one interface, so the training loop has no online/offline branches:

* ``collect(step) -> RolloutBatch``: the informative groups of this step, advantages assigned;
* ``policy_updated()``: the policy's weights changed (online: push them into the engine);
* ``evaluate(step) -> dict``: held-out metrics (``{}`` when the source has none);
* ``state()`` / ``load_state(st)``: the resumable data position; ``close()``.

:class:`OnlineSource` generates with a rollout engine, grades with the verifier and refills
(``collect.collect_rollouts``); :class:`OfflineSource` replays a file of pre-generated answers
(``rollout.source: answers.jsonl``), cycling through its groups in order.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

from megatron_nft.rollout.base import SamplingConfig
from megatron_nft.rollout.collect import (EngineSlot, PromptStream, RolloutBatch, assign_advantages, collect_rollouts,
                                          evaluate)
from megatron_nft.rollout.weight_sync import WeightSync
from megatron_nft.types import PromptItem, Sample


class RolloutSource(Protocol):
    def collect(self, step: int, poll=None) -> RolloutBatch: ...

    def policy_updated(self) -> None: ...

    def evaluate(self, step: int) -> dict: ...

    def state(self) -> dict: ...

    def load_state(self, st: dict) -> None: ...

    def close(self) -> None: ...


class OnlineSource:
    """Generate -> grade -> filter/refill with a (colocated) engine; the engine sleeps while the
    policy trains and gets the new weights after the update (``WeightSync``)."""

    def __init__(self, cfg, algo, engine, verifier, stream: PromptStream, eval_items: Sequence[PromptItem],
                 slot: EngineSlot, sync: WeightSync):
        self.cfg, self.algo, self.engine, self.verifier = cfg, algo, engine, verifier
        self.stream, self.slot, self.sync = stream, slot, sync
        # a BenchmarkEval (rollout/validation.py: per-benchmark grading) or plain prompt items
        self.eval_items = eval_items if hasattr(eval_items, "evaluate") else list(eval_items)
        r, e = cfg.rollout, cfg.eval
        self.sampling = SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_response_tokens)
        self.eval_sampling = SamplingConfig(n=e.n, temperature=e.temperature, top_p=e.top_p,
                                            max_tokens=e.max_response_tokens or r.max_response_tokens,
                                            seed=cfg.seed + 999)

    def _reward(self, correct: bool, length: int) -> float:
        return self.algo.shaped_reward(self.cfg.algorithm, correct, length, self.sampling.max_tokens)

    def collect(self, step: int, poll=None) -> RolloutBatch:
        c = self.cfg
        rb = collect_rollouts(
            self.engine, self.verifier, self.stream, prompts_per_step=c.train.prompts_per_step,
            sampling=self.sampling, slot=self.slot, gen_batch_multiplier=c.rollout.gen_batch_multiplier,
            max_rounds=c.rollout.max_refill_rounds, filter_groups=True, reward_fn=self._reward,
            step_seed=c.seed * 7919 + step, poll=poll)
        self.sync.release()  # vLLM: free KV cache, offload weights while megatron trains
        assign_advantages(rb.samples, self.algo.advantages)
        return rb

    def policy_updated(self) -> None:
        self.sync.push()

    def evaluate(self, step: int) -> dict:
        if not self.eval_items:
            return {}
        if hasattr(self.eval_items, "evaluate"):
            return self.eval_items.evaluate(self.engine, self.verifier, self.eval_sampling, self.slot)
        return {"eval/accuracy": evaluate(self.engine, self.verifier, self.eval_items, self.eval_sampling, self.slot)}

    def state(self) -> dict:
        return {"stream": self.stream.state()}

    def load_state(self, st: dict) -> None:
        if "stream" in st:
            self.stream.load_state(st["stream"])

    def close(self) -> None:
        for part in (self.verifier, self.engine):
            if part is not None:
                part.close()
        self.verifier = self.engine = None


class OfflineSource:
    """Pre-generated answers: each step takes the next ``train.prompts_per_step`` groups of the
    file (in file order, cycling), keeps the informative ones and assigns advantages."""

    def __init__(self, cfg, algo, path: str, vocab: Optional[int] = None, max_positions: Optional[int] = None):
        self.cfg, self.algo = cfg, algo
        self.groups = load_offline_groups(path, vocab, max_positions)

    def collect(self, step: int, poll=None) -> RolloutBatch:
        samples = [s for s in offline_samples(self.groups, step - 1, self.cfg.train.prompts_per_step)
                   if 0.0 < s.r_hat < 1.0]
        assign_advantages(samples, self.algo.advantages)
        return RolloutBatch(samples=samples,
                            metrics={"rollout/reward": sum(s.reward for s in samples) / max(len(samples), 1)})

    def policy_updated(self) -> None:
        pass

    def evaluate(self, step: int) -> dict:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, st: dict) -> None:
        pass

    def close(self) -> None:
        pass


def load_offline_groups(path: str, vocab: Optional[int] = None, max_positions: Optional[int] = None) -> list[list[dict]]:
    """``{"group", "prompt_ids", "response_ids", "reward"[, "rollout_logprobs"]}`` lines ->
    groups (file order of first appearance); every row checked (``offline_rows.py``)."""
    from megatron_nft.rollout.offline_rows import read_offline_groups

    return read_offline_groups(path, vocab, max_positions)


def offline_samples(groups: list[list[dict]], step: int, prompts_per_step: int) -> list[Sample]:
    """Groups of step ``step`` (cycling through the file in order; at most the whole file)."""
    out = []
    n = len(groups)
    prompts_per_step = min(prompts_per_step, n)
    for g in range(prompts_per_step):
        gi = (step * prompts_per_step + g) % n
        rows = groups[gi]
        r_hat = sum(1.0 for r in rows if r["reward"] > 0) / len(rows)
        for r in rows:
            out.append(Sample(tokens=list(r["prompt_ids"]) + list(r["response_ids"]), prompt_len=len(r["prompt_ids"]),
                              correct=r["reward"] > 0, reward=float(r["reward"]), r_hat=r_hat, group=gi,
                              rollout_logprobs=r.get("rollout_logprobs")))
    return out
