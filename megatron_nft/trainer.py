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
from megatron_nft.config import RecipeConfig
from megatron_nft.data.batching import split_evenly
from megatron_nft.metrics import MetricsLogger, plot_metrics
from megatron_nft.monitoring import SampleLog, eta_text, memory_metrics, quiet_nonzero_ranks
from megatron_nft.runtime import (EXIT, GO, StepAbandoned, StopSignal, Timer, all_max, job_end_time, log0,
                                  print_summary, progress_line)
from megatron_nft.resume import load_resumed, resume_checkpoint, write_start_recipe
from megatron_nft.runlock import hold_run_dir
from megatron_nft.stability import InputError, UpdateGuard, UserError
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
        from megatron_nft.megatron.parallel import init_distributed
        from megatron_nft.megatron.policy import MegatronPolicy

        self.cfg, self.algo = cfg, get_algorithm(cfg.algorithm.name)
        self.timer, self.t_start, t = Timer(), time.time(), cfg.train
        self.stop = StopSignal(job_end_time(t.time_limit_minutes, self.t_start, log0), t.stop_margin_s,
                               t.sigterm_grace_s)
        if self.stop.deadline is not None:
            log0(f"[nft] job end time {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.stop.deadline))} "
                 f"(in {self.stop.left_s() / 60:.1f} min): checkpoint and exit before it")
        self.guard = UpdateGuard(cfg.train.max_nonfinite_steps, cfg.train.spike_factor, log=log0)
        self.info = init_distributed(cfg.parallel.tp, cfg.parallel.pp, cfg.seed,
                                     timeout_minutes=cfg.parallel.timeout_minutes)
        quiet_nonzero_ranks(self.info.rank)  # before vLLM is imported
        self.out = cfg.output.dir
        self.lock = hold_run_dir(self.out, self.info.rank)  # one run per output.dir, before anything is written
        self.resume_from = resume_checkpoint(cfg, self.out, log0)  # same experiment? (before the model)
        self._write_recipe()
        log0(f"[nft] world {self.info.world_size} = tp {self.info.tp} x pp {self.info.pp} x dp {self.info.dp} "
             f"on {self.info.device}; algorithm {cfg.algorithm.name}; output {self.out}")
        self.source, self.tokenizer, self.gold, self.run_s = None, None, {}, 0.0
        with self.timer("warm_start"):
            self.model_dir, hf_config = resolve_model(cfg)
        data = self._load_data()  # before the model: bad input fails fast
        self.policy = MegatronPolicy(cfg, hf_config, total_updates=cfg.train.max_steps * cfg.train.updates_per_rollout)
        log0(self.policy.describe())
        ckpt = self.resume_from
        state = load_resumed(self.policy, ckpt) if ckpt else {}
        if ckpt:
            log0(f"[nft] resumed from {ckpt} (step {state['step']})")
        else:
            self.policy.load_weights(self.model_dir)
        self.start_step = self.saved_step = int(state.get("step", 0))
        self.pending_eval, self.last_save_t = bool(state.get("pending_eval")), time.time()
        self.eval_history: dict = state.get("eval_history", {})
        self.metrics = MetricsLogger(self.out, enabled=self.info.rank == 0, tensorboard=cfg.output.tensorboard,
                                     resume_step=self.start_step, wandb=cfg.output.wandb)
        self.samples_log = SampleLog(self.out, self.tokenizer, self.gold, enabled=self.info.rank == 0,
                                     resume_step=self.start_step)
        self.source = self._make_source(data)
        self.source.load_state(state)
        if ckpt:
            self.source.policy_updated()  # the engine starts from the base weights

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Rollout -> grade -> filter -> pi_old -> updates -> sync -> eval / checkpoint."""
        cfg = self.cfg
        if self.start_step == 0 or self.pending_eval:  # pending: a stop came just before that step's eval
            self._evaluate(self.start_step, log=True)
        step = self.start_step
        for step in range(self.start_step + 1, cfg.train.max_steps + 1):
            what = self.stop.poll(ahead_s=self.stop.step_s)  # does one more step fit before the end time?
            if what != GO:
                return self._stop_exit(step - 1, what)
            self.timer.new_step()
            t_step, snapshot = time.time(), self._snapshot()
            try:
                with self.timer("rollout"):  # generated, graded, filtered, advantages set
                    batch = self.source.collect(step, poll=self._poll_in_step)
                m = dict(batch.metrics)
                if batch.samples:
                    m.update(self._update_policy(batch.samples, step))
                else:
                    log0(f"[nft] step {step}: no informative group after {cfg.rollout.max_refill_rounds} rounds; "
                         "skipping update")
            except StepAbandoned as e:  # nothing of this step reached the weights yet
                log0(f"[nft] {self.stop.reason}: abandoning step {step} ({e})")
                return self._stop_exit(step - 1, self.stop.poll(), snapshot)
            with self.timer("sync"):
                self.source.policy_updated()
            eval_due = step == cfg.train.max_steps or (cfg.eval.interval and step % cfg.eval.interval == 0)
            what = self.stop.poll() if eval_due else GO
            if eval_due and what == GO:
                m.update(self._evaluate(step))
            self._log_step(step, m, batch, time.time() - t_step)
            self.guard.stop_if_exhausted(step)  # K non-finite updates in a row: stop, nothing saved
            if what != GO:  # the step is done, its eval is not: the resumed run evaluates first
                return self._stop_exit(step, what, pending_eval=True)
            self.stop.step_s = max(self.stop.step_s, time.time() - t_step)
            if step == cfg.train.max_steps or self._checkpoint_due(step):
                self._save(step)
            self._export_hf_due(step)
        return self._finish(step)

    # ------------------------------------------------------------------ phases
    def _update_policy(self, samples: list[Sample], step: int) -> dict:
        """pi_old for every mini-batch before any update (each DP rank keeps its own shard's
        values), then one optimizer step per mini-batch."""
        batches = mini_batches(samples, self.cfg.train.updates_per_rollout)
        with self.timer("old_logprobs"):
            for b in batches:
                self._poll_in_step("during old log-probs")
                self.policy.compute_logprobs(b)
        self._poll_in_step("before the first update")  # after it the step must complete
        m = self.policy.response_stats(batches)
        with self.timer("train"):
            parts = []
            for b in batches:  # a non-finite update is skipped; UpdateGuard stops the run after K in a row
                parts.append(self.policy.train_step(b))
                self.guard.observe(step, parts[-1])
        for k in parts[0]:
            m[k] = sum(p[k] for p in parts) / len(parts)
        m["train/tokens"] = sum(p["train/tokens"] for p in parts)
        m["train/grad_norm_max"] = max(p["train/grad_norm"] for p in parts)
        m["train/skipped_nonfinite"] = sum(p["train/nonfinite"] for p in parts)
        return m

    def _evaluate(self, step: int, log: bool = False) -> dict:
        with self.timer("eval"):
            m = self.source.evaluate(step)
        if "eval/accuracy" in m:
            self.eval_history[str(step)] = m["eval/accuracy"]
            if log:
                self.metrics.log(step, m)
                log0(f"[nft] step {step}  eval/accuracy {m['eval/accuracy']:.3f}")
            if self.info.rank == 0 and step > 0:  # refreshed at every eval (metrics.jsonl so far)
                plot_metrics(os.path.join(self.out, "metrics.jsonl"), os.path.join(self.out, "progress.png"))
        return m

    def _log_step(self, step: int, m: dict, batch, seconds: float) -> None:
        m.update({f"time/{k}": v for k, v in self.timer.t.items()})
        m["time/step"] = seconds
        m["perf/tokens_per_s"] = m.get("train/tokens", 0) / max(self.timer.t.get("train", 1e-9), 1e-9)
        m.update(memory_metrics())
        self.metrics.log(step, m, histograms=batch.histograms)
        self.samples_log.write(step, batch.samples)
        self.run_s += seconds
        eta = eta_text(step, self.start_step, self.cfg.train.max_steps, time.time() - self.t_start, self.run_s)
        log0(progress_line(step, self.cfg.train.max_steps, m) + "  " + eta)

    def _save(self, step: int, **extra) -> None:
        from megatron_nft.megatron.checkpointing import save_checkpoint
        from megatron_nft.megatron.ckpt_space import save_with_space_check

        t0 = time.time()
        state = {"eval_history": self.eval_history, **self.source.state(), **extra,
                 "recipe": self.cfg.to_dict()}  # resume checks the next start against it (resume.py)
        if self.guard.weights_suspect or not self.policy.weights_finite():
            log0(f"[nft] WARNING step {step}: weights not finite or the last update was non-finite; "
                 "no checkpoint written (the newest one is kept)")
            return
        save_with_space_check(self.policy, self.out, lambda: save_checkpoint(
            self.policy, self.out, step, state, keep=self.cfg.checkpoint.keep, model_dir=self.model_dir))
        self.saved_step, self.last_save_t = step, time.time()
        self.stop.save_s = max(self.stop.save_s or 0.0, self.last_save_t - t0)

    def _export_hf_due(self, step: int) -> None:
        """``checkpoint.export_hf_interval``: output.dir/hf holds this step's weights (the final
        export, at the end, replaces it)."""
        every = self.cfg.checkpoint.export_hf_interval
        if every and step % every == 0 and step < self.cfg.train.max_steps:
            if self.guard.weights_suspect or not self.policy.weights_finite():  # collective, same on every rank
                log0(f"[nft] WARNING step {step}: suspect weights; {os.path.join(self.out, 'hf')} left as it was")
                return
            self.policy.export_hf_dir(os.path.join(self.out, "hf"), self.model_dir)
            log0(f"[nft] step {step}: exported {os.path.join(self.out, 'hf')}")

    def _checkpoint_due(self, step: int) -> bool:
        c = self.cfg.checkpoint
        if c.interval and step % c.interval == 0:
            return True
        late = bool(c.interval_minutes) and time.time() - self.last_save_t >= 60.0 * c.interval_minutes
        return bool(all_max(float(late)))  # clocks differ by rank: every rank must agree

    # ------------------------------------------------------------------ stopping early
    def _poll_in_step(self, where: str = "between refill rounds") -> None:
        if self.stop.poll() != GO:
            raise StepAbandoned(f"stop seen {where}")

    def _snapshot(self) -> dict:
        """The data position and RNG at the end of the last completed step."""
        from megatron_nft.megatron.checkpointing import _rng_state

        return {"source": self.source.state(), "rng": _rng_state()}

    def _stop_exit(self, done: int, what: int, snapshot=None, pending_eval: bool = False) -> dict:
        """Checkpoint the last completed step ``done`` (unless already on disk, or SIGTERM's grace
        is too short for a checkpoint) and leave; ``requeue`` goes to $NFT_STATUS_FILE."""
        from megatron_nft.megatron.checkpointing import _set_rng_state

        if what == EXIT:
            log0(f"[nft] {self.stop.reason}: a checkpoint ({self.stop.save_s or 0:.0f} s) does not fit in the grace "
                 f"time ({self.stop.grace_s:.0f} s, train.sigterm_grace_s); exiting without one")
        elif done > self.saved_step or pending_eval:
            if snapshot is not None:  # back to the end of step `done`: the resumed run redoes the rest
                self.source.load_state(snapshot["source"])
                _set_rng_state(snapshot["rng"])
            self._save(done, **({"pending_eval": True} if pending_eval else {}))
        left = self.stop.left_s()
        log0(f"[nft] {self.stop.reason}: checkpoint at step {self.saved_step}; exiting so the job can be requeued"
             + ("" if left is None else f" ({left:.0f} s before the job's end time)"))
        self._write_status("requeue")
        self.metrics.close()
        return {"eval_history": self.eval_history, "interrupted_at": self.saved_step}

    def _write_status(self, status: str) -> None:
        """For slurm/launch.sh: ``done`` or ``requeue`` (rank 0, into $NFT_STATUS_FILE when set)."""
        path = os.environ.get("NFT_STATUS_FILE")
        if path and self.info.rank == 0:
            with open(path, "w") as f:
                f.write(status + "\n")

    def _finish(self, step: int) -> dict:
        if self.cfg.checkpoint.export_hf and (self.guard.weights_suspect or not self.policy.weights_finite()):
            raise UserError(f"the final weights are not finite or gave a non-finite loss; "
                            f"{os.path.join(self.out, 'hf')} was not written. "
                            "Resume from the newest checkpoint with a lower train.lr")
        if self.cfg.checkpoint.export_hf:
            self.policy.export_hf_dir(os.path.join(self.out, "hf"), self.model_dir)
        self.metrics.close()
        self._write_status("done")
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
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ------------------------------------------------------------------ building
    def _write_recipe(self) -> None:
        if self.info.rank == 0:
            log0(f"[nft] recipe of this start: {write_start_recipe(self.cfg, self.out)}")

    def _load_data(self):
        """Offline: the answer groups. Online: (tokenizer, train prompts, eval prompts)."""
        cfg = self.cfg
        if cfg.rollout.source is not None:
            from megatron_nft.checkpoint.hf_io import model_dir_config
            from megatron_nft.rollout.sources import OfflineSource

            hf = model_dir_config(self.model_dir)[1]  # rows are checked against the model's vocab / positions
            src = OfflineSource(cfg, self.algo, cfg.rollout.source, hf.get("vocab_size"),
                                hf.get("max_position_embeddings"))
            log0(f"[nft] offline: {len(src.groups)} answer groups from {cfg.rollout.source}")
            return src
        from transformers import AutoTokenizer

        from megatron_nft.checkpoint.hf_io import tokenizer_dir
        from megatron_nft.data.prompts import load_prompt_dataset
        from megatron_nft.data.synthetic import tiny_problem_kwargs
        from megatron_nft.rollout.validation import load_eval_set

        tokenizer = self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(self.model_dir))
        d = cfg.data
        common = dict(system_prompt=d.system_prompt or None, max_prompt_tokens=cfg.rollout.max_prompt_tokens,
                      prompt_key=d.prompt_key, answer_key=d.answer_key, synthetic_kwargs=tiny_problem_kwargs(cfg))
        train = load_prompt_dataset(d.train, tokenizer, split="train", seed=cfg.seed, size=d.train_size, **common)
        if not train:  # before the model is built: nothing would train
            raise InputError(f"data.train: no usable prompt in {train.summary()}; check the file, data.prompt_key / "
                             "data.answer_key, or raise rollout.max_prompt_tokens")
        evals = load_eval_set(cfg, tokenizer, **common)  # synthetic / a file / a benchmark directory
        log0(f"[nft] {len(train)} training prompts, {len(evals)} held-out eval prompts")
        self.gold = {p.uid: p.answer for p in train}  # for samples.jsonl
        return train, evals

    def _make_source(self, data):
        if not isinstance(data, tuple):
            return data  # the offline source, already loaded
        from megatron_nft.checkpoint.hf_io import is_hf_dir
        from megatron_nft.rewards import MathVerifier
        from megatron_nft.rewards.training import TrainingReward
        from megatron_nft.rollout import make_engine
        from megatron_nft.rollout.collect import PromptStream, engine_slot, set_gather_timeout
        from megatron_nft.rollout.factory import resolve_kind
        from megatron_nft.rollout.sources import OnlineSource
        from megatron_nft.rollout.weight_sync import WeightSync

        cfg, (train, evals) = self.cfg, data
        set_gather_timeout(cfg.parallel.timeout_minutes)
        r = cfg.rollout
        kind = resolve_kind(r.engine)
        engine_dir = self.model_dir
        if not is_hf_dir(self.model_dir):  # a megatron checkpoint: engines load HF directories
            engine_dir = os.path.join(self.out, "engine_init")
            self.policy.export_hf_dir(engine_dir, self.model_dir)
        engine = make_engine(kind, engine_dir, tp=r.vllm_tp if kind == "vllm" else 1, seed=cfg.seed,
                             gpu_memory_utilization=r.gpu_memory_utilization, sleep_mode=r.sleep_mode,
                             max_model_len=r.max_prompt_tokens + r.max_response_tokens,
                             **(r.vllm_kwargs if kind == "vllm" else {}))
        verifier = TrainingReward(MathVerifier(timeout_s=5.0, num_workers=1 if self.info.world_size > 1 else 2),
                                  r.reward)  # rollout.reward; evaluation grading keeps the verifier
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
