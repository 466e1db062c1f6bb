"""The NFT training loop, top to bottom (DESIGN.md):

    prompts -> rollout engine -> verifier (0/1) -> r-hat per group -> dynamic-sampling filter
    (refill) -> megatron: old log-probs (forward only) -> loss in the pipeline schedule,
    ``train.updates_per_rollout`` optimizer steps -> weight sync megatron -> engine
    -> metrics, periodic eval, checkpoint

Offline mode (``rollout.source: answers.jsonl``) skips generation: each step takes the next
groups of pre-generated answers from the file. Every rank runs this same program (SPMD).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

from megatron_nft.config import RecipeConfig, dump_config
from megatron_nft.data.batching import split_evenly
from megatron_nft.megatron.batches import TrainSample
from megatron_nft.metrics import MetricsLogger, plot_metrics
from megatron_nft.rollout.collect import assign_advantages


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

    @contextmanager
    def __call__(self, name: str):
        t0 = time.time()
        yield
        dt = time.time() - t0
        self.t[name] = self.t.get(name, 0.0) + dt
        self.total[name] = self.total.get(name, 0.0) + dt


# ---------------------------------------------------------------------------- model source

def resolve_model(cfg: RecipeConfig) -> tuple[str, dict]:
    """-> (HF dir used for tokenizer/config/rollout engine, HF config dict). Collective."""
    path = cfg.model.hf_path
    if path is None:
        from megatron_nft.tiny import build_tiny_base

        path = build_tiny_base(cfg, log=log0)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.hf_path: {path!r} is not a directory")
    from megatron_nft.checkpoint.convert import HF_CONFIG_FILE

    if os.path.isfile(os.path.join(path, "config.json")):
        cfg_file = os.path.join(path, "config.json")
    elif os.path.isfile(os.path.join(path, HF_CONFIG_FILE)):  # a megatron checkpoint of ours
        cfg_file = os.path.join(path, HF_CONFIG_FILE)
    else:
        raise FileNotFoundError(f"model.hf_path: {path!r} has neither config.json (HF) nor "
                                f"{HF_CONFIG_FILE} (megatron-nft checkpoint)")
    with open(cfg_file) as f:
        return path, json.load(f)


def load_initial_weights(policy, path: str) -> None:
    from megatron_nft.checkpoint.convert import HF_CONFIG_FILE, load_dist_checkpoint, load_hf_into_model

    if os.path.isfile(os.path.join(path, HF_CONFIG_FILE)) and not os.path.isfile(os.path.join(path, "config.json")):
        load_dist_checkpoint([policy.unwrapped()], path)
    else:
        load_hf_into_model([policy.unwrapped()], path)
    policy.weights_loaded()


def export_hf_dir(policy, out_dir: str, src_dir: str) -> None:
    """Collective: write the policy as an HF dir (config + safetensors + tokenizer), atomically."""
    from megatron_nft.checkpoint.convert import export_model_to_hf_state, write_hf_safetensors

    rank0 = dist.get_rank() == 0
    tmp = out_dir.rstrip("/") + ".tmp"
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    named = export_model_to_hf_state([policy.unwrapped()], gather_to="rank0")
    if rank0:
        write_hf_safetensors(named, tmp)
        for name in os.listdir(src_dir):
            src = os.path.join(src_dir, name)
            if os.path.isfile(src) and not name.endswith(".safetensors") and name != "model.safetensors.index.json" \
                    and (name.endswith(".json") or name.endswith(".jinja") or name.endswith(".txt") or name.endswith(".model")):
                shutil.copy2(src, os.path.join(tmp, name))
        tok_dir = os.path.join(src_dir, "tokenizer")  # megatron-nft checkpoints keep it there
        if os.path.isdir(tok_dir):
            for name in os.listdir(tok_dir):
                shutil.copy2(os.path.join(tok_dir, name), os.path.join(tmp, name))
        if not os.path.exists(os.path.join(tmp, "config.json")):
            shutil.copy2(os.path.join(src_dir, "hf_config.json"), os.path.join(tmp, "config.json"))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    else:
        for _ in named:  # drive the collective gather
            pass
    dist.barrier()


# ---------------------------------------------------------------------------- offline data

def load_offline_groups(path: str) -> list[list[dict]]:
    """``{"group", "prompt_ids", "response_ids", "reward"[, "rollout_logprobs"]}`` lines ->
    groups (file order of first appearance)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"rollout.source: {path!r} not found")
    groups: dict = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for k in ("group", "prompt_ids", "response_ids", "reward"):
                if k not in row:
                    raise ValueError(f"{path}:{n}: missing key {k!r} (need group, prompt_ids, response_ids, reward)")
            if not row["response_ids"]:
                raise ValueError(f"{path}:{n}: empty response_ids")
            groups.setdefault(row["group"], []).append(row)
    return list(groups.values())


