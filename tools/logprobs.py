"""``nft-logprobs``: score token sequences with the megatron policy (TP/PP) -- the tool to reach
for when vLLM's and megatron's log-probs disagree.

    torchrun --nproc-per-node 4 -m tools.logprobs --ckpt CKPT --tp 2 --pp 2 \\
        --input in.jsonl --output out.jsonl

Input lines ``{"tokens": [int, ...]}``; output lines, in the same order,
``{"logprobs": [float, ...]}`` with ``len(tokens) - 1`` entries: entry ``i`` is
``log p(tokens[i + 1] | tokens[:i + 1])``. ``CKPT`` is a megatron-nft checkpoint
(``nft-convert hf-to-mcore``; loads under any TP/PP) or an HF model directory.

Sequences are packed into token-budget micro-batches, run through megatron's pipeline
schedule (forward only), and the last stage computes vocab-parallel log-softmax in chunks of
tokens (never the full-vocab logits across TP, never fp32 logits for the whole batch).
Results are gathered over data-parallel ranks and written by rank 0 in input order.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nft-logprobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="megatron-nft checkpoint dir or HF model dir")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--input", required=True, help='jsonl, one {"tokens": [...]} per line')
    p.add_argument("--output", required=True, help='jsonl, one {"logprobs": [...]} per line')
    p.add_argument("--micro-batch-tokens", type=int, default=8192)
    p.add_argument("--chunk-sequences", type=int, default=4096,
                   help="sequences per scheduling round (bounds host memory)")
    p.add_argument("--bf16", action="store_true", help="bf16 weights (default: fp32 on CPU, bf16 on GPU)")
    p.add_argument("--transformer-impl", default="auto", choices=["auto", "local", "sdpa", "transformer_engine"])
    return p


def _read_tokens(path: str) -> list[list[int]]:
    if not os.path.isfile(path):
        raise SystemExit(f"nft-logprobs: --input {path!r} not found")
    seqs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            toks = row.get("tokens")
            if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
                raise SystemExit(f"nft-logprobs: {path}:{n}: expected {{\"tokens\": [int, ...]}}")
            seqs.append(toks)
    return seqs


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    import torch.distributed as dist
    from tqdm import tqdm

    from megatron_nft.config import load_config
    from megatron_nft.megatron.parallel import destroy, init_distributed
    from megatron_nft.megatron.policy import MegatronPolicy
    from megatron_nft.trainer import resolve_model
    from megatron_nft.types import Sample

    seqs = _read_tokens(args.input)
    sets = [f"model.hf_path={args.ckpt}", f"parallel.tp={args.tp}", f"parallel.pp={args.pp}",
            f"train.micro_batch_tokens={args.micro_batch_tokens}", f"model.transformer_impl={args.transformer_impl}"]
    if args.bf16:
        sets.append("train.bf16=true")
    cfg = load_config(None, sets)
    init_distributed(args.tp, args.pp, cfg.seed)
    try:
        _, hf_config = resolve_model(cfg)
        max_len = max((len(s) for s in seqs), default=1)
        policy = MegatronPolicy(cfg, hf_config, training=False, max_sequence_length=max(max_len, 1))
        policy.load_weights(args.ckpt)
        rank0 = dist.get_rank() == 0
        results: list[list[float]] = [[] for _ in seqs]
        scorable = [i for i, s in enumerate(seqs) if len(s) >= 2]
        bar = tqdm(total=len(scorable), desc="scoring", unit="seq", disable=not rank0, file=sys.stderr)
        for start in range(0, len(scorable), args.chunk_sequences):
            idx = scorable[start:start + args.chunk_sequences]
            samples = [Sample(tokens=seqs[i], prompt_len=1) for i in idx]
            policy.compute_logprobs(samples, with_entropy=False)
            policy.gather_response_values(samples, "old_logprobs")
            for i, s in zip(idx, samples):
                results[i] = s.old_logprobs
            bar.update(len(idx))
        bar.close()
        if rank0:
            tmp = args.output + ".tmp"
            with open(tmp, "w") as f:
                for lp in results:
                    f.write(json.dumps({"logprobs": lp}) + "\n")
            os.replace(tmp, args.output)
            print(f"nft-logprobs: wrote {len(results)} lines to {args.output}", file=sys.stderr)
    finally:
        destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
