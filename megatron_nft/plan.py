"""``nft-train --dry-run``: check a recipe against ``cluster.*`` and print the plan; no GPU needed.

Checks (each failure names the recipe key and the fix, exit code 2):

* world = ``cluster.nodes`` x ``cluster.gpus_per_node``; ``parallel.tp`` x ``parallel.pp`` must divide
  it (DP = world / (TP*PP) >= 1);
* attention heads and KV heads divisible by TP (FFN too); layers divisible by PP, or
  ``parallel.pp_layer_split`` ("a,b,...", one entry per stage) summing to the layers;
* ``rollout.vllm_tp`` divides ``cluster.gpus_per_node`` and the attention heads;
* the rollout batch (prompts x n answers) divisible by ``train.updates_per_rollout`` and each
  mini-batch by DP; ``train.micro_batch_tokens`` holds one max-length sequence;
* the per-GPU memory estimate below fits in ``cluster.gpu_memory_gb``.

Memory model (per GPU, bytes; P = parameters of the largest pipeline stage / TP;
t = tokens of one micro-batch; h, f = hidden / FFN size; L_s = layers of that stage):

* weights 2·P (bf16; 4·P if ``train.bf16: false``);
* gradients 4·P: megatron DDP keeps one persistent fp32 grad buffer (grad_reduce_in_fp32);
* optimizer 12·P/DP: fp32 main params + Adam exp_avg + exp_avg_sq, sharded over DP by the
  distributed optimizer (12·P without it);
* activations, 1F1B keeps up to min(PP, micro-batches) micro-batches in flight on stage 0.
  One layer's forward activations (flash/SDPA attention, no s² term, bf16):
  A = 2·t·(5h/s + (2·q + 2·kv + 3f)/TP) with q = heads·head_dim, kv = kv_heads·head_dim,
  s = TP with sequence parallel else 1. Full recompute keeps only each layer's input
  (2·t·h/s) and rebuilds one layer at a time (2·A with its gradients):
  ``in_flight · L_s · 2·t·h/s + 2·A``; selective/none keeps A for every layer:
  ``in_flight · L_s · A + A``. ``model.transformer_impl: local`` (unfused attention) adds the
  score matrices, 5 B x rows x heads/TP x seq² (= 5·t·seq·heads/TP) to A;
* logits: the chunked vocab-parallel log-prob pass holds ~3 · 4096 tokens (the policy's chunk) · V_pad/TP · 4 B;
* vLLM (colocated on the same GPUs): while generating it may take
  ``rollout.gpu_memory_utilization`` x GPU memory. With ``rollout.sleep_mode: true`` it sleeps
  during training (level 1: weights go to pinned CPU memory, the KV cache is freed), leaving only
  ~1 GiB of context/CUDA-graph pool on the GPU; without sleep mode its share stays all the time;
* weight sync (rollout phase): two buckets of ``rollout.sync_bucket_mb``;
* 3 GiB CUDA/NCCL context and allocator slack.

peak = max(training phase, rollout phase); training = weights + grads + optimizer + activations
+ logits + vLLM (asleep) + slack; rollout = weights + grads + optimizer (Megatron state stays on the
GPU) + vLLM share + sync buffers + slack. The rollout phase has no activation or logit term because
``WeightSync.push`` calls ``torch.cuda.empty_cache()`` before vLLM wakes (torch's cached blocks from
training would otherwise stay reserved beside vLLM's share), and the rollouts (token ids, log-probs,
grades -- no text) are all-gathered over a gloo CPU group, so they cost host RAM, not GPU memory. ``cluster.gpu_memory_gb`` is read as GiB (an "80 GB" H100
exposes 79.6 GiB); FITS means peak <= that. It is an estimate: allocator fragmentation and
NCCL buffers vary by ~10%.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import replace

from megatron_nft.arch import KNOWN_ARCHS, ModelArch, padded_vocab_size, parse_hf_config, tiny_arch  # noqa: F401

from megatron_nft.config import ConfigError, RecipeConfig, parse_layer_split

GiB = 1024 ** 3
SLACK_GIB = 3.0
VLLM_ASLEEP_GIB = 1.0
LOGPROB_CHUNK_TOKENS = 4096  # MegatronPolicy's chunk_tokens


def _resolve(cfg: RecipeConfig) -> tuple[ModelArch, str]:
    """(architecture of ``model.hf_path`` with its display name, where it was read from): an HF
    dir / converted checkpoint, the built-in table, or the embedded tiny model when null."""
    path = cfg.model.hf_path
    if path is None:
        return replace(tiny_arch(cfg.model.tiny), name="tiny (embedded)"), "model.tiny"
    base = os.path.basename(os.path.normpath(path))
    if os.path.isdir(path):
        for name in ("config.json", "hf_config.json"):
            f = os.path.join(path, name)
            if os.path.isfile(f):
                return replace(parse_hf_config(f), name=base), f
    known = KNOWN_ARCHS.get(base.lower())
    if known is None:
        raise ConfigError(
            f"model.hf_path: {path!r} is not a readable model directory (no config.json / hf_config.json) "
            f"and {base!r} is not in the built-in table ({', '.join(KNOWN_ARCHS)}); point it at a local "
            f"HF model directory to dry-run this recipe")
    return replace(known, name=base), "built-in table (model.hf_path is not a local directory)"


def resolve_arch(cfg: RecipeConfig) -> ModelArch:
    return _resolve(cfg)[0]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _num(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _fmt(xs) -> str:
    return ", ".join(str(x) for x in xs)


def stage_layers(cfg: RecipeConfig, arch: ModelArch, errors: list) -> list[int]:
    pp, L = cfg.parallel.pp, arch.num_layers
    split = cfg.parallel.pp_layer_split
    if split:
        try:
            parts = parse_layer_split(str(split))
        except ValueError as e:
            errors.append(str(e))
            return [L // pp] * pp
        if len(parts) != pp or sum(parts) != L or min(parts) < 1:
            errors.append(f"parallel.pp_layer_split: {split!r} must have parallel.pp={pp} entries >= 1 summing "
                          f"to num_layers {L} (got {len(parts)} entries, sum {sum(parts)})")
            return [math.ceil(L / pp)] * pp
        return parts
    if L % pp:
        errors.append(f"parallel.pp: {pp} does not divide num_layers {L} ({arch.name}); use "
                      f"{_fmt(d for d in _divisors(L) if d <= 64)} or set parallel.pp_layer_split "
                      f"(e.g. {','.join(str(L // pp + (i < L % pp)) for i in range(pp))})")
        return [math.ceil(L / pp)] * pp
    return [L // pp] * pp


def check(cfg: RecipeConfig, arch: ModelArch) -> tuple[list[str], list[str], dict]:
    """Returns (errors, warnings, facts)."""
    from megatron_nft.rollout.validation import check_data_paths

    errors: list[str] = check_data_paths(cfg)  # data.train / data.eval exist and are readable kinds
    warns: list[str] = []
    c, par, tr, ro = cfg.cluster, cfg.parallel, cfg.train, cfg.rollout
    tp, pp = par.tp, par.pp
    if c.nodes < 1:
        errors.append(f"cluster.nodes: must be >= 1, got {c.nodes}")
    if c.gpus_per_node < 1:
        errors.append(f"cluster.gpus_per_node: must be >= 1, got {c.gpus_per_node}")
    world = max(1, c.nodes) * max(1, c.gpus_per_node)
    dp = world // (tp * pp) if world % (tp * pp) == 0 else 0
    if not dp:
        ok = [d for d in _divisors(world)]
        errors.append(f"parallel.tp x parallel.pp: {tp} x {pp} = {tp * pp} does not divide the world size {world} "
                      f"(cluster.nodes {c.nodes} x cluster.gpus_per_node {c.gpus_per_node}); tp x pp must be one "
                      f"of {_fmt(ok)}, or change cluster.nodes")
    good_tp = [d for d in _divisors(math.gcd(arch.num_attention_heads, arch.num_kv_heads))
               if arch.ffn_hidden_size % d == 0]
    if arch.num_attention_heads % tp or arch.num_kv_heads % tp or arch.ffn_hidden_size % tp:
        errors.append(f"parallel.tp: {tp} does not divide num_attention_heads {arch.num_attention_heads} / "
                      f"num_kv_heads {arch.num_kv_heads} / ffn_hidden_size {arch.ffn_hidden_size} of {arch.name}; "
                      f"use {_fmt(good_tp)}")
    if tp > c.gpus_per_node:
        warns.append(f"parallel.tp {tp} > cluster.gpus_per_node {c.gpus_per_node}: tensor parallelism across "
                     f"nodes is slow; prefer pipeline parallelism between nodes")
    layers = stage_layers(cfg, arch, errors)
    if par.virtual_pp:
        errors.append(f"parallel.virtual_pp: {par.virtual_pp}: the interleaved pipeline schedule is not supported "
                      "by this trainer yet; set it to null (parallel.pp_layer_split balances uneven stages)")
    if par.sequence_parallel and tp == 1:
        warns.append("parallel.sequence_parallel has no effect at parallel.tp 1")
    if ro.vllm_tp < 1 or c.gpus_per_node % ro.vllm_tp:
        errors.append(f"rollout.vllm_tp: {ro.vllm_tp} does not divide cluster.gpus_per_node {c.gpus_per_node} "
                      f"(one vLLM engine must stay inside a node); use {_fmt(_divisors(max(1, c.gpus_per_node)))}")
    elif arch.num_attention_heads % ro.vllm_tp:
        errors.append(f"rollout.vllm_tp: {ro.vllm_tp} does not divide num_attention_heads "
                      f"{arch.num_attention_heads}; use one of "
                      f"{_fmt(d for d in _divisors(arch.num_attention_heads) if c.gpus_per_node % d == 0)}")
    answers = tr.prompts_per_step * ro.n
    seq_max = ro.max_prompt_tokens + ro.max_response_tokens
    if answers % tr.updates_per_rollout:
        errors.append(f"train.updates_per_rollout: {tr.updates_per_rollout} does not divide the rollout batch "
                      f"{tr.prompts_per_step} prompts x {ro.n} answers = {answers}; use a divisor of it")
    mini = answers // tr.updates_per_rollout
    if answers % tr.updates_per_rollout:
        pass
    elif dp and answers % dp:
        errors.append(f"train.prompts_per_step: the rollout batch {answers} answers is not divisible by DP {dp}; "
                      f"make train.prompts_per_step x rollout.n a multiple of {dp}")
    elif dp and mini and mini % dp:
        errors.append(f"train.prompts_per_step: a mini-batch of {mini} answers ({answers} / train.updates_per_rollout "
                      f"{tr.updates_per_rollout}) is not divisible by DP {dp}; make prompts_per_step x rollout.n "
                      f"a multiple of {dp * tr.updates_per_rollout}")
    if tr.micro_batch_tokens < seq_max:
        errors.append(f"train.micro_batch_tokens: {tr.micro_batch_tokens} cannot hold one max-length sequence "
                      f"(rollout.max_prompt_tokens {ro.max_prompt_tokens} + rollout.max_response_tokens "
                      f"{ro.max_response_tokens} = {seq_max}); use >= {seq_max}")
    if cfg.algorithm.overlong_buffer and cfg.algorithm.overlong_buffer >= ro.max_response_tokens:
        errors.append(f"algorithm.overlong_buffer: {cfg.algorithm.overlong_buffer} >= rollout.max_response_tokens "
                      f"{ro.max_response_tokens} would penalise every answer; use a smaller window or 0")
    if not 0 < ro.gpu_memory_utilization < 1:
        errors.append(f"rollout.gpu_memory_utilization: {ro.gpu_memory_utilization} must be in (0, 1)")
    per_rank = mini // dp if dp else 0
    n_micro = max(1, math.ceil(per_rank * seq_max / tr.micro_batch_tokens)) if per_rank else 0
    if dp and pp > 1 and n_micro < pp:
        warns.append(f"only ~{n_micro} micro-batches per update at PP {pp}: the pipeline bubble dominates; "
                     f"lower train.micro_batch_tokens or parallel.pp")
    return errors, warns, dict(world=world, dp=dp, layers=layers, answers=answers, mini=mini,
                               per_rank=per_rank, n_micro=n_micro, seq_max=seq_max)


def total_params(cfg: RecipeConfig, arch: ModelArch) -> int:
    """All parameters of the model (vocab padded for TP), embeddings and final norm included."""
    vpad = padded_vocab_size(arch.vocab_size, cfg.parallel.tp, cfg.model.make_vocab_size_divisible_by)
    out = 0 if arch.tie_word_embeddings else vpad * arch.hidden_size
    return arch.num_layers * arch.layer_params() + vpad * arch.hidden_size + out + arch.hidden_size


def checkpoint_gib(cfg: RecipeConfig, arch: ModelArch) -> float:
    """Size of one training checkpoint: the model in its training dtype (2 B/param bf16, 4 fp32)
    plus the optimizer's fp32 main params (bf16 only) and two Adam moments, unsharded on disk."""
    bf16 = cfg.train.bf16 is not False
    return total_params(cfg, arch) * ((2 + 12) if bf16 else (4 + 8)) / GiB