def offline_samples(groups: list[list[dict]], step: int, prompts_per_step: int) -> list[TrainSample]:
    """Groups of step ``step`` (cycling through the file in order; at most the whole file)."""
    out = []
    n = len(groups)
    prompts_per_step = min(prompts_per_step, n)
    for g in range(prompts_per_step):
        gi = (step * prompts_per_step + g) % n
        rows = groups[gi]
        r_hat = sum(1.0 for r in rows if r["reward"] > 0) / len(rows)
        for r in rows:
            out.append(TrainSample(
                tokens=list(r["prompt_ids"]) + list(r["response_ids"]), prompt_len=len(r["prompt_ids"]),
                reward=float(r["reward"]), correct_rate=r_hat, group=gi,
                rollout_logprobs=r.get("rollout_logprobs"), meta={"shaped_reward": float(r["reward"])}))
    return out


def keep_informative(samples: list[TrainSample]) -> list[TrainSample]:
    return [s for s in samples if 0.0 < s.correct_rate < 1.0]


def mini_batches(samples: list[TrainSample], k: int) -> list[list[TrainSample]]:
    """``k`` contiguous mini-batches of whole groups (a group never straddles two updates)."""
    groups: dict = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    glist = list(groups.values())
    shards = split_evenly(len(glist), max(1, min(k, len(glist))))
    return [[s for g in glist[r.start:r.stop] for s in g] for r in shards]


# ---------------------------------------------------------------------------- the loop

