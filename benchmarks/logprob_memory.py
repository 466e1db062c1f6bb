#!/usr/bin/env python
"""Peak extra memory and fwd+bwd time: chunked (recomputing) log-probs vs. materialised logits.

Each variant runs in its own fresh subprocess so that peaks don't leak between variants:

* CPU:  extra = ru_maxrss after the runs - RSS after allocating the inputs (torch's CPU allocations
        are invisible to tracemalloc, so we measure the process's resident set).
* CUDA: extra = torch.cuda.max_memory_allocated() - memory_allocated() after the inputs.

Variants: ``inputs`` (allocate only: the measurement floor), ``naive`` (plain
``log_softmax(h @ W.T).gather``), ``materialized`` (:func:`materialized_logprobs`) and
``chunked-C`` (:func:`chunked_logprobs` with ``chunk_tokens=C``). Every variant computes the same
loss ``sum(g * logprob)`` and its grads wrt hidden and weight; their checksums are cross-checked.

    python benchmarks/logprob_memory.py                      # CPU, T=4096 V=32768 H=512 fp32
    python benchmarks/logprob_memory.py --device cuda        # T=16384 V=152064 H=3584 bf16

Targets: chunked peak <= 1/4 of naive at <= 1.5x its time. Wall time is the target metric; process
CPU time is printed too (robust when other jobs share the CPU). Always exits 0 (a report).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEM_TARGET, TIME_TARGET = 0.25, 1.5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args) -> dict:
    """Run one variant in this (fresh) process; return a JSON-able result."""
    import torch
    sys.path.insert(0, ROOT)
    from megatron_nft.megatron.logprobs import chunked_logprobs, materialized_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = dev.type == "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=g, device=dev, dtype=dtype)
    weight = torch.randn(args.vocab, args.hidden, generator=g, device=dev, dtype=dtype)
    weight.mul_(args.hidden ** -0.5)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g, device=dev)
    gout = torch.randn(args.tokens, generator=g, device=dev, dtype=torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()

    v = args.worker
    if v == "naive":
        def fn():
            return torch.log_softmax((hidden @ weight.T).float(), -1).gather(
                1, labels[:, None]).squeeze(1)
    elif v == "materialized":
        def fn():
            return materialized_logprobs(hidden, weight, labels)[0]
    elif v.startswith("chunked-"):
        def fn():
            return chunked_logprobs(hidden, weight, labels, chunk_tokens=int(v.split("-")[1]))[0]
    else:
        fn = None

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times, cpu_times, lp = [], [], None
    if fn is not None:
        for i in range(args.repeats + 1):           # first run = warm-up (not timed)
            hidden.grad = weight.grad = None
            lp = None
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            lp = fn()
            (lp * gout).sum().backward()
            sync()
            if i:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    check = None                                     # after the peak: .double() copies
    if lp is not None:
        check = [float(lp.detach().double().sum()), float(hidden.grad.double().norm()),
                 float(weight.grad.double().norm())]
    return dict(variant=v, extra=max(0, peak - base),
                time=min(times) if times else 0.0, cpu=min(cpu_times) if cpu_times else 0.0,
                check=check)


def run_variant(args, variant) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant,
           "--device", args.device, "--dtype", args.dtype, "--tokens", str(args.tokens),
           "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"[{variant}] failed (exit {out.returncode}):\n{out.stderr[-2000:]}", flush=True)
        return dict(variant=variant, extra=None, time=None, cpu=None, check=None)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="float32 (cpu default) / bfloat16 (cuda default)")
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--chunks", default=None, help="comma list of chunk_tokens to try")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per variant (min: robust to load from other processes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    defaults = dict(dtype="bfloat16" if cuda else "float32", tokens=16384 if cuda else 4096,
                    vocab=152064 if cuda else 32768, hidden=3584 if cuda else 512,
                    chunks="1024,4096" if cuda else "256,512,1024")
    for k, val in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, val)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    mib = 1 << 20
    print(f"device={args.device} dtype={args.dtype} T={args.tokens} V={args.vocab} "
          f"H={args.hidden}; fp32 logits alone = {args.tokens * args.vocab * 4 / mib:.0f} MiB; "
          f"repeats={args.repeats}", flush=True)
    variants = ["inputs", "naive", "materialized"] + [f"chunked-{c}" for c in
                                                       args.chunks.split(",")]
    res = {}
    for v in variants:
        res[v] = run_variant(args, v)
        r = res[v]
        if r["extra"] is not None:
            print(f"  ran {v:<14} extra {r['extra'] / mib:9.1f} MiB  time {r['time']:.3f} s"
                  f"  cpu {r['cpu']:.3f} s", flush=True)

    naive = res["naive"]
    floor = res["inputs"]["extra"] or 0
    print(f"\n{'variant':<14} {'peak extra MiB':>15} {'mem / naive':>12} {'wall s':>9} "
          f"{'wall / naive':>13} {'cpu s':>9} {'cpu / naive':>12}")
    verdicts = []
    for v in variants[1:]:
        r = res[v]
        if r["extra"] is None or naive["extra"] is None:
            print(f"{v:<14} {'failed':>15}")
            continue
        mem_ratio = (r["extra"] - floor) / max(naive["extra"] - floor, 1)
        t_ratio = r["time"] / naive["time"] if naive["time"] else float("nan")
        c_ratio = r["cpu"] / naive["cpu"] if naive["cpu"] else float("nan")
        print(f"{v:<14} {(r['extra'] - floor) / mib:15.1f} {mem_ratio:12.3f} {r['time']:9.3f} "
              f"{t_ratio:13.2f} {r['cpu']:9.3f} {c_ratio:12.2f}")
        if v.startswith("chunked"):
            ok = mem_ratio <= MEM_TARGET and t_ratio <= TIME_TARGET
            verdicts.append(f"{v}: memory {mem_ratio:.3f}x naive, wall time {t_ratio:.2f}x "
                            f"(cpu time {c_ratio:.2f}x) naive -> {'MEETS' if ok else 'MISSES'} "
                            f"target (<= {MEM_TARGET}x memory at <= {TIME_TARGET}x wall time)")
    print(f"(measurement floor, inputs only: {floor / mib:.1f} MiB, subtracted above)\n")
    for line in verdicts:
        print(line)
    if not cuda:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall times on a "
              "shared box are noisy; cpu time (process CPU seconds) measures the work itself")

    checks = [r["check"] for v, r in res.items() if r.get("check")]
    if len(checks) > 1:
        worst = max(abs(a - b) / max(abs(b), 1e-12) for c in checks[1:] for a, b in
                    zip(c, checks[0]))
        print(f"cross-check (sum logprob, |grad h|, |grad W|) max relative diff: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
