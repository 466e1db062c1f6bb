"""The NFT training loop, top to bottom (../shared/DESIGN.md):

    prompts -> rollout engine -> verifier (0/1) -> r-hat per group -> dynamic-sampling filter
    (refill) -> megatron: old log-probs (forward only) -> loss in the pipeline schedule,
    ``train.updates_per_rollout`` optimizer steps -> weight sync megatron -> engine
    -> metrics, periodic eval, checkpoint

:class:`Trainer` builds the components in ``__init__`` and :meth:`Trainer.train` runs the
loop. Where the graded answers come from is a *rollout source* (``rollout/sources.py``):
online generation, or ``rollout.source: answers.jsonl`` replaying pre-generated answers --
the loop is the same for both. Every rank runs this same program (SPMD).
"""
from __future__ import annotations

import os
import time

from megatron_nft.algorithms import get_algorithm
from megatron_nft.config import RecipeConfig, dump_config
from megatron_nft.data.batching import split_evenly
from megatron_nft.metrics import MetricsLogger, plot_metrics
from megatron_nft.runtime import StopSignal, Timer, log0, print_summary, progress_line
from megatron_nft.types import Sample


def resolve_model(cfg: RecipeConfig) -> tuple[str, dict]:
    """-> (model directory: HF dir or megatron-nft checkpoint, its HF config). Collective: with
    ``model.hf_path: null`` the tiny model is built (once per ``output.dir``)."""
    from megatron_nft.checkpoint.hf_io import model_dir_config

    path = cfg.model.hf_path
    if path is None:
        from megatron_nft.tiny import build_tiny_base

        path = build_tiny_base(cfg, log=log0)
    return path, model_dir_config(path)[1]


def mini_batches(samples: list[Sample], k: int) -> list[list[Sample]]:
    """``k`` contiguous mini-batches of whole groups (a group never straddles two updates)."""
    groups: dict = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    glist = list(groups.values())
    shards = split_evenly(len(glist), max(1, min(k, len(glist))))
    return [[s for g in glist[r.start:r.stop] for s in g] for r in shards]


