"""``--dry-run``, continued: the run's inputs, time and sizes (``plan.py`` checks the layout and
memory).

Inputs: ``model.hf_path`` must be a local directory with a config (config.json / hf_config.json),
a tokenizer (tokenizer_config.json, at the top or in ``tokenizer/``) and weights whose headers
read (safetensors, or a megatron dist checkpoint's metadata.json). A hub-style name
("Org/Model", not a local path) whose basename is in the built-in table is a warning (the run
itself needs a local copy), an error with ``plan.strict_paths: true``.

Time per rollout step, by phase (every assumption is a ``plan.*`` key, printed with the result):

* generation, per engine and round: ``A`` answers of mean length ``R`` = mean_response_frac x
  max_response_tokens; ``B`` concurrent sequences = min(A, max_num_seqs, KV-cache tokens / mean
  sequence). A decode step reads the engine's weights and the batch's KV cache from HBM:
  ``t = (W_gpu + B * ctx * kv_bytes) / (hbm_tb_s * decode_efficiency)``; steps = ``A * R / B`` plus
  one max-length answer's tail; prefill at the training MFU. x ``plan.refill_rounds``;
* training: (6 P + 12 L h s) FLOPs per token for the updates, (2 P + 4 L h s) for the pi_old
  forward (and again for full recompute), over world x gpu_tflops x mfu;
* weight sync: the bf16 weights at ~50 GB/s; eval: its generation, amortised over eval.interval;
* checkpoint: its size at ``plan.fs_write_gb_s``.

Signal lead: the trainer polls its stop flag between generation rounds, before the first update
and before eval, so the longest stretch without a poll (a round, the updates or an eval) plus a
checkpoint plus ``train.stop_margin_s`` must fit between the signal and the limit.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct

from megatron_nft.config import RecipeConfig

GiB = 1024 ** 3
SYNC_GB_S = 50.0  # gathered weight stream into the engine
EVAL_PROBLEMS = 1547  # the six benchmarks of data.eval (AIME24/25, AMC23, MATH500, OlympiadBench, Minerva)
CPUS_PER_RANK = 4  # trainer, verifier worker, vLLM engine core, data/IO threads
HOST_GIB_PER_RANK = 12.0  # a rank's process (torch, CUDA context, vLLM) in host RAM
GATHER_BYTES_PER_TOKEN = 14  # a pickled token id + float log-prob in the rollout all-gather
STARTUP_H = 0.25  # model load, engine start, warm-up per (re)start


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.count("/") != 1


def check_inputs(cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) for ``model.hf_path`` (config, tokenizer, weight headers)."""
    path = cfg.model.hf_path
    if path is None:
        return [], []
    if not os.path.isdir(path):
        msg = (f"model.hf_path: {path!r} is not a local directory; download the model to shared storage "
               f"(e.g. huggingface-cli download {path} --local-dir DIR) and set model.hf_path: DIR")
        if _looks_local(path) or cfg.plan.strict_paths:
            return [msg], []
        return [], [msg + " (the plan below uses the built-in architecture table)"]
    errors = []
    tok = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else os.path.join(path, "tokenizer")
    if not os.path.isfile(os.path.join(tok, "tokenizer_config.json")):
        errors.append(f"model.hf_path: {path!r} has no tokenizer (tokenizer_config.json, at the top or in "
                      "tokenizer/); copy the tokenizer files of the base model there")
    errors += _check_weights(path)
    return errors, []


def _check_weights(path: str) -> list[str]:
    if os.path.isfile(os.path.join(path, "metadata.json")):  # a megatron dist checkpoint
        try:
            json.load(open(os.path.join(path, "metadata.json")))
            return []
        except (OSError, ValueError) as e:
            return [f"model.hf_path: {path}/metadata.json does not read ({e}); re-convert the checkpoint"]
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        return [f"model.hf_path: {path!r} has no *.safetensors weights (nor a dist checkpoint's metadata.json); "
                "re-save the model with save_pretrained(safe_serialization=True)"]
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                json.loads(fh.read(n))
        except (OSError, ValueError, struct.error) as e:
            return [f"model.hf_path: {f} is not a readable safetensors file ({type(e).__name__}: {e}); "
                    "download it again (an interrupted download or a Git LFS pointer?)"]
    return []


