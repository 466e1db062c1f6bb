"""Chunked (recomputing) log-probs vs. an independent plain-torch reference, without and with TP."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_nft.megatron.logprobs import chunked_logprobs, materialized_logprobs

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def make_inputs(n, h, v_padded, vocab_size, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g, dtype=torch.float64) * scale).to(dtype)
    weight = torch.randn(v_padded, h, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, vocab_size, (n,), generator=g)
    g_lp = torch.randn(n, generator=g, dtype=torch.float64)
    g_ent = torch.randn(n, generator=g, dtype=torch.float64)
    return hidden, weight, labels, g_lp, g_ent


def reference(hidden, weight, labels, vocab_size):
    """Independent reference: plain log_softmax over the real (unpadded) vocab columns."""
    logp = torch.log_softmax((hidden @ weight.T)[:, :vocab_size], dim=-1)
    return logp.gather(1, labels[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def grads(fn, hidden, weight, g_lp, g_ent=None, **kw):
    """Values and (hidden, weight) grads of <g_lp, logprob> + <g_ent, entropy>."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    lp, ent = fn(h, w, **kw)
    loss = (lp * g_lp.to(lp.dtype)).sum()
    if g_ent is not None:
        loss = loss + (ent * g_ent.to(ent.dtype)).sum()
    loss.backward()
    return lp.detach(), (ent.detach() if ent is not None else None), h.grad, w.grad


def ref_fn(labels, vocab_size):
    return lambda h, w: reference(h, w, labels, vocab_size)


def chk_fn(fn, labels, **kw):
    return lambda h, w: fn(h, w, labels, **kw)


def assert_close_all(got, want, dtype):
    for a, b in zip(got, want):
        if a is None:
            continue
        torch.testing.assert_close(a, b.to(a.dtype), **TOL[dtype])


# ------------------------------------------------------------------------- no TP
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,chunk", [(37, 8), (37, 37), (37, 1000), (1, 4), (64, 7)])
@pytest.mark.parametrize("padded", [False, True])
def test_values_and_grads_match_reference(dtype, n, chunk, padded):
    v_pad, vocab = (96, 90) if padded else (96, 96)
    hidden, weight, labels, g_lp, g_ent = make_inputs(n, 16, v_pad, vocab, dtype, scale=0.5)
    want = grads(ref_fn(labels, vocab), hidden, weight, g_lp, g_ent)
    for fn in (chunked_logprobs, materialized_logprobs):
        got = grads(chk_fn(fn, labels, vocab_size=vocab, chunk_tokens=chunk,
                           compute_entropy=True), hidden, weight, g_lp, g_ent)
        assert_close_all(got, want, dtype)
        assert got[0].dtype == dtype
        if padded:  # padding rows of the weight get exactly zero gradient
            assert torch.count_nonzero(got[3][vocab:]) == 0


def test_logprob_only_grads_and_padding_label_free():
    hidden, weight, labels, g_lp, _ = make_inputs(50, 8, 40, 33, torch.float64)
    want = grads(ref_fn(labels, 33), hidden, weight, g_lp)
    got = grads(chk_fn(chunked_logprobs, labels, vocab_size=33, chunk_tokens=16),
                hidden, weight, g_lp)
    assert got[1] is None
    assert_close_all(got, want, torch.float64)
    # mass sums to one over the real vocab
    full = torch.stack([chunked_logprobs(hidden, weight, torch.full((50,), t), vocab_size=33)[0]
                        for t in range(33)], 1)
    torch.testing.assert_close(full.exp().sum(1), torch.ones(50, dtype=torch.float64))


def test_entropy_only_gradient_and_gradcheck():
    hidden, weight, labels, _, g_ent = make_inputs(9, 5, 12, 10, torch.float64)
    want = grads(ref_fn(labels, 10), hidden, weight, g_ent * 0, g_ent)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    _, ent = chunked_logprobs(h, w, labels, vocab_size=10, chunk_tokens=4, compute_entropy=True)
    (ent * g_ent).sum().backward()
    torch.testing.assert_close(h.grad, want[2], **TOL[torch.float64])
    torch.testing.assert_close(w.grad, want[3], **TOL[torch.float64])

    def f(h, w):
        return chunked_logprobs(h, w, labels, vocab_size=10, chunk_tokens=4, compute_entropy=True)
    assert torch.autograd.gradcheck(f, (hidden.clone().requires_grad_(),
                                        weight.clone().requires_grad_()))


def test_large_logits_are_stable_and_leading_dims():
    hidden, weight, labels, _, _ = make_inputs(24, 8, 30, 30, torch.float32, scale=30.0)
    lp, ent = chunked_logprobs(hidden.view(4, 6, 8), weight, labels.view(4, 6),
                               chunk_tokens=5, compute_entropy=True)
    assert lp.shape == (4, 6) and torch.isfinite(lp).all() and torch.isfinite(ent).all()
    want_lp, want_ent = reference(hidden.double(), weight.double(), labels, 30)
    torch.testing.assert_close(lp.reshape(-1), want_lp.float(), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ent.reshape(-1), want_ent.float(), atol=1e-3, rtol=1e-3)