class Trainer:
    """One run of a recipe: policy, rollout source, metrics and checkpoints on this rank."""

    def __init__(self, cfg: RecipeConfig):
        from megatron_nft.megatron.checkpointing import latest_checkpoint, load_checkpoint
        from megatron_nft.megatron.parallel import init_distributed
        from megatron_nft.megatron.policy import MegatronPolicy

        self.cfg, self.algo = cfg, get_algorithm(cfg.algorithm.name)
        self.stop, self.timer, self.t_start = StopSignal(), Timer(), time.time()
        self.info = init_distributed(cfg.parallel.tp, cfg.parallel.pp, cfg.seed)
        self.out = cfg.output.dir
        self._write_recipe()
        log0(f"[nft] world {self.info.world_size} = tp {self.info.tp} x pp {self.info.pp} x dp {self.info.dp} "
             f"on {self.info.device}; algorithm {cfg.algorithm.name}; output {self.out}")
        self.source = None
        with self.timer("warm_start"):
            self.model_dir, hf_config = resolve_model(cfg)
        data = self._load_data()  # before the model: bad input fails fast
        self.policy = MegatronPolicy(cfg, hf_config, total_updates=cfg.train.max_steps * cfg.train.updates_per_rollout)
        log0(self.policy.describe())
        ckpt = latest_checkpoint(self.out)
        state = load_checkpoint(self.policy, ckpt) if ckpt else {}
        if ckpt:
            log0(f"[nft] resumed from {ckpt} (step {state['step']})")
        else:
            self.policy.load_weights(self.model_dir)
        self.start_step = int(state.get("step", 0))
        self.eval_history: dict = state.get("eval_history", {})
        self.metrics = MetricsLogger(self.out, enabled=self.info.rank == 0, tensorboard=cfg.output.tensorboard,
                                     resume_step=self.start_step)
        self.source = self._make_source(data)
        self.source.load_state(state)
        if ckpt:
            self.source.policy_updated()  # the engine starts from the base weights

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Rollout -> grade -> filter -> pi_old -> updates -> sync -> eval / checkpoint."""
        cfg = self.cfg
        if self.start_step == 0:
            self._evaluate(0, log=True)
        step = self.start_step
        for step in range(self.start_step + 1, cfg.train.max_steps + 1):
            self.timer.new_step()
            t_step = time.time()
            with self.timer("rollout"):
                batch = self.source.collect(step)  # generated, graded, filtered, advantages set
            m = dict(batch.metrics)
            if batch.samples:
                m.update(self._update_policy(batch.samples))
            else:
                log0(f"[nft] step {step}: no informative group after {cfg.rollout.max_refill_rounds} rounds; "
                     "skipping update")
            with self.timer("sync"):
                self.source.policy_updated()
            if step == cfg.train.max_steps or (cfg.eval.interval and step % cfg.eval.interval == 0):
                m.update(self._evaluate(step))
            self._log_step(step, m, batch.histograms, time.time() - t_step)
            stopping = self.stop.any_rank()
            if stopping or step == cfg.train.max_steps or (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0):
                self._save(step)
            if stopping and step < cfg.train.max_steps:
                log0(f"[nft] SIGUSR1: checkpointed step {step}; exiting so the job can be requeued")
                return {"eval_history": self.eval_history, "interrupted_at": step}
        return self._finish(step)

    # ------------------------------------------------------------------ phases
    def _update_policy(self, samples: list[Sample]) -> dict:
        """pi_old for every mini-batch before any update (each DP rank keeps its own shard's
        values), then one optimizer step per mini-batch."""
        batches = mini_batches(samples, self.cfg.train.updates_per_rollout)
        with self.timer("old_logprobs"):
            for b in batches:
                self.policy.compute_logprobs(b)
        m = self.policy.response_stats(batches)
        with self.timer("train"):
            parts = [self.policy.train_step(b) for b in batches]
        for k in parts[0]:
            m[k] = sum(p[k] for p in parts) / len(parts)
        m["train/tokens"] = sum(p["train/tokens"] for p in parts)
        m["train/grad_norm_max"] = max(p["train/grad_norm"] for p in parts)
        return m

    def _evaluate(self, step: int, log: bool = False) -> dict:
        with self.timer("eval"):
            m = self.source.evaluate(step)
        if "eval/accuracy" in m:
            self.eval_history[str(step)] = m["eval/accuracy"]
            if log:
                self.metrics.log(step, m)
                log0(f"[nft] step {step}  eval/accuracy {m['eval/accuracy']:.3f}")
        return m

    def _log_step(self, step: int, m: dict, histograms: dict, seconds: float) -> None:
        m.update({f"time/{k}": v for k, v in self.timer.t.items()})
        m["time/step"] = seconds
        m["perf/tokens_per_s"] = m.get("train/tokens", 0) / max(self.timer.t.get("train", 1e-9), 1e-9)
        self.metrics.log(step, m, histograms=histograms)
        log0(progress_line(step, self.cfg.train.max_steps, m))

    def _save(self, step: int) -> None:
        from megatron_nft.megatron.checkpointing import save_checkpoint

        state = {"eval_history": self.eval_history, **self.source.state()}
        save_checkpoint(self.policy, self.out, step, state, keep=self.cfg.checkpoint.keep)

    def _finish(self, step: int) -> dict:
        if self.cfg.checkpoint.export_hf:
            self.policy.export_hf_dir(os.path.join(self.out, "hf"), self.model_dir)
        self.metrics.close()
        summary = {"eval_history": self.eval_history, "seconds": time.time() - self.t_start,
                   "phases": dict(self.timer.total), "final_step": step}
        if self.info.rank == 0:
            summary["plot"] = plot_metrics(os.path.join(self.out, "metrics.jsonl"), os.path.join(self.out, "progress.png"))
            print_summary(self.cfg.algorithm.name, self.out, summary)
        return summary

    def close(self) -> None:
        """Release the engine and the verifier (every exit path, see :func:`run`)."""
        if self.source is not None:
            self.source.close()
            self.source = None

    # ------------------------------------------------------------------ building
    def _write_recipe(self) -> None:
        if self.info.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "recipe.yaml"), "w") as f:
                f.write(dump_config(self.cfg))

    def _load_data(self):
        """Offline: the answer groups. Online: (tokenizer, train prompts, eval prompts)."""
        cfg = self.cfg
        if cfg.rollout.source is not None:
            from megatron_nft.rollout.sources import OfflineSource

            src = OfflineSource(cfg, self.algo, cfg.rollout.source)
            log0(f"[nft] offline: {len(src.groups)} answer groups from {cfg.rollout.source}")
            return src
        from transformers import AutoTokenizer

        from megatron_nft.checkpoint.hf_io import tokenizer_dir
        from megatron_nft.data.prompts import load_prompt_dataset
        from megatron_nft.data.synthetic import tiny_problem_kwargs

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(self.model_dir))
        d = cfg.data
        common = dict(system_prompt=d.system_prompt or None, max_prompt_tokens=cfg.rollout.max_prompt_tokens,
                      prompt_key=d.prompt_key, answer_key=d.answer_key, synthetic_kwargs=tiny_problem_kwargs(cfg))
        train = load_prompt_dataset(d.train, tokenizer, split="train", seed=cfg.seed, size=d.train_size, **common)
        evals = [] if d.eval is None else load_prompt_dataset(
            d.eval, tokenizer, split="eval", seed=cfg.seed + 1, size=d.eval_size, limit=d.eval_size, **common)
        log0(f"[nft] {len(train)} training prompts, {len(evals)} held-out eval prompts")
        return train, evals

    def _make_source(self, data):
        if not isinstance(data, tuple):
            return data  # the offline source, already loaded
        from megatron_nft.checkpoint.hf_io import is_hf_dir
        from megatron_nft.rewards import MathVerifier
        from megatron_nft.rollout import make_engine
        from megatron_nft.rollout.collect import PromptStream, engine_slot
        from megatron_nft.rollout.factory import resolve_kind
        from megatron_nft.rollout.sources import OnlineSource
        from megatron_nft.rollout.weight_sync import WeightSync

        cfg, (train, evals) = self.cfg, data
        r = cfg.rollout
        kind = resolve_kind(r.engine)
        engine_dir = self.model_dir
        if not is_hf_dir(self.model_dir):  # a megatron checkpoint: engines load HF directories
            engine_dir = os.path.join(self.out, "engine_init")
            self.policy.export_hf_dir(engine_dir, self.model_dir)
        engine = make_engine(kind, engine_dir, tp=r.vllm_tp if kind == "vllm" else 1, seed=cfg.seed,
                             gpu_memory_utilization=r.gpu_memory_utilization, sleep_mode=r.sleep_mode,
                             max_model_len=r.max_prompt_tokens + r.max_response_tokens)
        verifier = MathVerifier(timeout_s=5.0, num_workers=1 if self.info.world_size > 1 else 2)
        return OnlineSource(cfg, self.algo, engine, verifier, PromptStream(train, seed=cfg.seed), evals,
                            engine_slot(kind, r.vllm_tp), WeightSync(engine, self.policy.hf_state))


def run(cfg: RecipeConfig) -> dict:
    """Build and train; the engine and verifier are closed on every exit path."""
    trainer = None
    try:
        trainer = Trainer(cfg)
        return trainer.train()
    finally:
        if trainer is not None:
            trainer.close()