def memory(cfg: RecipeConfig, arch: ModelArch, f: dict) -> dict:
    """Per-GPU memory estimate in GiB (see the module docstring for every term)."""
    par, tr, ro = cfg.parallel, cfg.train, cfg.rollout
    tp, pp, dp = par.tp, par.pp, max(1, f["dp"])
    h, L_s = arch.hidden_size, max(f["layers"])
    vpad = padded_vocab_size(arch.vocab_size, tp, cfg.model.make_vocab_size_divisible_by)
    emb = vpad * h
    out = 0 if (arch.tie_word_embeddings and pp == 1) else vpad * h
    lp = arch.layer_params()
    first = f["layers"][0] * lp + emb + (out + h if pp == 1 else 0)
    last = f["layers"][-1] * lp + out + h + (emb if pp == 1 else 0)
    mid = L_s * lp
    p_gpu = max(first, last, mid) / tp
    bf16 = tr.bf16 is not False
    s = tp if par.sequence_parallel else 1
    t = min(tr.micro_batch_tokens, max(1, f["per_rank"]) * f["seq_max"])
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    A = 2 * t * (5 * h / s + (2 * q + 2 * kv + 3 * arch.ffn_hidden_size) / tp)
    if cfg.model.transformer_impl == "local":  # unfused attention keeps scores+probs+mask: ~5 B/score
        A += 5 * t * min(t, f["seq_max"]) * arch.num_attention_heads / tp
    in_flight = min(pp, max(1, f["n_micro"]))
    if cfg.model.recompute == "full":
        act = in_flight * L_s * 2 * t * h / s + 2 * A
    else:
        act = in_flight * L_s * A + A
    vllm_share = ro.gpu_memory_utilization * cfg.cluster.gpu_memory_gb * GiB
    m = {
        "weights": (2 if bf16 else 4) * p_gpu,
        "grads": 4 * p_gpu,
        "optimizer": (12 if bf16 else 8) * p_gpu / (dp if par.distributed_optimizer else 1),
        "activations": act,
        "logits": 3 * LOGPROB_CHUNK_TOKENS * vpad / tp * 4,
        "vllm_train": vllm_share if not ro.sleep_mode else VLLM_ASLEEP_GIB * GiB,
        "vllm_rollout": vllm_share,
        "sync": 2 * ro.sync_bucket_mb * 2 ** 20,
        "slack": SLACK_GIB * GiB,
    }
    m = {k: v / GiB for k, v in m.items()}
    static = m["weights"] + m["grads"] + m["optimizer"]
    m["train_phase"] = static + m["activations"] + m["logits"] + m["vllm_train"] + m["slack"]
    m["rollout_phase"] = static + m["vllm_rollout"] + m["sync"] + m["slack"]
    m["peak"] = max(m["train_phase"], m["rollout_phase"])
    total = total_params(cfg, arch)
    m["total_params"] = total
    m["p_gpu"] = p_gpu
    m["micro_tokens"] = t
    # vLLM engine: its own bf16 weight copy per GPU, the rest of its share is KV cache.
    m["vllm_weights"] = 2 * total / ro.vllm_tp / GiB
    kv_bytes_tok = 2 * arch.num_layers * max(1, arch.num_kv_heads // ro.vllm_tp) * arch.head_dim * 2
    m["kv_gib"] = m["vllm_rollout"] - m["vllm_weights"] - 1.0
    m["kv_tokens"] = max(0, int(m["kv_gib"] * GiB / kv_bytes_tok))
    m["host_offload_gib"] = m["vllm_weights"] * cfg.cluster.gpus_per_node if ro.sleep_mode else 0.0
    return m


def dry_run(cfg: RecipeConfig, out=None) -> int:
    out = out or sys.stdout
    err = sys.stderr

    def say(s: str = "") -> None:
        print(s, file=out, flush=True)

    try:
        arch, source = _resolve(cfg)
    except (ConfigError, ValueError, OSError) as e:
        print(f"nft-train --dry-run: {e}", file=err)
        return 2
    errors, warns, f = check(cfg, arch)
    from megatron_nft.plan_run import check_inputs, print_time_plan

    in_errors, in_warns = check_inputs(cfg)  # model config, tokenizer, weight headers
    warns = in_warns + warns
    for e in in_errors:
        print(f"nft-train --dry-run: {e}", file=err)
    c, par, tr, ro = cfg.cluster, cfg.parallel, cfg.train, cfg.rollout
    for w in warns:
        print(f"[plan] warning: {w}", file=err)
    if errors or in_errors:
        for e in errors:
            print(f"nft-train --dry-run: invalid layout: {e}", file=err)
        return 2
    m = memory(cfg, arch, f)
    lp = arch.layer_params()
    engines = f["world"] // ro.vllm_tp
    gen_prompts = int(round(tr.prompts_per_step * ro.gen_batch_multiplier))
    say(f"[plan] model {arch.name}: {arch.num_layers} layers, hidden {arch.hidden_size}, ffn {arch.ffn_hidden_size}, "
        f"heads {arch.num_attention_heads}/{arch.num_kv_heads} kv, vocab {arch.vocab_size} ({source})")
    say(f"[plan] parameters {_num(m['total_params'])} ({_num(lp)} per layer); "
        f"{_num(m['p_gpu'])} per GPU on the largest stage")
    say(f"[plan] cluster {c.nodes} nodes x {c.gpus_per_node} GPUs = world {f['world']}; layout TP {par.tp} x PP {par.pp}"
        f" x DP {f['dp']}; layers per stage {','.join(map(str, f['layers']))}"
        f"{'; virtual PP ' + str(par.virtual_pp) if par.virtual_pp else ''}; recompute {cfg.model.recompute}"
        f"{'; sequence parallel' if par.sequence_parallel else ''}")
    say(f"[plan] rollout: {engines} vLLM engines x TP {ro.vllm_tp}; generation batch {gen_prompts} prompts x {ro.n} = "
        f"{gen_prompts * ro.n} answers per round (~{math.ceil(gen_prompts * ro.n / engines)} per engine), <= "
        f"{ro.max_refill_rounds} refill rounds; sleep mode {'on' if ro.sleep_mode else 'off'}")
    say(f"[plan] vLLM per GPU: weights {m['vllm_weights']:.1f} GiB, KV cache ~{m['kv_gib']:.1f} GiB = "
        f"{m['kv_tokens']:,} tokens per engine = ~{m['kv_tokens'] // f['seq_max']} max-length sequences")
    say(f"[plan] train batch: {tr.prompts_per_step} prompts x {ro.n} answers = {f['answers']} per rollout step; "
        f"{tr.updates_per_rollout} updates x {f['mini']} answers; {f['per_rank']} answers per DP rank per update "
        f"(<= {f['per_rank'] * f['seq_max']:,} tokens) -> ~{f['n_micro']} micro-batches of {tr.micro_batch_tokens} "
        f"tokens per update, ~{f['n_micro'] * tr.updates_per_rollout} per rollout step")
    say(f"[plan] tokens per step <= {f['answers'] * f['seq_max']:,} ({tr.prompts_per_step} x {ro.n} x "
        f"({ro.max_prompt_tokens} + {ro.max_response_tokens}))")
    if cfg.precision.fp8:
        say(f"[plan] precision.fp8 {cfg.precision.fp8}: needs Transformer Engine on CUDA (checked at start-up); "
            f"the estimate below assumes bf16 weights")
    prec = "bf16" if tr.bf16 is not False else "fp32"
    rows = [
        (f"weights ({prec}, /TP/PP)", m["weights"]),
        ("grads (fp32 grad buffer)", m["grads"]),
        (f"optimizer (12 B/param{' /DP' if par.distributed_optimizer else ''})", m["optimizer"]),
        (f"activations ({cfg.model.recompute} recompute, {m['micro_tokens']} tok/micro-batch)", m["activations"]),
        ("logits (chunked log-prob pass)", m["logits"]),
        ("vLLM while training" + (" (asleep)" if ro.sleep_mode else ""), m["vllm_train"]),
        ("vLLM while generating (gpu_memory_utilization)", m["vllm_rollout"]),
        ("weight-sync buckets (rollout)", m["sync"]),
        ("CUDA/NCCL context + slack", m["slack"]),
    ]
    say("[memory] per-GPU estimate (GiB):")
    for name, v in rows:
        say(f"[memory]   {name:<58} {v:8.2f}")
    say(f"[memory] training phase {m['train_phase']:.1f} GiB, rollout phase {m['rollout_phase']:.1f} GiB")
    if m["host_offload_gib"]:
        say(f"[memory] host RAM for sleeping vLLM weights: ~{m['host_offload_gib']:.0f} GiB per node")
    fits = m["peak"] <= c.gpu_memory_gb
    say(f"[memory] peak per GPU: {m['peak']:.1f} GiB of {c.gpu_memory_gb:g} GiB -> {'FITS' if fits else 'DOES NOT FIT'}")
    print_time_plan(say, cfg, arch, f, dict(m, ckpt_gib=checkpoint_gib(cfg, arch)))
    if m["kv_tokens"] < f["seq_max"]:
        print(f"nft-train --dry-run: rollout.gpu_memory_utilization: {ro.gpu_memory_utilization} leaves vLLM no room "
              f"for one {f['seq_max']}-token sequence after its {m['vllm_weights']:.1f} GiB weights; raise it or "
              f"rollout.vllm_tp", file=err)
        return 2
    if not fits:
        print(f"nft-train --dry-run: does not fit in cluster.gpu_memory_gb {c.gpu_memory_gb:g}: raise parallel.tp / "
              f"parallel.pp, set model.recompute: full, lower train.micro_batch_tokens or "
              f"rollout.gpu_memory_utilization", file=err)
        return 3
    say("[plan] OK")
    return 0
