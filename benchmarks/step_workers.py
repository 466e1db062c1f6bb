"""Worker processes of ``gpu_step_bench.py`` (each part runs in a fresh subprocess, so memory
peaks are clean): the log-prob equivalence check, our Megatron training step and the HF
baselines, plus the model shapes and device helpers they share."""
import contextlib
import os
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


from ref_models import build_reference_or_fallback, have, reference_kind  # noqa: E402


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

    from megatron_nft.types import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s = seq if not var_len else int(torch.randint(prompt_len + 2, seq + 1, (1,), generator=g))
        toks = torch.randint(0, vocab, (s,), generator=g).tolist()
        out.append(Sample(tokens=toks, prompt_len=prompt_len, correct=bool(i % 2), reward=float(i % 2),
                          r_hat=0.5, group=i // 4))
    return out


def hf_state_of(gpt) -> dict:
    """HF-named full tensors of a world-size-1 megatron model (exporter; mapping if no tqdm)."""
    if have("tqdm"):
        from megatron_nft.checkpoint.convert import export_model_to_hf_state

        return dict(export_model_to_hf_state([gpt]))
    from megatron_nft.checkpoint import mapping as M

    cfg = gpt.nft_arch
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
        used, ref, hidden, lm_w = build_reference_or_fallback(kind, cfg, dev, dtype)
        if used != kind:
            out["reference"] = kind = used
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
        fused = base.param_groups[0].get("fused") if getattr(base, "param_groups", None) else None
        return (f"{type(inner).__name__}/{type(base).__module__}.{type(base).__name__}"
                f"(fused={fused})")
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
    kind, model, hidden, lm_w = build_reference_or_fallback(kind, cfg, dev, param_dtype)
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
            w = lm_w()
            if amp and args.bf16:
                # bf16 log-prob GEMMs, like ours and like autocast's own lm_head Linear. Left to
                # autocast, the chunked Function would run its forward GEMM in bf16 but its
                # backward (outside autocast) in plain fp32 -- no tensor cores, no TF32: a
                # baseline slowed down by the loss, not by HF (and an fwd/bwd precision mismatch).
                # The casts are differentiable: grads still reach the fp32 weights.
                h, w = h.to(torch.bfloat16), w.to(torch.bfloat16)
            lp, _ = chunked_logprobs(h[:, :-1], w, ids[:, 1:], chunk_tokens=4096)
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
