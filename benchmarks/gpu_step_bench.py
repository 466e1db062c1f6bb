#!/usr/bin/env python
"""One-GPU performance check: our Megatron training step vs. HF transformers, log-prob memory,
and a log-prob equivalence check -- each part in a fresh subprocess (clean memory peaks).

Parts (``--parts``, default all):

* ``equiv``   MegatronPolicy.compute_logprobs (the trainer's forward-only pass: SDPA spec,
              chunked vocab log-probs) vs. an independent reference on the same weights (HF
              transformers Qwen2 when importable, else :class:`RefQwen2`, a plain-torch Qwen2
              written here). Weights go Megatron -> export_model_to_hf_state -> reference, so the
              exporter is checked too. fp32 (TF32 off; the pass/fail check) and bf16 (reported).
* ``step``    full training step (fwd + bwd + optimizer) on a Qwen2-shaped model built in code
              (default Qwen2.5-1.5B shape, seq 4096, micro-batch 8192 tokens):
                ours      MegatronPolicy.train_step, model.transformer_impl=sdpa, train.bf16=true
                          (bf16 compute, fp32 main weights, megatron DDP + distributed optimizer;
                          without TE/apex megatron falls back to torch Adam), NFT loss;
                hf-bf16   HF Qwen2 (sdpa attention, bf16 weights) + torch.optim.AdamW(fused=True)
                          -- pure bf16 weights (can't hold lr=1e-6 updates, DESIGN.md);
                hf-amp    HF Qwen2, fp32 weights + autocast(bf16) + fused AdamW -- the
                          like-for-like "fp32 main weights" baseline.
              Both HF variants use the same chunked log-prob loss as ours (so the comparison is
              model + optimizer, not the loss) and clip grads at 1.0 like ours. With no
              transformers, RefQwen2 replaces HF (rows say so).
* ``logprob`` chunked (recomputing) vs. materialised log-probs, T=16k V=152k H=3584 bf16 (GPU):
              runs ``benchmarks/logprob_memory.py``'s workers (max_memory_allocated, time).

    python benchmarks/gpu_step_bench.py                      # cuda, everything (~4 min on H100)
    python benchmarks/gpu_step_bench.py --device cpu --tiny  # CPU smoke of the same code
    python benchmarks/gpu_step_bench.py --shape qwen2.5-7b --samples 2 --parts step

Prints a table per part and a markdown block to paste into benchmarks/RESULTS.md. Exit code 1
if the fp32 equivalence check fails or a part crashed, else 0.
"""
import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# name: (hidden, layers, heads, kv_heads, head_dim, ffn, vocab, tied)
SHAPES = {
    "qwen2.5-0.5b": (896, 24, 14, 2, 64, 4864, 151936, True),
    "qwen2.5-1.5b": (1536, 28, 12, 2, 128, 8960, 151936, True),
    "qwen2.5-7b": (3584, 28, 28, 4, 128, 18944, 152064, False),
    "tiny": (128, 2, 4, 2, 32, 352, 1024, False),
    "equiv": (256, 4, 8, 2, 32, 704, 4096, False),     # equivalence check (both devices)
}
GIB = 1 << 30


def hf_config(shape: str, max_pos: int = 32768) -> dict:
    h, L, nq, nkv, d, f, v, tied = SHAPES[shape]
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h,
            "intermediate_size": f, "num_hidden_layers": L, "num_attention_heads": nq,
            "num_key_value_heads": nkv, "head_dim": d, "vocab_size": v, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": tied,
            "max_position_embeddings": max_pos, "hidden_act": "silu"}


from ref_models import build_reference, have, reference_kind  # noqa: E402


# ------------------------------------------------------------------ helpers
def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev):
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # process RSS peak


def make_recipe(args, *, bf16: bool):
    from megatron_nft.config import load_config

    sets = ["model.transformer_impl=sdpa", f"train.bf16={'true' if bf16 else 'false'}",
            f"train.micro_batch_tokens={args.micro_batch_tokens}", "train.lr=1e-6",
            "train.warmup_steps=0", "train.grad_clip=1.0", "parallel.distributed_optimizer=true",
            "algorithm.name=nft"]
    return load_config(None, sets)


