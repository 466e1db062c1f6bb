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
              model + optimizer, not the loss; hf-amp feeds it bf16 hidden/weight so that its
              backward GEMMs are bf16 too) and clip grads at 1.0 like ours. Without a usable
              transformers (or if its Qwen2 fails to build), RefQwen2 replaces HF (rows say so).
              Ratios: best of ``--steps`` timed steps after ``--warmup``, all from this run.
* ``logprob`` chunked (recomputing) vs. materialised log-probs, T=16k V=152k H=3584 bf16 (GPU):
              runs ``benchmarks/logprob_memory.py``'s workers (max_memory_allocated, time).

    python benchmarks/gpu_step_bench.py                      # cuda, everything (~4 min on H100)
    python benchmarks/gpu_step_bench.py --device cpu --tiny  # CPU smoke of the same code
    python benchmarks/gpu_step_bench.py --shape qwen2.5-0.5b --samples 8 --parts step
    (qwen2.5-7b does not fit one GPU here: fp32 main weights + Adam + bf16 weights + fp32 grads
    are ~18 bytes/param = ~137 GB before activations, for ours and for hf-amp alike)

Prints a table per part (with its time) and a markdown block to paste into benchmarks/RESULTS.md.
Every worker (and log-prob variant) runs under ``--worker-timeout``; a failed one is a FAILED row
and the rest goes on. On SIGTERM (gpu_check.sh's time limit) the results so far are printed.
Exit code 1 if the fp32 equivalence check fails or anything failed, else 0.
"""
import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from step_workers import GIB, SHAPES, WORKERS, hf_config  # noqa: E402
from ref_models import reference_kind, transformers_problem  # noqa: E402



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
    for line in (p.stderr or "").splitlines():
        if "WARNING" in line:
            print(f"  [{name}] {line.strip()[:400]}", flush=True)
    print(f"  [{name}] done in {wall:.0f} s", flush=True)
    return r


LOGPROB_BENCH = os.path.join(ROOT, "benchmarks", "logprob_memory.py")


def run_logprob_variant(args, variant: str, timeout: int) -> dict:
    """One ``benchmarks/logprob_memory.py --worker`` run (same command line as its own
    ``run_variant``, which has no timeout: a hung CUDA worker would eat the whole budget)."""
    cuda = args.device == "cuda"
    cmd = [sys.executable, LOGPROB_BENCH, "--worker", variant, "--device", args.device,
           "--dtype", "bfloat16" if cuda else "float32", "--tokens", str(args.lp_tokens),
           "--vocab", str(args.lp_vocab), "--hidden", str(args.lp_hidden), "--repeats", "2",
           "--threads", "0"]
    failed = dict(variant=variant, extra=None, time=None, cpu=None, check=None)
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        print(f"  [logprob {variant}] TIMED OUT after {timeout} s", flush=True)
        return dict(failed, error=f"timeout after {timeout} s")
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0 or not last.startswith("{"):
        tail = (out.stderr or out.stdout)[-2000:]
        print(f"  [logprob {variant}] FAILED (exit {out.returncode}):\n{tail}", flush=True)
        err = tail.strip().splitlines()[-1] if tail.strip() else "?"
        return dict(failed, error=f"exit {out.returncode}: {err}")
    r = json.loads(last)
    print(f"  [logprob {variant}] extra {r['extra'] / GIB:.2f} GiB, {r['time']:.3f} s "
          f"(process {time.perf_counter() - t:.0f} s)", flush=True)
    return r


def part_logprob(args) -> dict:
    return {v: run_logprob_variant(args, v, args.worker_timeout)
            for v in ("inputs", "materialized", "chunked-1024", "chunked-4096")}


def summarize_step(args, res: dict, cfg: dict) -> tuple[list, list]:
    from megatron_nft.megatron.precision import model_flops_per_token, peak_flops

    tokens = args.samples * args.seq
    fpt = model_flops_per_token(cfg, args.seq)
    peak = peak_flops(args.device_name) if args.device == "cuda" else None

    def best_tps(name):
        r = res.get(name) or {}
        return tokens / min(r["times"]) if r.get("times") else None

    def ref_label(r):  # per row: a worker may have fallen back to RefQwen2 on its own
        kind = r.get("reference") or reference_kind()
        return ("HF" if kind == "hf" else "RefQwen2 (no usable transformers)" if kind == "ref"
                else f"RefQwen2 [{kind}]")

    base_tps, amp_tps = best_tps("hf-bf16"), best_tps("hf-amp")
    rows, md = [], []
    adam = "fused AdamW" if args.device == "cuda" else "AdamW"
    if args.bf16:
        labels = {"ours": "ours: megatron-core sdpa, bf16 + fp32 main, dist-opt",
                  "hf-bf16": "{ref} sdpa, bf16 weights, " + adam,
                  "hf-amp": "{ref} sdpa, fp32 weights + autocast bf16, " + adam}
    else:
        labels = {"ours": "ours: megatron-core sdpa, fp32, dist-opt",
                  "hf-bf16": "{ref} sdpa, fp32 weights, " + adam,
                  "hf-amp": "{ref} sdpa, fp32 weights (no autocast: --no-bf16), " + adam}
    for name in ("ours", "hf-bf16", "hf-amp"):
        r = res.get(name)
        if r is None:
            continue
        labels[name] = labels[name].format(ref=ref_label(r))
        if "error" in r:
            rows.append(f"{labels[name]:<62} FAILED: {r['error'][:120]}")
            md.append(f"| {labels[name]} | failed: {r['error'][:80]} | | | | | |")
            continue
        t = min(r["times"])
        med = sorted(r["times"])[len(r["times"]) // 2]
        tps = tokens / t
        tflops = tps * fpt / 1e12
        m = tps * fpt / peak if peak else float("nan")
        ratio = tps / base_tps if base_tps else float("nan")
        ratio_amp = tps / amp_tps if amp_tps else float("nan")
        rows.append(f"{labels[name]:<62} {t:8.3f} s (median {med:.3f}) {tps:10.0f} tok/s "
                    f"{tflops:8.1f} TFLOP/s MFU {m:6.1%} peak {r['peak_gib']:6.1f} GiB  "
                    f"x{ratio:.2f} vs hf-bf16, x{ratio_amp:.2f} vs hf-amp"
                    f"  [{r.get('optimizer', '')}; skipped={r.get('skipped', 0)}; "
                    f"build {r.get('build_s', 0):.0f} s, process {r.get('wall_s', 0):.0f} s]")
        md.append(f"| {labels[name]} | {tps:,.0f} | {tflops:.1f} | "
                  f"{'n/a' if math.isnan(m) else f'{m:.1%}'} | {r['peak_gib']:.1f} | {ratio:.2f} | "
                  f"{ratio_amp:.2f} |")
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

    # `timeout` (gpu_check.sh) sends SIGTERM: print what was measured before going down
    signal.signal(signal.SIGTERM, _on_sigterm)
    args.device_name = (torch.cuda.get_device_name() if cuda
                        else f"CPU ({os.cpu_count()} cores)")
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    date = datetime.date.today().isoformat()
    t_all = time.perf_counter()
    # decide the reference once, here, so that every worker uses the same one
    kind = reference_kind()
    os.environ["NFT_BENCH_REFERENCE"] = kind
    why = transformers_problem() if kind == "ref" else ""
    print(f"gpu_step_bench on {args.device_name}, torch {torch.__version__}, reference={kind} "
          f"({'HF transformers' if kind == 'hf' else 'plain-torch RefQwen2 stands in for HF'}), "
          f"date {date}", flush=True)
    if why:
        print(f"!!! NOTE: HF transformers is not used: {why}. The 'HF' rows below are RefQwen2, "
              "a plain-torch Qwen2 (same shapes/ops; not HF's code).", flush=True)
    failed = False
    md = [f"### {args.device_name} -- {date} (torch {torch.__version__}, "
          f"benchmarks/gpu_step_bench.py{' --tiny' if args.tiny else ''})", ""]
    timings = []
    try:
        for part in parts:
            t_part = time.perf_counter()
            fn = {"equiv": _part_equiv, "step": _part_step, "logprob": _part_logprob}.get(part)
            if fn is None:
                print(f"unknown part {part!r} (equiv, step, logprob)", flush=True)
                failed = True
                continue
            try:  # one part's crash (a bug here, not a worker's failure) must not end the run
                failed |= fn(args, md)
            except _Interrupted:
                raise
            except Exception as e:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                failed = True
                print(f"  part {part} FAILED: {type(e).__name__}: {e}", flush=True)
                md += [f"{part}: FAILED ({type(e).__name__}: {str(e)[:120]})", ""]
            timings.append(f"{part} {time.perf_counter() - t_part:.0f} s")
            print(f"  -- part {part}: {time.perf_counter() - t_part:.0f} s "
                  f"(total so far {time.perf_counter() - t_all:.0f} s)", flush=True)
    except _Interrupted as e:
        failed = True
        print(f"\n!!! INTERRUPTED ({e}) after {time.perf_counter() - t_all:.0f} s: printing what "
              "was measured so far", flush=True)
        md += [f"(run interrupted: {e}; later parts missing, the current one partial)", ""]
    print(f"\n(total {time.perf_counter() - t_all:.0f} s: {', '.join(timings)})\n\n"
          "---- markdown for benchmarks/RESULTS.md ----")
    print("\n".join(md), flush=True)
    return 1 if failed else 0


class _Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):
    # `timeout` signals the child and then its whole process group: ignore the second one, which
    # would otherwise interrupt the printing of the partial results
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Interrupted(f"signal {signum}, time limit")


def _part_equiv(args, md: list) -> bool:
    cuda = args.device == "cuda"
    print("\n== equivalence: MegatronPolicy.compute_logprobs vs reference on exported weights",
          flush=True)
    r = run_worker(args, "equiv", args.worker_timeout)
    if "error" in r:
        md += [f"equivalence check: FAILED ({r['error'][:120]})", ""]
        return True
    tol32 = 1e-3 if cuda else 1e-4
    ok = r["fp32"]["max_abs"] <= tol32
    line = (f"fp32: max |dlogp| {r['fp32']['max_abs']:.2e} (tol {tol32:g}), mean "
            f"{r['fp32']['mean_abs']:.2e} over {r['fp32']['tokens']} tokens "
            f"(mean logp {r['fp32']['mean_logprob']:.2f}) -> {'PASS' if ok else 'FAIL'}")
    if "bf16" in r:
        b = r["bf16"]
        line += (f"; bf16: max {b['max_abs']:.3f}, mean {b['mean_abs']:.4f} "
                 f"({'ok' if b['mean_abs'] < 0.05 else 'LARGE'})")
    print(f"  reference={r['reference']}: {line}", flush=True)
    md += [f"Log-prob equivalence (policy vs {r['reference']} on exported weights): {line}", ""]
    return not ok


def _part_step(args, md: list) -> bool:
    from megatron_nft.megatron.precision import model_flops_per_token

    cfg = hf_config(args.shape)
    print(f"\n== training step: shape {args.shape}, seq {args.seq}, {args.samples} sequences "
          f"= {args.samples * args.seq} tokens/step, micro-batch {args.micro_batch_tokens} "
          f"tokens, {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    res, failed = {}, False
    try:
        for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
            res[v] = run_worker(args, v, args.worker_timeout)
            failed |= "error" in res[v]
    finally:  # also when interrupted: the rows measured so far
        rows, mdrows = summarize_step(args, res, cfg)
        print("\n".join(rows), flush=True)
        md += [f"Training step, {args.shape} shape, seq {args.seq}, {args.samples * args.seq} "
               f"tokens/step, micro-batch {args.micro_batch_tokens} tokens, min of {args.steps} "
               f"steps after {args.warmup} warm-up "
               f"({model_flops_per_token(cfg, args.seq) / 1e9:.2f} GFLOP/token, 6N + 12·L·h·s; "
               "MFU vs spec dense bf16 peak):", "",
               "| variant | tok/s | TFLOP/s | MFU | peak GiB | vs HF bf16 | vs HF amp |",
               "|---|---:|---:|---:|---:|---:|---:|"] + mdrows + [""]
    return failed


def _part_logprob(args, md: list) -> bool:
    cuda = args.device == "cuda"
    print(f"\n== log-probs: T={args.lp_tokens} V={args.lp_vocab} H={args.lp_hidden} "
          f"({'bf16' if cuda else 'fp32'}), fwd+bwd, peak extra memory", flush=True)
    res = part_logprob(args)
    failed = any(r.get("extra") is None for r in res.values())
    mat = res.get("materialized", {})
    have_mat = mat.get("extra") is not None
    floor = (res.get("inputs", {}) or {}).get("extra") or 0
    md += [f"Log-probs T={args.lp_tokens}, V={args.lp_vocab}, H={args.lp_hidden} "
           f"({'bf16' if cuda else 'fp32'}), fwd+bwd:", "",
           "| path | peak extra GiB | time s | memory vs materialised | time vs materialised |",
           "|---|---:|---:|---:|---:|"]
    for v in ("materialized", "chunked-1024", "chunked-4096"):
        r = res.get(v, {})
        if r.get("extra") is None:
            line = f"| {v} | failed: {str(r.get('error', '?'))[:80]} | | | |"
        else:
            mem = ((r["extra"] - floor) / max(mat["extra"] - floor, 1) if have_mat
                   else float("nan"))
            tr = r["time"] / mat["time"] if have_mat and mat["time"] else float("nan")
            line = (f"| {v} | {(r['extra'] - floor) / GIB:.2f} | {r['time']:.3f} | {mem:.2f} | "
                    f"{tr:.2f} |")
        print("  " + line, flush=True)
        md.append(line)
    md.append("")
    return failed


if __name__ == "__main__":
    sys.exit(main())