def run(cfg: RecipeConfig) -> dict:
    from megatron_nft.megatron.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
    from megatron_nft.megatron.parallel import init_distributed
    from megatron_nft.megatron.policy import MegatronPolicy

    stop = StopSignal()
    info = init_distributed(cfg.parallel.tp, cfg.parallel.pp, cfg.seed)
    rank0 = info.rank == 0
    out = cfg.output.dir
    timer = Timer()
    t_start = time.time()
    if rank0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "recipe.yaml"), "w") as f:
            f.write(dump_config(cfg))
    log0(f"[nft] world {info.world_size} = tp {info.tp} x pp {info.pp} x dp {info.dp} on {info.device}; "
         f"algorithm {cfg.algorithm.name}; output {out}")

    with timer("warm_start"):
        hf_dir, hf_config = resolve_model(cfg)
    online = cfg.rollout.source is None
    if online:
        from transformers import AutoTokenizer

        from megatron_nft.data.prompts import load_prompt_dataset
        from megatron_nft.rewards import MathVerifier
        from megatron_nft.rollout import make_engine, vllm_available
        from megatron_nft.rollout.base import SamplingConfig
        from megatron_nft.rollout.collect import PromptStream, collect_rollouts, engine_slot, evaluate
        from megatron_nft.tiny import tiny_problem_kwargs

        tok_dir = hf_dir if os.path.isfile(os.path.join(hf_dir, "tokenizer_config.json")) else os.path.join(hf_dir, "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        d = cfg.data
        common = dict(system_prompt=d.system_prompt or None, max_prompt_tokens=cfg.rollout.max_prompt_tokens,
                      prompt_key=d.prompt_key, answer_key=d.answer_key,
                      synthetic_kwargs=tiny_problem_kwargs(cfg))
        train_items = load_prompt_dataset(d.train, tokenizer, split="train", seed=cfg.seed, size=d.train_size, **common)
        eval_items = [] if d.eval is None else load_prompt_dataset(
            d.eval, tokenizer, split="eval", seed=cfg.seed + 1, size=d.eval_size, limit=d.eval_size, **common)
        stream = PromptStream(train_items, seed=cfg.seed)
        log0(f"[nft] {len(train_items)} training prompts, {len(eval_items)} held-out eval prompts")
    else:
        groups = load_offline_groups(cfg.rollout.source)
        log0(f"[nft] offline: {len(groups)} answer groups from {cfg.rollout.source}")

    total_updates = cfg.train.max_steps * cfg.train.updates_per_rollout
    policy = MegatronPolicy(cfg, hf_config, total_updates=total_updates)
    log0(policy.describe())
    ckpt = latest_checkpoint(out)
    start_step, state = 0, {}
    if ckpt:
        state = load_checkpoint(policy, ckpt)
        start_step = int(state["step"])
        log0(f"[nft] resumed from {ckpt} (step {start_step})")
    else:
        load_initial_weights(policy, hf_dir)

    metrics_log = MetricsLogger(out, enabled=rank0, tensorboard=cfg.output.tensorboard, resume_step=start_step)
    engine = verifier = None
    eval_history = state.get("eval_history", {})
    if online:
        if "stream" in state:
            stream.load_state(state["stream"])
        kind = cfg.rollout.engine
        if kind == "auto":
            kind = "vllm" if vllm_available() else "hf"
        engine_dir = hf_dir
        if not os.path.isfile(os.path.join(hf_dir, "config.json")):
            # started from a megatron checkpoint: engines load HF directories, so give them one
            engine_dir = os.path.join(out, "engine_init")
            export_hf_dir(policy, engine_dir, hf_dir)
        engine = make_engine(kind, engine_dir, tp=cfg.rollout.vllm_tp if kind == "vllm" else 1, seed=cfg.seed,
                             gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                             sleep_mode=cfg.rollout.sleep_mode,
                             max_model_len=cfg.rollout.max_prompt_tokens + cfg.rollout.max_response_tokens)
        slot = engine_slot(kind, cfg.rollout.vllm_tp)
        verifier = MathVerifier(timeout_s=5.0, num_workers=1 if info.world_size > 1 else 2)
        if ckpt:
            sync_weights(policy, engine)
        sampling = SamplingConfig(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                  max_tokens=cfg.rollout.max_response_tokens)
        eval_sampling = SamplingConfig(n=cfg.eval.n, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                       max_tokens=cfg.eval.max_response_tokens or cfg.rollout.max_response_tokens,
                                       seed=cfg.seed + 999)

        def run_eval(step: int) -> dict:
            if not eval_items:
                return {}
            with timer("eval"):
                acc = evaluate(engine, verifier, eval_items, eval_sampling, slot)
            eval_history[str(step)] = acc
            return {"eval/accuracy": acc}

        if start_step == 0:
            m0 = run_eval(0)
            if m0:
                metrics_log.log(0, m0)
                log0(f"[nft] step 0  eval/accuracy {m0['eval/accuracy']:.3f}")

    std_norm = cfg.algorithm.name in ("grpo", "dapo")
    step = start_step
    for step in range(start_step + 1, cfg.train.max_steps + 1):
        timer.t = {}
        t_step = time.time()
        m: dict = {}
        hist = {}
        with timer("rollout"):
            if online:
                rb = collect_rollouts(
                    engine, verifier, stream, prompts_per_step=cfg.train.prompts_per_step, sampling=sampling,
                    slot=slot, gen_batch_multiplier=cfg.rollout.gen_batch_multiplier,
                    max_rounds=cfg.rollout.max_refill_rounds, filter_groups=True,
                    overlong_buffer=cfg.algorithm.overlong_buffer if cfg.algorithm.name == "dapo" else 0,
                    overlong_penalty=cfg.algorithm.overlong_penalty, step_seed=cfg.seed * 7919 + step)
                samples = rb.samples
                engine.sleep()  # vLLM: free KV cache, offload weights while megatron trains
                assign_advantages(samples, std_normalize=std_norm)
                m.update(rb.metrics)
                hist["rollout/correct_rate_hist"] = rb.correct_rates
            else:
                samples = keep_informative(offline_samples(groups, step - 1, cfg.train.prompts_per_step))
                assign_advantages(samples, std_normalize=std_norm)
                m["rollout/reward"] = sum(s.reward for s in samples) / max(len(samples), 1)
        if samples:
            # pi_old for every mini-batch before any update; each DP rank keeps the values of
            # its own shard of each mini-batch (the shard it trains on).
            batches = mini_batches(samples, cfg.train.updates_per_rollout)
            with timer("old_logprobs"):
                for b in batches:
                    policy.compute_logprobs(b)
            m.update(policy.response_stats(batches))
            with timer("train"):
                parts = [policy.train_step(b) for b in batches]
            for k in parts[0]:
                m[k] = sum(p[k] for p in parts) / len(parts)
            m["train/tokens"] = sum(p["train/tokens"] for p in parts)
            m["train/grad_norm_max"] = max(p["train/grad_norm"] for p in parts)
        else:
            log0(f"[nft] step {step}: no informative group after {cfg.rollout.max_refill_rounds} rounds; skipping update")
        if online:
            with timer("sync"):
                sync_weights(policy, engine)  # wakes the engine's weights only
                engine.wake()  # and then its KV cache, for the next rollout / eval
            if step == cfg.train.max_steps or (cfg.eval.interval and step % cfg.eval.interval == 0):
                m.update(run_eval(step))
        dt = time.time() - t_step
        m.update({f"time/{k}": v for k, v in timer.t.items()})
        m["time/step"] = dt
        m["perf/tokens_per_s"] = m.get("train/tokens", 0) / max(timer.t.get("train", 1e-9), 1e-9)
        metrics_log.log(step, m, histograms=hist)
        log0(_progress_line(step, cfg.train.max_steps, m))
        stopping = stop.any_rank()
        if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or step == cfg.train.max_steps \
                or stopping:
            st = {"eval_history": eval_history}
            if online:
                st["stream"] = stream.state()
            save_checkpoint(policy, out, step, st, keep=cfg.checkpoint.keep)
        if stopping and step < cfg.train.max_steps:
            log0(f"[nft] SIGUSR1: checkpointed step {step}; exiting so the job can be requeued")
            return {"eval_history": eval_history, "interrupted_at": step}

    if cfg.checkpoint.export_hf:
        export_hf_dir(policy, os.path.join(out, "hf"), hf_dir)
    metrics_log.close()
    summary = {"eval_history": eval_history, "seconds": time.time() - t_start,
               "phases": dict(timer.total), "final_step": step}
    if rank0:
        png = plot_metrics(os.path.join(out, "metrics.jsonl"), os.path.join(out, "progress.png"))
        summary["plot"] = png
        print_summary(cfg, summary)
    if verifier is not None:
        verifier.close()
    if engine is not None:
        engine.close()
    return summary


def sync_weights(policy, engine) -> None:
    """Megatron -> rollout engine: shards gathered over TP/PP and renamed to HF names, streamed
    in bounded buckets into ONE update call (each vLLM reload walks every module, so one call
    per bucket would repeat that walk; the engine consumes the stream lazily)."""
    from megatron_nft.checkpoint.convert import export_model_to_hf_state
    from megatron_nft.rollout.weight_sync import bucket_named_tensors, flatten_buckets

    bucket = policy.cfg.rollout.sync_bucket_mb * 2**20
    named = export_model_to_hf_state([policy.unwrapped()], gather_to="all")
    engine.update_weights(flatten_buckets(bucket_named_tensors(named, bucket)))


def _progress_line(step: int, total: int, m: dict) -> str:
    parts = [f"step {step:>4}/{total}"]
    for key, label, fmt in (("rollout/reward", "reward", ".3f"), ("rollout/kept_group_frac", "kept", ".2f"),
                            ("train/loss", "loss", ".4f"), ("train/grad_norm", "gnorm", ".3f"),
                            ("rollout/entropy", "ent", ".3f"), ("rollout/resp_len_mean", "len", ".1f"),
                            ("eval/accuracy", "EVAL", ".3f"), ("time/step", "s", ".1f")):
        if key in m:
            parts.append(f"{label} {m[key]:{fmt}}")
    return "[nft] " + "  ".join(parts)


def print_summary(cfg: RecipeConfig, summary: dict) -> None:
    hist = summary["eval_history"]
    lines = ["", "=" * 60, f" NFT run summary ({cfg.algorithm.name}) -> {cfg.output.dir}", "-" * 60]
    if hist:
        steps = sorted(hist, key=int)
        first, last = hist[steps[0]], hist[steps[-1]]
        lines.append(f" eval accuracy  step {steps[0]:>4}: {first * 100:6.1f}%")
        lines.append(f" eval accuracy  step {steps[-1]:>4}: {last * 100:6.1f}%   ({(last - first) * 100:+.1f} points)")
    labels = {"warm_start": "model prep / warm start", "rollout": "rollout + verify", "old_logprobs": "old log-probs",
              "train": "train (fwd+bwd+opt)", "sync": "weight sync", "eval": "eval"}
    for key, label in labels.items():
        if key in summary["phases"]:
            lines.append(f" {label:<24}: {summary['phases'][key]:7.1f} s")
    lines.append(f" {'total wall time':<24}: {summary['seconds']:7.1f} s")
    if summary.get("plot"):
        lines.append(f" {'plot':<24}: {summary['plot']}")
    lines.append(f" {'metrics':<24}: {os.path.join(cfg.output.dir, 'metrics.jsonl')}")
    lines.append("=" * 60)
    print("\n".join(lines), file=sys.stdout, flush=True)