def make_samples(n: int, seq: int, vocab: int, seed: int, *, prompt_len: int, var_len=False):
    import torch

    from megatron_nft.megatron.batches import TrainSample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s = seq if not var_len else int(torch.randint(prompt_len + 2, seq + 1, (1,), generator=g))
        toks = torch.randint(0, vocab, (s,), generator=g).tolist()
        out.append(TrainSample(tokens=toks, prompt_len=prompt_len, reward=float(i % 2),
                               correct_rate=0.5, group=i // 4))
    return out


def hf_state_of(gpt) -> dict:
    """HF-named full tensors of a world-size-1 megatron model (exporter; mapping if no tqdm)."""
    if have("tqdm"):
        from megatron_nft.checkpoint.convert import export_model_to_hf_state

        return dict(export_model_to_hf_state([gpt]))
    from megatron_nft.checkpoint import mapping as M

    cfg = M.MappingConfig.from_arch(gpt.nft_arch)
    return M.mcore_to_hf_state({(0, 0): dict(gpt.named_parameters())}, cfg)


# ------------------------------------------------------------------ workers
def worker_equiv(args) -> dict:
    """Policy log-probs vs. the reference on exported weights, fp32 then bf16."""
    import torch

    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.policy import MegatronPolicy

    info = parallel.init_distributed(1, 1, seed=0)
    dev = info.device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = hf_config("equiv", max_pos=4096)
    kind = reference_kind()
    out = {"reference": kind, "device": str(dev)}
    dtypes = [("fp32", False)] + ([("bf16", True)] if dev.type == "cuda" or args.cpu_bf16 else [])
    for label, bf16 in dtypes:
        torch.manual_seed(0)
        rec = make_recipe(args, bf16=bf16)
        rec.train.micro_batch_tokens = 1024
        policy = MegatronPolicy(rec, cfg, max_sequence_length=4096, training=False)
        with torch.no_grad():  # larger-than-init weights: peaked softmax, a sharper test
            for p in policy.gpt.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)
        samples = make_samples(8, 300, cfg["vocab_size"], seed=1, prompt_len=12, var_len=True)
        policy.compute_logprobs(samples, with_entropy=False)
        state = hf_state_of(policy.gpt)
        dtype = torch.bfloat16 if bf16 else torch.float32
        ref, hidden, lm_w = build_reference(kind, cfg, dev, dtype)
        missing, unexpected = ref.load_state_dict(state, strict=False)
        missing = [k for k in missing if "rotary" not in k and "inv_freq" not in k
                   and not (k == "lm_head.weight" and cfg["tie_word_embeddings"])]
        if missing or unexpected:
            raise RuntimeError(f"reference state mismatch: missing {missing} unexpected {unexpected}")
        diffs = []
        with torch.no_grad():
            ref.eval()
            for s in samples:
                ids = torch.tensor([s.tokens], device=dev)
                h = hidden(ids)[0].float()
                logp = torch.log_softmax(h @ lm_w().float().T, -1)
                lp = logp[s.prompt_len - 1: len(s.tokens) - 1].gather(
                    1, ids[0, s.prompt_len:, None]).squeeze(1)
                ours = torch.tensor(s.old_logprobs, device=dev, dtype=torch.float32)
                diffs.append((ours - lp).abs())
        d = torch.cat(diffs)
        out[label] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "tokens": d.numel(),
                      "mean_logprob": float(torch.cat([torch.tensor(s.old_logprobs) for s in samples]).mean())}
        del policy, ref
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    parallel.destroy()
    return out