def _gen_seconds(cfg, arch, m: dict, answers: float, resp_max: int) -> tuple[float, float]:
    """(seconds, tokens) for one engine generating ``answers`` answers (module docstring)."""
    ro, pl = cfg.rollout, cfg.plan
    R = pl.mean_response_frac * resp_max
    prompt = 0.5 * ro.max_prompt_tokens
    kv_bytes = 2 * arch.num_layers * max(1, arch.num_kv_heads // ro.vllm_tp) * arch.head_dim * 2
    B = max(1.0, min(answers, float(ro.vllm_kwargs.get("max_num_seqs", 256)), m["kv_tokens"] / (prompt + R)))
    t_step = (m["vllm_weights"] * GiB + B * (prompt + R / 2) * kv_bytes) / (pl.hbm_tb_s * 1e12 * pl.decode_efficiency)
    steps = answers * R / B + resp_max
    prefill = answers * prompt * 2 * m["total_params"] / (ro.vllm_tp * pl.gpu_tflops * 1e12 * pl.mfu)
    return steps * t_step + prefill, answers * R


def time_plan(cfg: RecipeConfig, arch, f: dict, m: dict) -> dict:
    """Seconds per phase of one rollout step, the run's totals and sizes."""
    tr, ro, pl, c = cfg.train, cfg.rollout, cfg.plan, cfg.cluster
    engines = max(1, f["world"] // ro.vllm_tp)
    gen_answers = round(tr.prompts_per_step * ro.gen_batch_multiplier) * ro.n / engines
    t_round, tokens = _gen_seconds(cfg, arch, m, gen_answers, ro.max_response_tokens)
    P, L, h = m["total_params"], arch.num_layers, arch.hidden_size
    seq = 0.5 * ro.max_prompt_tokens + pl.mean_response_frac * ro.max_response_tokens
    fwd = 2 * P + 4 * L * h * seq
    per_token = 3 * fwd + fwd + (fwd if cfg.model.recompute == "full" else 0)
    t_train = f["answers"] * seq * per_token / (f["world"] * pl.gpu_tflops * 1e12 * pl.mfu)
    eval_every = cfg.eval.interval or tr.max_steps or 1
    problems = 0 if cfg.data.eval is None else (cfg.data.eval_size or EVAL_PROBLEMS)
    t_eval = _gen_seconds(cfg, arch, m, problems * cfg.eval.n / engines,
                          cfg.eval.max_response_tokens or ro.max_response_tokens)[0] if problems else 0.0
    ckpt = m["ckpt_gib"]  # plan.checkpoint_gib
    t = {"rollout": pl.refill_rounds * t_round, "train": t_train, "sync": 2 * P / (SYNC_GB_S * 1e9),
         "eval": t_eval / eval_every, "round": t_round, "eval_once": t_eval,
         "gen_tokens_per_s": tokens / max(t_round, 1e-9), "ckpt_gib": ckpt, "hf_gib": 2 * P / GiB,
         "save_s": ckpt * GiB / (pl.fs_write_gb_s * 1e9)}
    t["step"] = t["rollout"] + t["train"] + t["sync"] + t["eval"]
    n_ckpt = tr.max_steps // cfg.checkpoint.interval if cfg.checkpoint.interval else 1
    t["total_h"] = (tr.max_steps * t["step"] + n_ckpt * t["save_s"]) / 3600
    t["gpu_hours"] = t["total_h"] * f["world"]
    t["requeues"] = max(0, math.ceil(t["total_h"] / max(pl.job_hours - STARTUP_H, 0.1)) - 1)
    t["lead_s"] = max(t_round, t_train, t_eval) + t["save_s"] + tr.stop_margin_s
    t["cpus"] = CPUS_PER_RANK * c.gpus_per_node
    t["gather_gib"] = engines * tokens * GATHER_BYTES_PER_TOKEN / GiB  # every rank receives all of it
    t["mem_gib"] = m["host_offload_gib"] + (HOST_GIB_PER_RANK + t["gather_gib"]) * c.gpus_per_node
    return t


def print_time_plan(say, cfg: RecipeConfig, arch, f: dict, m: dict) -> None:
    t = time_plan(cfg, arch, f, m)
    pl, ck = cfg.plan, cfg.checkpoint

    def hm(s: float) -> str:
        return f"{s:.0f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"

    say(f"[time] assumptions (plan.*): mfu {pl.mfu}, gpu_tflops {pl.gpu_tflops:g}, hbm_tb_s {pl.hbm_tb_s:g} x "
        f"decode_efficiency {pl.decode_efficiency}, mean_response_frac {pl.mean_response_frac}, refill_rounds "
        f"{pl.refill_rounds}, fs_write_gb_s {pl.fs_write_gb_s:g}, job_hours {pl.job_hours:g}")
    say(f"[time] per rollout step ~{hm(t['step'])}: generation {hm(t['rollout'])} ({pl.refill_rounds:g} rounds x "
        f"{hm(t['round'])}, ~{t['gen_tokens_per_s']:,.0f} tokens/s per engine), train + old log-probs "
        f"{hm(t['train'])}, weight sync {hm(t['sync'])}, eval {hm(t['eval'])} (amortised; {hm(t['eval_once'])} each)")
    say(f"[time] {cfg.train.max_steps} steps: ~{t['total_h']:.1f} h wall, ~{t['gpu_hours']:,.0f} GPU-hours; "
        f"~{t['requeues']} requeue(s) at --time {pl.job_hours:g} h")
    say(f"[memory] rollout gather (gloo, host RAM): ~{t['gather_gib']:.1f} GiB per rank per round (every "
        f"answer's token ids and log-probs)")
    say(f"[disk] checkpoint {t['ckpt_gib']:.1f} GiB x keep {ck.keep} = {t['ckpt_gib'] * ck.keep:.1f} GiB "
        f"(~{hm(t['save_s'])} to write); HF export {t['hf_gib']:.1f} GiB (bf16)")
    if t["round"] > 60 * cfg.parallel.timeout_minutes / 2:
        say(f"[time] warning: a generation round (~{hm(t['round'])}) is over half of parallel.timeout_minutes "
            f"{cfg.parallel.timeout_minutes}: ranks wait in the gather for the slowest engine; raise it")
    say(f"[slurm] signal lead >= {math.ceil(t['lead_s'])} s (longest stretch between stop polls + a checkpoint + "
        f"train.stop_margin_s): #SBATCH --signal=B:USR1@{math.ceil(t['lead_s'] / 60) * 60}; "
        f"--cpus-per-task={t['cpus']} --mem={math.ceil(t['mem_gib'] / 8) * 8}G per node")
