"""``nft-logprobs`` (torchrun, gloo, real megatron-core) against HF transformers' log-probs on a
tiny random Qwen2 (GQA, QKV bias, untied embeddings, head_dim 32, fp32)."""
import json
import random

import pytest
import torch

from _dist_helpers import CONVERT, TORCHRUN, _run, free_port, run_python
from megatron_nft.testing import hf_logits, make_tiny_qwen2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lp")
    hf = make_tiny_qwen2(tmp / "hf", vocab=1100, hidden=64, layers=4, heads=4, kv_heads=2, head_dim=32)
    p = run_python(CONVERT, "hf-to-mcore", "--hf", hf, "--out", tmp / "mcore")
    assert p.returncode == 0, p.output
    rng = random.Random(1)
    seqs = [[rng.randrange(0, 1100) for _ in range(n)] for n in (2, 17, 5, 33, 9, 1, 24, 12)]
    inp = tmp / "in.jsonl"
    inp.write_text("".join(json.dumps({"tokens": s}) + "\n" for s in seqs))
    refs = [_reference(hf, s) if len(s) >= 2 else None for s in seqs]
    return tmp, hf, seqs, inp, refs


def _reference(hf, seq):
    ids = torch.tensor([seq])
    logp = torch.log_softmax(hf_logits(hf, ids)[0].double(), dim=-1)
    return logp[:-1].gather(-1, ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize("tp,pp,src", [(1, 1, "mcore"), (2, 1, "mcore"), (1, 2, "hf"), (2, 2, "mcore")])
def test_matches_hf(model_and_data, tp, pp, src):
    tmp, hf, seqs, inp, refs = model_and_data
    out = tmp / f"out_{tp}{pp}{src}.jsonl"
    ckpt = tmp / "mcore" if src == "mcore" else hf
    cmd = [TORCHRUN, "--nproc-per-node", str(tp * pp), "--master-port", str(free_port()), "-m", "tools.logprobs",
           "--ckpt", ckpt, "--tp", str(tp), "--pp", str(pp), "--input", inp, "--output", out,
           "--micro-batch-tokens", "48"]  # small budget: several micro-batches, packing exercised
    p = _run([str(c) for c in cmd], timeout=600)
    assert p.returncode == 0, p.output
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == len(seqs)
    for seq, row, ref in zip(seqs, rows, refs):
        assert len(row["logprobs"]) == max(len(seq) - 1, 0)
        if ref is None:
            continue
        got = torch.tensor(row["logprobs"], dtype=torch.float64)
        assert (got - ref).abs().max().item() <= 1e-4