def _time_steps(step, dev, warmup: int, steps: int) -> list:
    times = []
    for i in range(warmup + steps):
        _sync(dev)
        t = time.perf_counter()
        step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def worker_ours(args) -> dict:
    import torch

    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.policy import MegatronPolicy

    info = parallel.init_distributed(1, 1, seed=0)
    dev = info.device
    cfg = hf_config(args.shape, max_pos=max(4096, args.seq))
    rec = make_recipe(args, bf16=args.bf16)
    t0 = time.perf_counter()
    policy = MegatronPolicy(rec, cfg, total_updates=1000, max_sequence_length=args.seq)
    build_s = time.perf_counter() - t0
    samples = make_samples(args.samples, args.seq, cfg["vocab_size"], seed=2,
                           prompt_len=max(2, args.seq // 8))
    policy.compute_logprobs(samples, with_entropy=False)  # pi_old, so ratios are ~1
    _reset_peak(dev)
    metrics = {}

    def step():
        metrics.update(policy.train_step(samples))

    times = _time_steps(step, dev, args.warmup, args.steps)
    peak = _peak_gib(dev)
    n_params = sum(p.numel() for p in policy.gpt.parameters())
    parallel.destroy()
    return {"times": times, "peak_gib": peak, "build_s": build_s, "params": n_params,
            "loss": metrics.get("train/loss"), "grad_norm": metrics.get("train/grad_norm"),
            "skipped": metrics.get("train/update_skipped"),
            "optimizer": _optimizer_name(policy)}


def _optimizer_name(policy) -> str:
    try:
        opt = policy.optimizer
        inner = getattr(opt, "chained_optimizers", [opt])[0]
        base = getattr(inner, "optimizer", inner)
        return f"{type(inner).__name__}/{type(base).__module__}.{type(base).__name__}"
    except Exception:  # noqa: BLE001
        return "?"


def worker_hf(args) -> dict:
    """HF (or RefQwen2) + fused AdamW; ``--worker hf-bf16`` (bf16 weights) or ``hf-amp``."""
    import torch

    from megatron_nft.megatron.logprobs import chunked_logprobs

    dev = torch.device(args.device if args.device == "cpu" else "cuda")
    amp = args.worker.endswith("amp")
    cfg = hf_config(args.shape, max_pos=max(4096, args.seq))
    kind = reference_kind()
    torch.manual_seed(0)
    param_dtype = torch.float32 if (amp or not args.bf16) else torch.bfloat16
    t0 = time.perf_counter()
    model, hidden, lm_w = build_reference(kind, cfg, dev, param_dtype)
    model.train()
    build_s = time.perf_counter() - t0
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.1, fused=fused)
    samples = make_samples(args.samples, args.seq, cfg["vocab_size"], seed=2,
                           prompt_len=max(2, args.seq // 8))
    rows = max(1, args.micro_batch_tokens // args.seq)
    toks = torch.tensor([s.tokens for s in samples], device=dev)
    mbs = [toks[i:i + rows] for i in range(0, len(samples), rows)]
    n_tok = sum(len(s.tokens) - s.prompt_len for s in samples)
    autocast = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if amp and args.bf16
                else contextlib.nullcontext())
    metrics = {}

    def step():
        total = torch.zeros((), device=dev)
        for ids in mbs:
            with autocast:
                h = hidden(ids)
                lp, _ = chunked_logprobs(h[:, :-1], lm_w(), ids[:, 1:], chunk_tokens=4096)
            mask = torch.zeros_like(lp)
            mask[:, samples[0].prompt_len - 1:] = 1.0
            loss = -(lp * mask).sum() / n_tok
            loss.backward()
            total += loss.detach()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics.update(loss=total, grad_norm=gn)  # tensors: no extra host sync inside the step

    _reset_peak(dev)
    times = _time_steps(step, dev, args.warmup, args.steps)
    peak = _peak_gib(dev)
    return {"times": times, "peak_gib": peak, "build_s": build_s,
            "params": sum(p.numel() for p in model.parameters()), "reference": kind,
            "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
            "optimizer": f"torch.optim.AdamW(fused={fused})"}


WORKERS = {"equiv": worker_equiv, "ours": worker_ours, "hf-bf16": worker_hf, "hf-amp": worker_hf}


# ------------------------------------------------------------------ parent
def run_worker(args, name: str, timeout: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name] + args.passthrough
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        print(f"  [{name}] TIMED OUT after {timeout} s", flush=True)
        return {"error": f"timeout after {timeout} s"}
    wall = time.perf_counter() - t
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if p.returncode != 0 or not last.startswith("{"):
        tail = (p.stderr or p.stdout)[-3000:]
        print(f"  [{name}] FAILED (exit {p.returncode}, {wall:.0f} s):\n{tail}", flush=True)
        last_err = tail.strip().splitlines()[-1] if tail.strip() else "?"
        return {"error": f"exit {p.returncode}: {last_err}"}
    r = json.loads(last)
    r["wall_s"] = wall
    print(f"  [{name}] done in {wall:.0f} s", flush=True)
    return r


def load_logprob_bench():
    path = os.path.join(ROOT, "benchmarks", "logprob_memory.py")
    spec = importlib.util.spec_from_file_location("nft_logprob_memory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def part_logprob(args) -> dict:
    mod = load_logprob_bench()
    cuda = args.device == "cuda"
    ns = argparse.Namespace(device=args.device, dtype="bfloat16" if cuda else "float32",
                            tokens=args.lp_tokens, vocab=args.lp_vocab, hidden=args.lp_hidden,
                            repeats=2, threads=0)
    res = {}
    for v in ("inputs", "materialized", "chunked-1024", "chunked-4096"):
        res[v] = mod.run_variant(ns, v)
        r = res[v]
        if r.get("extra") is not None:
            print(f"  [logprob {v}] extra {r['extra'] / GIB:.2f} GiB, {r['time']:.3f} s", flush=True)
    return res


def summarize_step(args, res: dict, cfg: dict) -> tuple[list, list]:
    from megatron_nft.megatron.precision import model_flops_per_token, peak_flops

    tokens = args.samples * args.seq
    fpt = model_flops_per_token(cfg, args.seq)
    peak = peak_flops(args.device_name) if args.device == "cuda" else None
    base = res.get("hf-bf16", {})
    base_tps = tokens / min(base["times"]) if base.get("times") else None
    rows, md = [], []
    ref_label = "HF" if reference_kind() == "hf" else "RefQwen2 (no transformers)"
    adam = "fused AdamW" if args.device == "cuda" else "AdamW"
    if args.bf16:
        labels = {"ours": "ours: megatron-core sdpa, bf16 + fp32 main, dist-opt",
                  "hf-bf16": f"{ref_label} sdpa, bf16 weights, {adam}",
                  "hf-amp": f"{ref_label} sdpa, fp32 weights + autocast bf16, {adam}"}
    else:
        labels = {"ours": "ours: megatron-core sdpa, fp32, dist-opt",
                  "hf-bf16": f"{ref_label} sdpa, fp32 weights, {adam}",
                  "hf-amp": f"{ref_label} sdpa, fp32 weights (no autocast: --no-bf16), {adam}"}
    for name in ("ours", "hf-bf16", "hf-amp"):
        r = res.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"{labels[name]:<62} FAILED: {r['error'][:120]}")
            md.append(f"| {labels[name]} | failed: {r['error'][:80]} | | | | |")
            continue
        t = min(r["times"])
        tps = tokens / t
        tflops = tps * fpt / 1e12
        m = tps * fpt / peak if peak else float("nan")
        ratio = tps / base_tps if base_tps else float("nan")
        rows.append(f"{labels[name]:<62} {t:8.3f} s {tps:10.0f} tok/s {tflops:8.1f} TFLOP/s "
                    f"MFU {m:6.1%} peak {r['peak_gib']:6.1f} GiB  x{ratio:.2f} vs hf-bf16"
                    f"  [{r.get('optimizer', '')}; skipped={r.get('skipped', 0)}]")
        md.append(f"| {labels[name]} | {tps:,.0f} | {tflops:.1f} | "
                  f"{'n/a' if math.isnan(m) else f'{m:.1%}'} | {r['peak_gib']:.1f} | {ratio:.2f} |")
    return rows, md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes/steps (CPU smoke test)")
    p.add_argument("--parts", default="equiv,step,logprob")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES))
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--micro-batch-tokens", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="sequences per optimizer step")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--variants", default="ours,hf-bf16,hf-amp")
    p.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                   help="bf16 compute (default on cuda)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 (default on cpu)")
    p.add_argument("--cpu-bf16", action="store_true", help="also run the bf16 equivalence on CPU")
    p.add_argument("--lp-tokens", type=int, default=None)
    p.add_argument("--lp-vocab", type=int, default=None)
    p.add_argument("--lp-hidden", type=int, default=None)
    p.add_argument("--worker-timeout", type=int, default=300)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    small = args.tiny or not cuda
    defaults = dict(shape="tiny" if small else "qwen2.5-1.5b", seq=128 if small else 4096,
                    micro_batch_tokens=256 if small else 8192, samples=4, steps=2 if small else 5,
                    warmup=1 if small else 2, bf16=cuda,
                    lp_tokens=1024 if small else 16384, lp_vocab=8192 if small else 152064,
                    lp_hidden=128 if small else 3584)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.passthrough = ["--device", args.device, "--shape", args.shape, "--seq", str(args.seq),
                        "--micro-batch-tokens", str(args.micro_batch_tokens),
                        "--samples", str(args.samples), "--steps", str(args.steps),
                        "--warmup", str(args.warmup)] + (["--bf16"] if args.bf16 else ["--no-bf16"]) + \
        (["--cpu-bf16"] if args.cpu_bf16 else [])

    import torch

    if cuda and not torch.cuda.is_available():
        print("gpu_step_bench: --device cuda but torch.cuda.is_available() is False (use "
              "--device cpu --tiny for the CPU smoke test)", file=sys.stderr)
        return 2
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        if not cuda:
            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0

    args.device_name = (torch.cuda.get_device_name() if cuda
                        else f"CPU ({os.cpu_count()} cores)")
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    date = datetime.date.today().isoformat()
    t_all = time.perf_counter()
    print(f"gpu_step_bench on {args.device_name}, torch {torch.__version__}, "
          f"reference={reference_kind()} ({'transformers' if have('transformers') else 'transformers NOT installed: plain-torch RefQwen2 stands in for HF'}), "
          f"date {date}", flush=True)
    failed = False
    md = [f"### {args.device_name} -- {date} (torch {torch.__version__}, "
          f"benchmarks/gpu_step_bench.py{' --tiny' if args.tiny else ''})", ""]

    if "equiv" in parts:
        print("\n== equivalence: MegatronPolicy.compute_logprobs vs reference on exported weights",
              flush=True)
        r = run_worker(args, "equiv", args.worker_timeout)
        if "error" in r:
            failed = True
            md += [f"equivalence check: FAILED ({r['error'][:120]})", ""]
        else:
            tol32 = 1e-3 if cuda else 1e-4
            ok = r["fp32"]["max_abs"] <= tol32
            failed |= not ok
            line = (f"fp32: max |dlogp| {r['fp32']['max_abs']:.2e} (tol {tol32:g}), mean "
                    f"{r['fp32']['mean_abs']:.2e} over {r['fp32']['tokens']} tokens "
                    f"(mean logp {r['fp32']['mean_logprob']:.2f}) -> {'PASS' if ok else 'FAIL'}")
            if "bf16" in r:
                b = r["bf16"]
                line += (f"; bf16: max {b['max_abs']:.3f}, mean {b['mean_abs']:.4f} "
                         f"({'ok' if b['mean_abs'] < 0.05 else 'LARGE'})")
            print(f"  reference={r['reference']}: {line}", flush=True)
            md += [f"Log-prob equivalence (policy vs {r['reference']} on exported weights): {line}", ""]

    if "step" in parts:
        cfg = hf_config(args.shape)
        print(f"\n== training step: shape {args.shape}, seq {args.seq}, {args.samples} sequences "
              f"= {args.samples * args.seq} tokens/step, micro-batch {args.micro_batch_tokens} "
              f"tokens, {args.warmup} warm-up + {args.steps} timed steps", flush=True)
        res = {}
        for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
            res[v] = run_worker(args, v, args.worker_timeout)
            failed |= "error" in res[v]
        rows, mdrows = summarize_step(args, res, cfg)
        print("\n".join(rows), flush=True)
        from megatron_nft.megatron.precision import model_flops_per_token

        md += [f"Training step, {args.shape} shape, seq {args.seq}, {args.samples * args.seq} "
               f"tokens/step, micro-batch {args.micro_batch_tokens} tokens "
               f"({model_flops_per_token(cfg, args.seq) / 1e9:.2f} GFLOP/token, 6N + 12·L·h·s; "
               "MFU vs spec dense bf16 peak):", "",
               "| variant | tok/s | TFLOP/s | MFU | peak GiB | vs HF bf16 |",
               "|---|---:|---:|---:|---:|---:|"] + mdrows + [""]

    if "logprob" in parts:
        print(f"\n== log-probs: T={args.lp_tokens} V={args.lp_vocab} H={args.lp_hidden} "
              f"({'bf16' if cuda else 'fp32'}), fwd+bwd, peak extra memory", flush=True)
        try:
            res = part_logprob(args)
        except Exception as e:  # noqa: BLE001
            res = {}
            failed = True
            print(f"  logprob part FAILED: {type(e).__name__}: {e}", flush=True)
        mat = res.get("materialized", {})
        floor = (res.get("inputs", {}) or {}).get("extra") or 0
        if mat.get("extra") is not None:
            md += [f"Log-probs T={args.lp_tokens}, V={args.lp_vocab}, H={args.lp_hidden} "
                   f"({'bf16' if cuda else 'fp32'}), fwd+bwd:", "",
                   "| path | peak extra GiB | time s | memory vs materialised | time vs materialised |",
                   "|---|---:|---:|---:|---:|"]
            for v in ("materialized", "chunked-1024", "chunked-4096"):
                r = res.get(v, {})
                if r.get("extra") is None:
                    md.append(f"| {v} | failed | | | |")
                    failed = True
                    continue
                mem = (r["extra"] - floor) / max(mat["extra"] - floor, 1)
                tr = r["time"] / mat["time"] if mat["time"] else float("nan")
                line = (f"| {v} | {(r['extra'] - floor) / GIB:.2f} | {r['time']:.3f} | {mem:.2f} | "
                        f"{tr:.2f} |")
                print("  " + line, flush=True)
                md.append(line)
            md.append("")
        elif "logprob" in parts:
            failed = True

    print(f"\n(total {time.perf_counter() - t_all:.0f} s)\n\n---- markdown for benchmarks/RESULTS.md ----")
    print("\n".join(md))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