def test_forward_saves_no_logits():
    """Only per-token scalars and the inputs are kept for backward: nothing of size N x V."""
    n, h, v = 64, 8, 500
    hidden, weight, labels, _, _ = make_inputs(n, h, v, v, torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):
        lp, ent = chunked_logprobs(hidden, weight, labels, chunk_tokens=16, compute_entropy=True)
    assert saved and max(saved) <= max(n * h, v * h) < n * v
    (lp.sum() + ent.sum()).backward()


def test_no_grad_frozen_weight_and_bf16():
    hidden, weight, labels, g_lp, _ = make_inputs(40, 16, 64, 60, torch.float32)
    with torch.no_grad():
        lp, _ = chunked_logprobs(hidden, weight, labels, vocab_size=60, chunk_tokens=7)
    torch.testing.assert_close(lp, reference(hidden, weight, labels, 60)[0], **TOL[torch.float32])
    h = hidden.clone().requires_grad_()
    lp, _ = chunked_logprobs(h, weight, labels, vocab_size=60, chunk_tokens=7)
    (lp * g_lp.float()).sum().backward()
    torch.testing.assert_close(h.grad, grads(ref_fn(labels, 60), hidden, weight, g_lp)[2],
                               **TOL[torch.float32])
    # bf16 inputs: same numerics as the materialised path (bf16 matmul, fp32 softmax)
    hb, wb = hidden.bfloat16(), weight.bfloat16()
    a = grads(chk_fn(chunked_logprobs, labels, vocab_size=60, chunk_tokens=7), hb, wb, g_lp)
    b = grads(chk_fn(materialized_logprobs, labels, vocab_size=60), hb, wb, g_lp)
    assert a[0].dtype == torch.float32 and a[2].dtype == a[3].dtype == torch.bfloat16
    for x, y in zip((a[0], a[2], a[3]), (b[0], b[2], b[3])):
        torch.testing.assert_close(x.float(), y.float(), atol=2e-2, rtol=2e-2)


def test_bad_arguments():
    hidden, weight, labels, _, _ = make_inputs(4, 8, 10, 10, torch.float32)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_logprobs(hidden, weight, labels, chunk_tokens=0)
    with pytest.raises(ValueError, match="hidden size"):
        chunked_logprobs(hidden[:, :4], weight, labels)
    with pytest.raises(ValueError, match="labels shape"):
        chunked_logprobs(hidden, weight, labels[:3])


# ------------------------------------------------------------------------- TP = 2 (gloo)
TP_CASES = [  # (n, H, padded vocab, true vocab, chunk, dtype)
    (37, 16, 96, 96, 8, torch.float64),     # even split, no padding
    (37, 16, 96, 90, 10, torch.float64),    # padding on the last shard
    (37, 16, 96, 40, 6, torch.float64),     # last shard is ALL padding
    (29, 16, 64, 61, 1000, torch.float32),  # one chunk, fp32
]


def _close(a, b, atol, rtol):
    """assert_close without torch.testing (which imports torch.distributed.tensor, ~6 s, once
    a process group exists)."""
    b = b.to(a.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"max abs diff {(a - b).abs().max()}"


def _tp_worker(rank, world, port, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 processes on a 2-core box: avoid oversubscription
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        group = dist.new_group([0, 1])
        for n, h, v_pad, vocab, chunk, dtype in TP_CASES:
            hidden, weight, labels, g_lp, g_ent = make_inputs(n, h, v_pad, vocab, dtype, scale=0.5)
            want = grads(ref_fn(labels, vocab), hidden, weight, g_lp, g_ent)
            v_loc = v_pad // world
            shard = weight[rank * v_loc:(rank + 1) * v_loc]
            for fn in (chunked_logprobs, materialized_logprobs):
                lp, ent, gh, gw = grads(
                    chk_fn(fn, labels, tp_group=group, vocab_start=rank * v_loc,
                           vocab_size=vocab, chunk_tokens=chunk, compute_entropy=True),
                    hidden, shard, g_lp, g_ent)
                tol = TOL[dtype]
                _close(lp, want[0].to(dtype), **tol)
                _close(ent, want[1].to(dtype), **tol)
                _close(gh, want[2], **tol)   # FULL hidden grad on each rank
                _close(gw, want[3][rank * v_loc:(rank + 1) * v_loc], **tol)
            # reduce_hidden_grad=False: partial grads that sum to the full one
            _, _, gh_part, _ = grads(
                chk_fn(chunked_logprobs, labels, tp_group=group, vocab_start=rank * v_loc,
                       vocab_size=vocab, chunk_tokens=chunk, reduce_hidden_grad=False),
                hidden, shard, g_lp)
            dist.all_reduce(gh_part, group=group)
            _close(gh_part, grads(ref_fn(labels, vocab), hidden, weight,
                                                      g_lp)[2], **TOL[dtype])
        with open(os.path.join(outdir, f"rank{rank}.done"), "w") as f:
            f.write(str(len(TP_CASES)))  # every case checked on this rank
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tp2_matches_single_process_reference(tmp_path):
    # each rank raises on the first mismatch (mp.spawn re-raises it here) and records the
    # number of cases it checked only after all of them passed
    mp.spawn(_tp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.done").read_text() == str(len(TP_CASES))
