"""Tests for megatron_nft.algorithms against independent plain-Python references.

References below use only ``math`` on Python floats, element by element, with
hand-derived gradients; they never call the module's internals.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from megatron_nft.algorithms import (
    AGGREGATION_MODES,
    CORRECT_RATE_MAX,
    CORRECT_RATE_MIN,
    aggregate,
    filter_informative_groups,
    group_advantages,
    group_correct_rate,
    grpo_token_loss,
    nft_clip_fraction,
    nft_token_loss,
    rft_token_loss,
    tis_weights,
    token_loss_for,
)

R_MIN, R_MAX = 0.02, 0.98  # reference code's guard on r̂


# ----------------------------------------------------------------------------- references


def ref_nft(lp, olp, correct, r, eps, weighting, clamp):
    """(loss, d loss / d lp) for one token, straight from PAPER.md."""
    r = min(max(r, R_MIN), R_MAX)
    lr = lp - olp
    lrc = min(lr, clamp)
    live = 1.0 if lr < clamp else 0.0  # past the clamp R is constant
    R = math.exp(lrc)
    if weighting == "1-r":
        w = 1.0 - r
    elif weighting == "grpo":
        w = math.sqrt((1.0 - r) / r)
    else:
        w = 1.0
    if correct:
        loss, grad = -lrc, -live
    else:
        x = (1.0 - r * R) / (1.0 - r)
        v = max(x, eps)
        loss = -math.log(v)
        # d(-log v)/dlp with dv/dlp := dx/dlp = -r R / (1 - r)  (max_v keeps x's gradient)
        grad = live * (r * R / (1.0 - r)) / v
    return w * loss, w * grad


def ref_ppo(lp, olp, adv, lo, hi):
    R = math.exp(lp - olp)
    Rc = min(max(R, 1.0 - lo), 1.0 + hi)
    un, cl = R * adv, Rc * adv
    loss = -min(un, cl)
    if un <= cl or (1.0 - lo) < R < (1.0 + hi):
        grad = -R * adv  # unclipped branch active (or both equal and differentiable)
    else:
        grad = 0.0
    return loss, grad


def ref_groups(rewards, ids):
    groups = {}
    for r, g in zip(rewards, ids):
        groups.setdefault(g, []).append(r)
    return groups


# ----------------------------------------------------------------------------- NFT


def _nft_grid():
    """Rows = samples with varied r̂/correctness; columns = log-ratios incl. past the clamp."""
    log_ratios = [-3.0, -1.0, -0.2, 0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 12.0]
    rates = [0.5, 0.25, 0.75, 0.01, 0.99, 0.125, 0.5, 0.875]
    correct = [0, 0, 0, 0, 0, 1, 1, 1]
    g = torch.Generator().manual_seed(0)
    old = torch.randn(len(rates), len(log_ratios), generator=g, dtype=torch.float64) - 2.0
    lp = old + torch.tensor(log_ratios, dtype=torch.float64)
    return lp, old, correct, rates


@pytest.mark.parametrize("weighting", ["1-r", "grpo", "none"])
@pytest.mark.parametrize("epsilon", [1.0, 0.5, 1e-3])
@pytest.mark.parametrize("clamp", [10.0, 2.5])
def test_nft_values_and_gradients_match_reference(weighting, epsilon, clamp):
    lp, old, correct, rates = _nft_grid()
    lp = lp.clone().requires_grad_(True)
    loss = nft_token_loss(
        lp,
        old,
        torch.tensor(correct),
        torch.tensor(rates, dtype=torch.float64),
        epsilon=epsilon,
        weighting=weighting,
        log_ratio_clamp=clamp,
    )
    assert loss.shape == lp.shape
    loss.sum().backward()

    n_clipped = n_past_clamp = 0
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            lpv, olv = lp[b, t].item(), old[b, t].item()
            want, dwant = ref_nft(lpv, olv, correct[b], rates[b], epsilon, weighting, clamp)
            assert loss[b, t].item() == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert lp.grad[b, t].item() == pytest.approx(dwant, rel=1e-9, abs=1e-12)
            r = min(max(rates[b], R_MIN), R_MAX)
            x = (1 - r * math.exp(min(lpv - olv, clamp))) / (1 - r)
            n_clipped += (not correct[b]) and x < epsilon
            n_past_clamp += lpv - olv > clamp
    assert n_clipped > 0 and n_past_clamp > 0  # both special regions are exercised


def test_nft_clipped_region_gradient_is_that_of_x():
    # r̂ = 0.5, log R = 1 -> x = (1 - 0.5e)/0.5 < 0 < ε: value is -log ε, gradient of x kept.
    lp = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss = nft_token_loss(lp, old, torch.tensor([0]), torch.tensor([0.5], dtype=torch.float64),
                          epsilon=0.5, weighting="none")
    loss.sum().backward()
    assert loss.item() == pytest.approx(-math.log(0.5))
    # d/dlp [-log max_v(x)] = (r R / (1 - r)) / max(x, ε)
    assert lp.grad.item() == pytest.approx((0.5 * math.e / 0.5) / 0.5)


def test_nft_unclipped_negative_gradient_closed_form():
    # Unclipped region: d/dlogπ of −log((1−r̂R)/(1−r̂)) = r̂R/(1−r̂R).
    r, lr = 0.3, -0.4
    lp = torch.tensor([[lr]], dtype=torch.float64, requires_grad=True)
    loss = nft_token_loss(lp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([False]),
                          torch.tensor([r], dtype=torch.float64), weighting="none")
    loss.sum().backward()
    R = math.exp(lr)
    assert lp.grad.item() == pytest.approx(r * R / (1 - r * R), rel=1e-12)


def test_nft_correct_dtype_variants_and_constants():
    lp, old, correct, rates = _nft_grid()
    rates_t = torch.tensor(rates, dtype=torch.float64)
    outs = [
        nft_token_loss(lp, old, c, rates_t)
        for c in (torch.tensor(correct, dtype=torch.bool), torch.tensor(correct),
                  torch.tensor(correct, dtype=torch.float32))
    ]
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2])
    assert (CORRECT_RATE_MIN, CORRECT_RATE_MAX) == (R_MIN, R_MAX)


def test_nft_old_logprobs_and_rate_get_no_gradient():
    lp, old, correct, rates = _nft_grid()
    lp = lp.requires_grad_(True)
    old = old.clone().requires_grad_(True)
    rates_t = torch.tensor(rates, dtype=torch.float64, requires_grad=True)
    nft_token_loss(lp, old, torch.tensor(correct), rates_t).sum().backward()
    assert old.grad is None and rates_t.grad is None and lp.grad is not None


def test_nft_errors():
    lp = torch.zeros(2, 3)
    c, r = torch.tensor([1, 0]), torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"1-r.*grpo.*none"):
        nft_token_loss(lp, lp, c, r, weighting="std")
    for eps in (0.0, -1.0):
        with pytest.raises(ValueError, match="epsilon"):
            nft_token_loss(lp, lp, c, r, epsilon=eps)
    with pytest.raises(ValueError, match="old_logprobs"):
        nft_token_loss(lp, torch.zeros(2, 4), c, r)
    with pytest.raises(ValueError, match="correct_rate"):
        nft_token_loss(lp, lp, c, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="correct"):
        nft_token_loss(lp, lp, torch.tensor([1]), r)


def test_nft_clip_fraction_matches_count():
    lp, old, correct, rates = _nft_grid()
    mask = torch.ones_like(lp)
    mask[:, -2:] = 0
    eps = 0.5
    got = nft_clip_fraction(lp, old, torch.tensor(correct), torch.tensor(rates), mask, eps, 10.0)
    neg = clipped = 0
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if correct[b] or mask[b, t] == 0:
                continue
            r = min(max(rates[b], R_MIN), R_MAX)
            x = (1 - r * math.exp(min(lp[b, t].item() - old[b, t].item(), 10.0))) / (1 - r)
            neg += 1
            clipped += x < eps
    assert 0 < clipped < neg
    assert got.item() == pytest.approx(clipped / neg)
    none = nft_clip_fraction(lp, old, torch.ones(lp.shape[0]), torch.tensor(rates), mask)
    assert none.item() == 0.0


# ----------------------------------------------------------------------------- GRPO / RFT


@pytest.mark.parametrize("clips", [(0.2, 0.2), (0.2, 0.28)])
def test_grpo_values_and_gradients_match_reference(clips):
    lo, hi = clips
    log_ratios = [-1.0, -0.3, -0.1, 0.0, 0.05, 0.15, 0.22, 0.5, 1.0]
    advs = [1.0, -1.0, 0.7, -2.3]
    old = torch.full((len(advs), len(log_ratios)), -1.5, dtype=torch.float64)
    lp = (old + torch.tensor(log_ratios, dtype=torch.float64)).requires_grad_(True)
    loss = grpo_token_loss(lp, old, torch.tensor(advs, dtype=torch.float64), clip_low=lo, clip_high=hi)
    loss.sum().backward()
    for b, a in enumerate(advs):
        for t in range(len(log_ratios)):
            want, dwant = ref_ppo(lp[b, t].item(), old[b, t].item(), a, lo, hi)
            assert loss[b, t].item() == pytest.approx(want, rel=1e-12)
            assert lp.grad[b, t].item() == pytest.approx(dwant, rel=1e-12, abs=1e-15)


def test_rft_loss():
    lp = torch.tensor([[-0.5, -1.0], [-2.0, -3.0], [-0.1, -0.2]], requires_grad=True)
    loss = rft_token_loss(lp, torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(loss, torch.tensor([[0.5, 1.0], [0.0, 0.0], [0.1, 0.2]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, -1.0], [0.0, 0.0], [-1.0, -1.0]]))


def test_tis_weights():
    old = torch.tensor([[0.0, -1.0, -3.0]], requires_grad=True)
    roll = torch.tensor([[-1.0, -1.0, -1.0]])
    w = tis_weights(old, roll, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, math.exp(-2.0)]]))
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        tis_weights(old, roll, cap=0.0)


# ----------------------------------------------------------------------------- theorem


def _on_policy_batch(seed, group_size=8, num_groups=5, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    B = group_size * num_groups
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    # 0/1 rewards with 1..group_size-1 correct per group, so 0 < r̂ < 1 and r̂ ∈ [0.02, 0.98]
    rewards = torch.zeros(B, dtype=torch.float64)
    for q in range(num_groups):
        k = int(torch.randint(1, group_size, (1,), generator=g))
        idx = torch.randperm(group_size, generator=g)[:k] + q * group_size
        rewards[idx] = 1.0
    perm = torch.randperm(B, generator=g)  # interleave groups; ids non-contiguous
    group_ids = (torch.arange(B) // group_size * 13 + 5)[perm]
    rewards = rewards[perm]
    mask = (torch.rand(B, T, generator=g) > 0.2).to(torch.float64)
    mask[:, 0] = 1
    return logits, tokens, rewards, group_ids, mask


def _logprobs(logits, tokens):
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _grad(fn, logits):
    (g,) = torch.autograd.grad(fn(), logits)
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("epsilon", [1.0, 0.5])
@pytest.mark.parametrize("reduce", ["sum", "token-mean", "seq-mean-token-mean"])
def test_theorem_nft_equals_drgrpo_and_grpo_on_policy(seed, epsilon, reduce):
    logits, tokens, rewards, group_ids, mask = _on_policy_batch(seed)
    # Independent r̂ and advantages from plain Python.
    groups = ref_groups(rewards.tolist(), group_ids.tolist())
    r_hat = torch.tensor([statistics.fmean(groups[g]) for g in group_ids.tolist()], dtype=torch.float64)
    assert ((r_hat > R_MIN) & (r_hat < R_MAX)).all()
    adv_dr = rewards - r_hat
    adv_grpo = adv_dr / torch.sqrt(r_hat * (1 - r_hat))

    def red(tok):
        return tok.mul(mask).sum() if reduce == "sum" else aggregate(tok, mask, reduce)

    def nft(weighting):
        lp = _logprobs(logits, tokens)
        return red(nft_token_loss(lp, lp.detach(), rewards, r_hat, epsilon=epsilon, weighting=weighting))

    def ppo(adv):
        lp = _logprobs(logits, tokens)
        return red(grpo_token_loss(lp, lp.detach(), adv))

    g_nft_1r = _grad(lambda: nft("1-r"), logits)
    g_nft_grpo = _grad(lambda: nft("grpo"), logits)
    g_dr = _grad(lambda: ppo(adv_dr), logits)
    g_grpo = _grad(lambda: ppo(adv_grpo), logits)
    assert g_dr.abs().max() > 1e-3  # non-trivial
    torch.testing.assert_close(g_nft_1r, g_dr, rtol=0, atol=1e-6)
    torch.testing.assert_close(g_nft_grpo, g_grpo, rtol=0, atol=1e-6)
    assert not torch.allclose(g_nft_1r, g_nft_grpo, atol=1e-6)  # the two weightings differ

    # Same statement through the dispatcher (module's own group statistics).
    def disp(algo, **kw):
        lp = _logprobs(logits, tokens)
        return red(token_loss_for(algo, logprobs=lp, old_logprobs=lp.detach(), rewards=rewards,
                                  group_ids=group_ids, epsilon=epsilon, **kw))

    torch.testing.assert_close(_grad(lambda: disp("nft", weighting="1-r"), logits),
                               _grad(lambda: disp("drgrpo"), logits), rtol=0, atol=1e-6)
    torch.testing.assert_close(_grad(lambda: disp("nft", weighting="grpo"), logits),
                               _grad(lambda: disp("grpo"), logits), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- groups


IDS = [7, -3, 7, 100, -3, 7, 100, 100, 42, 42]
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_group_correct_rate_non_contiguous_ids():
    got = group_correct_rate(torch.tensor(REWARDS), torch.tensor(IDS))
    groups = ref_groups(REWARDS, IDS)
    want = [sum(groups[g]) / len(groups[g]) for g in IDS]
    assert got.tolist() == pytest.approx(want)
    # bool / int rewards work too
    assert group_correct_rate(torch.tensor(REWARDS) > 0, torch.tensor(IDS)).tolist() == pytest.approx(want)


@pytest.mark.parametrize("std_normalize", [False, True])
def test_group_advantages(std_normalize):
    rewards = REWARDS[:] + [0.3, -0.2, 0.9]
    ids = IDS[:] + [8, 8, 8]
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(ids),
                           std_normalize=std_normalize)
    groups = ref_groups(rewards, ids)
    for i, (r, g) in enumerate(zip(rewards, ids)):
        want = r - statistics.fmean(groups[g])
        sd = statistics.pstdev(groups[g])
        if std_normalize:
            want = 0.0 if sd == 0 else want / sd
        assert got[i].item() == pytest.approx(want, abs=1e-12)
    # the constant group (-3: all wrong; 100: all right) has zero advantage
    for i, g in enumerate(ids):
        if g in (-3, 100):
            assert got[i].item() == 0.0


def test_filter_informative_groups():
    keep = filter_informative_groups(torch.tensor(REWARDS), torch.tensor(IDS))
    assert keep.dtype == torch.bool
    groups = ref_groups(REWARDS, IDS)
    want = [0 < statistics.fmean(groups[g]) < 1 for g in IDS]
    assert keep.tolist() == want


def test_group_errors():
    with pytest.raises(ValueError, match="same length"):
        group_correct_rate(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        group_advantages(torch.zeros(3), torch.zeros(3), std_normalize=True)


# ----------------------------------------------------------------------------- aggregate


def _agg_batch():
    g = torch.Generator().manual_seed(3)
    loss = torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 9, generator=g) > 0.4).to(torch.float64)
    mask[2] = 0  # one fully masked sequence
    mask[0, 0] = 1
    return loss, mask


def test_aggregate_modes_vs_reference():
    loss, mask = _agg_batch()
    L, M = loss.tolist(), mask.tolist()
    total = sum(l * m for row_l, row_m in zip(L, M) for l, m in zip(row_l, row_m))
    ntok = sum(sum(row) for row in M)
    seq_means = [sum(l * m for l, m in zip(rl, rm)) / sum(rm) for rl, rm in zip(L, M) if sum(rm) > 0]
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(total / ntok)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(statistics.fmean(seq_means))
    assert aggregate(loss, mask, "token-sum-norm").item() == pytest.approx(total / 1000.0)
    assert aggregate(loss, mask, "token-sum-norm", constant=10.0).item() == pytest.approx(total / 10.0)
    # the reference's scale: token sum / constant per GPU, mean over the DP ranks
    assert aggregate(loss, mask, "token-sum-dp-mean", dp_size=4).item() == pytest.approx(total / 4000.0)
    # bool mask and NaN in padding are fine
    bad = loss.masked_fill(mask == 0, float("nan"))
    assert aggregate(bad, mask.bool(), "token-mean").item() == pytest.approx(total / ntok)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "token-sum-norm"])
def test_aggregate_micro_batches_add_up(mode):
    loss, mask = _agg_batch()
    full = aggregate(loss, mask, mode)
    n_tok = mask.sum()
    n_seq = int((mask.sum(-1) > 0).sum())
    parts = sum(
        aggregate(l, m, mode, num_tokens=n_tok, num_seqs=n_seq)
        for l, m in zip(loss.split(2), mask.split(2))
    )
    assert parts.item() == pytest.approx(full.item(), rel=1e-12)


def test_aggregate_empty_and_errors():
    loss = torch.ones(2, 3)
    assert aggregate(loss, torch.zeros(2, 3), "token-mean").item() == 0.0
    assert aggregate(loss, torch.zeros(2, 3), "seq-mean-token-mean").item() == 0.0
    with pytest.raises(ValueError, match="token-mean.*seq-mean-token-mean.*token-sum-norm"):
        aggregate(loss, torch.ones(2, 3), "mean")
    with pytest.raises(ValueError, match="num_tokens"):
        aggregate(loss, torch.ones(2, 3), "token-mean", num_tokens=0)
    with pytest.raises(ValueError, match="mask shape"):
        aggregate(loss, torch.ones(2, 4), "token-mean")
    assert set(AGGREGATION_MODES) == {"token-mean", "seq-mean-token-mean", "token-sum-norm", "token-sum-dp-mean"}


# ----------------------------------------------------------------------------- dispatcher


def test_token_loss_for_dispatch():
    g = torch.Generator().manual_seed(5)
    old = torch.randn(6, 4, generator=g, dtype=torch.float64) - 1
    lp = old + 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    ids = torch.tensor([3, 3, 3, 9, 9, 9])
    kw = dict(logprobs=lp, old_logprobs=old, rewards=rewards, group_ids=ids)
    r_hat = torch.tensor([1 / 3] * 3 + [2 / 3] * 3, dtype=torch.float64)
    torch.testing.assert_close(token_loss_for("nft", epsilon=0.5, **kw),
                               nft_token_loss(lp, old, rewards, r_hat, epsilon=0.5))
    torch.testing.assert_close(token_loss_for("rft", **kw), rft_token_loss(lp, rewards))
    adv_dr = rewards - r_hat
    adv_std = adv_dr / torch.sqrt(r_hat * (1 - r_hat))
    torch.testing.assert_close(token_loss_for("drgrpo", **kw), grpo_token_loss(lp, old, adv_dr))
    torch.testing.assert_close(token_loss_for("grpo", **kw), grpo_token_loss(lp, old, adv_std))
    torch.testing.assert_close(token_loss_for("dapo", clip_high=0.28, **kw),
                               grpo_token_loss(lp, old, adv_std, clip_high=0.28))
    with pytest.raises(ValueError, match="nft.*rft.*grpo.*drgrpo.*dapo"):
        token_loss_for("ppo", **kw)


# --------------------------------------------------------------------------- registry / weights


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "token-sum-norm", "token-sum-dp-mean"])
def test_aggregation_weights_reproduce_aggregate_over_split_batches(mode):
    """The policy's weighted token sums / global token count == aggregate() of the whole batch,
    however the batch is split into micro-batches."""
    from megatron_nft.algorithms import aggregation_weights

    g = torch.Generator().manual_seed(0)
    lens = [3, 1, 5, 2, 4]
    loss = torch.randn(len(lens), 6, generator=g, dtype=torch.float64)
    mask = torch.zeros(len(lens), 6, dtype=torch.float64)
    for i, n in enumerate(lens):
        mask[i, :n] = 1
    want = aggregate(loss, mask, mode, constant=7.0, dp_size=3)
    w = aggregation_weights(mode, lens, num_tokens=sum(lens), num_seqs=len(lens), constant=7.0, dp_size=3)
    parts = [range(0, 2), range(2, 3), range(3, 5)]  # three "micro-batches"
    got = sum((loss[list(p)] * mask[list(p)] * torch.tensor([w[i] for i in p], dtype=torch.float64)[:, None]).sum()
              for p in parts) / sum(lens)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    with pytest.raises(ValueError, match="token-mean"):
        aggregation_weights("mean", lens, num_tokens=1, num_seqs=1)


def test_registry_entries_own_their_defaults_shaping_and_advantages():
    from types import SimpleNamespace

    from megatron_nft.algorithms import REGISTRY, get_algorithm

    assert tuple(REGISTRY) == ("nft", "rft", "grpo", "drgrpo", "dapo")
    a = SimpleNamespace(clip_high=None, overlong_buffer=4, overlong_penalty=1.0)
    assert get_algorithm("dapo").clip_high(a) == 0.28 and get_algorithm("grpo").clip_high(a) == 0.2
    assert get_algorithm("grpo").clip_high(SimpleNamespace(clip_high=0.3)) == 0.3
    # DAPO's soft over-long punishment (max 10 tokens, buffer 4): linear in the last 4 tokens
    dapo = get_algorithm("dapo")
    assert [dapo.shaped_reward(a, True, n, 10) for n in (6, 7, 8, 10, 12)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert get_algorithm("grpo").shaped_reward(a, True, 10, 10) == 1.0  # only DAPO shapes
    rewards, groups = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 1, 1]
    assert get_algorithm("drgrpo").advantages(rewards, groups) == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0])
    assert get_algorithm("grpo").advantages(rewards, groups) == pytest.approx([1, -1, -1, 1, 0, 0])
    assert get_algorithm("nft").metrics == ("train/neg_clip_frac",) and get_algorithm("rft").metrics == ()
    with pytest.raises(ValueError, match="nft, rft, grpo, drgrpo, dapo"):
        get_algorithm("ppo")
