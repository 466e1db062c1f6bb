#!/usr/bin/env python
"""GB/s of the Megatron -> rollout-engine weight export vs. a plain ``state_dict()`` copy.

Both paths end in the same place -- every tensor copied into a preallocated destination buffer
of its shape on ``--device`` (what a colocated engine's ``load_weights`` does) -- so the ratio
isolates what our path adds: TP all-gathers / PP broadcasts, the HF renaming and re-layout
(QKV de-grouping, fused gate/up split, vocab-padding trim), optional dtype cast and bucketing.

Rows (one model, one run):

* ``state_dict copy``   this rank's ``model.state_dict()`` copied tensor by tensor (baseline;
                        under TP/PP only the local shards: the floor of any sync);
* ``export``            ``export_model_to_hf_state(gather_to="all")`` -> copy;
* ``export+bucket``     the same stream through ``bucket_named_tensors(--bucket-mb)`` -> copy
                        (what :class:`~megatron_nft.rollout.base.RolloutEngine` syncs receive);
* ``export+cast+bucket`` (only with ``--engine-dtype`` != model dtype) ``cast_named_tensors``.

GB/s = bytes delivered / wall time (bytes of the full HF model for export rows, of the local
shards for the baseline). Every rank takes part; rank 0 prints.

    python benchmarks/weight_sync.py                            # CPU, ~60M-param Qwen2 shape
    torchrun --nproc-per-node 2 benchmarks/weight_sync.py --tp 2
    torchrun --nproc-per-node 2 benchmarks/weight_sync.py --pp 2
    python benchmarks/weight_sync.py --device cuda --shape qwen2.5-7b --dtype bfloat16
    python benchmarks/weight_sync.py --device cuda --hidden 1536 --layers 28 ...

Always exits 0 on success (a report, no targets).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# name: (hidden, layers, heads, kv_heads, head_dim, ffn, vocab, tied)
SHAPES = {
    "small": (512, 8, 8, 4, 64, 1536, 32000, False),           # ~58M params (CPU default)
    "tiny": (64, 2, 4, 2, 16, 128, 1000, False),               # seconds; smoke tests
    "qwen2.5-1.5b": (1536, 28, 12, 2, 128, 8960, 151936, True),
    "qwen2.5-7b": (3584, 28, 28, 4, 128, 18944, 152064, False),
}
_DT = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
       "float16": "float16", "fp16": "float16"}


def hf_config(args) -> dict:
    h, L, nq, nkv, d, f, v, tied = SHAPES[args.shape]
    h = args.hidden or h
    L = args.layers or L
    nq = args.heads or nq
    nkv = args.kv_heads or nkv
    d = args.head_dim or (d if not args.hidden else h // nq)
    f = args.ffn or (f if not args.hidden else int(round(h * 5.833 / 128)) * 128)
    v = args.vocab or v
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h,
            "intermediate_size": f, "num_hidden_layers": L, "num_attention_heads": nq,
            "num_key_value_heads": nkv, "head_dim": d, "vocab_size": v, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "tie_word_embeddings": tied, "max_position_embeddings": 4096,
            "hidden_act": "silu"}


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _barrier():
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def nbytes(t) -> int:
    return t.numel() * t.element_size()


def run(args) -> dict:
    import torch

    from megatron_nft.checkpoint.convert import export_model_to_hf_state
    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.model import build_gpt_model
    from megatron_nft.rollout.weight_sync import bucket_named_tensors, cast_named_tensors

    if args.threads:
        torch.set_num_threads(args.threads)
    info = parallel.init_distributed(args.tp, args.pp, seed=0)
    dev = info.device
    dtype = getattr(torch, _DT[args.dtype])
    engine_dtype = getattr(torch, _DT[args.engine_dtype]) if args.engine_dtype else dtype
    cfg = hf_config(args)
    t0 = time.perf_counter()
    model = build_gpt_model(cfg, transformer_impl="local", params_dtype=dtype,
                            perform_initialization=False)
    model.to(dev)
    with torch.no_grad():
        for p in model.parameters():  # deterministic, finite contents (init skipped for speed)
            p.fill_(0.01)
    build_s = time.perf_counter() - t0
    n_local = sum(p.numel() for p in model.parameters())

    def export(dt=None):
        return export_model_to_hf_state([model], gather_to="all", dtype=dt)

    # Destinations (allocated once, outside the timings): an HF-shaped "engine" and a copy of
    # the local state dict.
    dst_hf = {n: torch.empty_like(t) for n, t in export()}
    dst_hf_cast = ({n: torch.empty_like(t, dtype=engine_dtype) for n, t in dst_hf.items()}
                   if engine_dtype != dtype else None)
    sd = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    dst_sd = {k: torch.empty_like(v) for k, v in sd.items()}
    hf_bytes = sum(nbytes(t) for t in dst_hf.values())
    sd_bytes = sum(nbytes(t) for t in sd.values())
    bucket_bytes = int(args.bucket_mb * (1 << 20))

    def v_state_dict():
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if isinstance(v, torch.Tensor):
                    dst_sd[k].copy_(v)
        return sd_bytes, len(dst_sd), 0

    def v_export():
        n = 0
        for name, t in export():
            dst_hf[name].copy_(t)
            n += 1
        return hf_bytes, n, 0

    def v_export_bucket():
        n = nb = 0
        for bucket in bucket_named_tensors(export(), bucket_bytes):
            for name, t in bucket:
                dst_hf[name].copy_(t)
                n += 1
            nb += 1
        return hf_bytes, n, nb

    def v_export_cast_bucket():
        n = nb = 0
        stream = cast_named_tensors(export(), dtype=engine_dtype)
        for bucket in bucket_named_tensors(stream, bucket_bytes):
            for name, t in bucket:
                dst_hf_cast[name].copy_(t)
                n += 1
            nb += 1
        return sum(nbytes(t) for t in dst_hf_cast.values()), n, nb

    variants = [("state_dict copy", v_state_dict), ("export", v_export),
                ("export+bucket", v_export_bucket)]
    if dst_hf_cast is not None:
        variants.append((f"export+cast({_DT[args.engine_dtype]})+bucket", v_export_cast_bucket))
    res = {}
    for name, fn in variants:
        times = []
        for i in range(args.repeats + 1):  # first = warm-up
            _barrier()
            _sync(dev)
            t = time.perf_counter()
            b, n, nb = fn()
            _sync(dev)
            _barrier()
            if i:
                times.append(time.perf_counter() - t)
        res[name] = dict(bytes=b, tensors=n, buckets=nb, time=min(times))
    ok = all(torch.isfinite(t).all() for t in list(dst_hf.values())[:3])
    return dict(info=info, cfg=cfg, res=res, n_local=n_local, hf_bytes=hf_bytes,
                sd_bytes=sd_bytes, build_s=build_s, dtype=_DT[args.dtype], ok=bool(ok),
                device=str(dev))


def report(args, out) -> str:
    import torch

    info, res, cfg = out["info"], out["res"], out["cfg"]
    base = res["state_dict copy"]["time"]
    dev_name = (torch.cuda.get_device_name() if out["device"].startswith("cuda")
                else f"CPU ({os.cpu_count()} cores)")
    gib = 1 << 30
    lines = [
        f"device={dev_name} world={info.world_size} tp={info.tp} pp={info.pp} dp={info.dp} "
        f"dtype={out['dtype']} bucket={args.bucket_mb} MiB",
        f"model: hidden={cfg['hidden_size']} layers={cfg['num_hidden_layers']} "
        f"heads={cfg['num_attention_heads']}/{cfg['num_key_value_heads']} ffn={cfg['intermediate_size']} "
        f"vocab={cfg['vocab_size']} tied={cfg['tie_word_embeddings']}; local params "
        f"{out['n_local'] / 1e6:.1f}M ({out['sd_bytes'] / gib:.3f} GiB), HF export "
        f"{out['hf_bytes'] / gib:.3f} GiB; built in {out['build_s']:.1f} s",
        "",
        f"| {'path':<32} | {'tensors':>7} | {'buckets':>7} | {'GiB':>7} | {'time s':>8} | {'GB/s':>7} "
        f"| {'time / state_dict':>17} |",
        f"|{'-' * 34}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|{'-' * 8}:|{'-' * 18}:|",
    ]
    for name, r in res.items():
        gbs = r["bytes"] / r["time"] / 1e9 if r["time"] else float("nan")
        lines.append(f"| {name:<32} | {r['tensors']:>7} | {r['buckets'] or '-':>7} | "
                     f"{r['bytes'] / gib:7.3f} | {r['time']:8.4f} | "
                     f"{gbs:7.2f} | {r['time'] / base:17.2f} |")
    if not out["device"].startswith("cuda"):
        lines.append(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
                     "(wall times on a shared box are noisy; min over repeats)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda needs a GPU torch; cpu uses the gloo CPU path")
    p.add_argument("--shape", default="small", choices=sorted(SHAPES))
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None)
    p.add_argument("--ffn", type=int, default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dtype", default=None, help="model dtype: float32 (cpu default) / bfloat16 (cuda default)")
    p.add_argument("--engine-dtype", default=None, help="rollout-engine dtype (adds a cast row)")
    p.add_argument("--bucket-mb", type=float, default=512.0, help="rollout.sync_bucket_mb")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("weight_sync: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.device == "cpu" and torch.cuda.is_available():
        print("weight_sync: --device cpu on a GPU machine: re-run with CUDA_VISIBLE_DEVICES= "
              "set before python starts", file=sys.stderr)
        return 2
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_nft.megatron import parallel

    try:
        out = run(args)
        import torch.distributed as dist

        if dist.get_rank() == 0:
            print(report(args, out), flush=True)
    finally:
        parallel.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
