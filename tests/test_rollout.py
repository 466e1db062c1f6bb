"""Tests for megatron_nft.rollout: the HF ``generate`` engine and weight-sync bucketing.

References are independent of the engine: a hand-written greedy loop over the model's plain
forward (full recompute, no KV cache), and log-probs recomputed by one forward pass over
prompt + completion.
"""
from __future__ import annotations

import pytest
import torch

from megatron_nft.rollout import Completion, SamplingConfig, bucket_named_tensors, cast_named_tensors, make_engine
from megatron_nft.rollout.hf_engine import HFEngine
from megatron_nft.rollout.weight_sync import flatten_buckets

VOCAB = 300
EOS = 299  # never produced in practice by the random model; tests that need eos override it
PROMPTS = [[5, 17, 42, 7], [100, 3], [250, 251, 252, 253, 254, 9]]


def tiny_qwen2(seed: int, tie: bool = False):
    """A random tiny Qwen2 (hidden 64, 2 layers, 4 heads, 2 kv heads, head_dim 32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=tie, eos_token_id=EOS, bos_token_id=1, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


def save(model, path) -> str:
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box they cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
    model = tiny_qwen2(0)
    return model, save(model, tmp_path_factory.mktemp("model_a"))


@pytest.fixture(scope="module")
def model_b(tmp_path_factory):
    model = tiny_qwen2(1)
    return model, save(model, tmp_path_factory.mktemp("model_b"))


@pytest.fixture(scope="module")
def engine(model_a):
    return HFEngine(model_a[1], seed=123, device="cpu")


@torch.no_grad()
def greedy_reference(model, prompt, steps, eos=None):
    """Argmax loop with a full forward pass per step (no cache, no generate)."""
    ids = list(prompt)
    out = []
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1]
        tok = int(torch.argmax(logits))
        out.append(tok)
        ids.append(tok)
        if eos is not None and tok == eos:
            break
    return out


@torch.no_grad()
def recompute_logprobs(model, prompt, completion):
    """log softmax of the raw logits at the completion tokens, one forward over prompt+completion."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt) - 1: len(prompt) - 1 + len(completion)], dim=-1)
    return lp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- HF engine


def test_greedy_matches_hand_loop_and_logprobs(engine, model_a):
    model, _ = model_a
    out = engine.generate(PROMPTS, SamplingConfig(n=1, temperature=0.0, max_tokens=12))
    assert len(out) == len(PROMPTS)
    for prompt, group in zip(PROMPTS, out):
        assert len(group) == 1
        c = group[0]
        assert c.token_ids == greedy_reference(model, prompt, 12)
        assert c.finish_reason == "length"
        assert len(c.logprobs) == 12
        torch.testing.assert_close(torch.tensor(c.logprobs), recompute_logprobs(model, prompt, c.token_ids),
                                   atol=1e-4, rtol=0)
        # greedy tokens are the argmax, so their raw log-prob is the max over the vocabulary
        assert all(lp <= 0 for lp in c.logprobs)


def test_sampled_logprobs_are_raw_distribution(engine, model_a):
    """Sampling at temperature 0.7 / top-p 0.8 still reports log π under the raw model."""
    model, _ = model_a
    out = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=0.7, top_p=0.8, max_tokens=10, seed=7))
    assert [len(g) for g in out] == [3, 3, 3]
    for prompt, group in zip(PROMPTS, out):
        for c in group:
            assert isinstance(c, Completion) and len(c.token_ids) == len(c.logprobs) == 10
            torch.testing.assert_close(torch.tensor(c.logprobs), recompute_logprobs(model, prompt, c.token_ids),
                                       atol=1e-4, rtol=0)


def test_n_samples_differ_and_seed_determinism(engine):
    cfg = SamplingConfig(n=4, temperature=1.0, max_tokens=8, seed=11)
    a = engine.generate(PROMPTS, cfg)
    b = engine.generate(PROMPTS, cfg)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert [[c.logprobs for c in g] for g in a] == [[c.logprobs for c in g] for g in b]
    # the n samples of a prompt are not all identical at temperature 1
    assert any(len({tuple(c.token_ids) for c in g}) > 1 for g in a)
    c = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=8, seed=12))
    assert [[x.token_ids for x in g] for g in a] != [[x.token_ids for x in g] for g in c]


def test_base_seed_reproducible(model_a):
    e1 = HFEngine(model_a[1], seed=5, device="cpu")
    e2 = HFEngine(model_a[1], seed=5, device="cpu")
    cfg = SamplingConfig(n=2, max_tokens=6)
    first = [[c.token_ids for c in g] for g in e1.generate(PROMPTS, cfg)]
    assert first == [[c.token_ids for c in g] for g in e2.generate(PROMPTS, cfg)]
    second = [[c.token_ids for c in g] for g in e1.generate(PROMPTS, cfg)]
    assert second != first  # a new call draws new samples


def test_chunking_does_not_change_greedy(model_a):
    small = HFEngine(model_a[1], device="cpu", max_batch_sequences=2)
    big = HFEngine(model_a[1], device="cpu")
    cfg = SamplingConfig(n=2, temperature=0.0, max_tokens=6)
    assert [[c.token_ids for c in g] for g in small.generate(PROMPTS, cfg)] == \
        [[c.token_ids for c in g] for g in big.generate(PROMPTS, cfg)]


def test_eos_included_and_tokens_after_dropped(model_a):
    model, path = model_a
    free = greedy_reference(model, PROMPTS[0], 10)
    eos = free[3]  # make the 4th greedy token of prompt 0 the end-of-sequence token
    eng = HFEngine(path, device="cpu", eos_token_id=eos)
    out = eng.generate(PROMPTS, SamplingConfig(n=2, temperature=0.0, max_tokens=10))
    for prompt, group in zip(PROMPTS, out):
        ref = greedy_reference(model, prompt, 10, eos=eos)
        for c in group:
            assert c.token_ids == ref
            if ref[-1] == eos:
                assert c.finish_reason == "stop" and eos not in c.token_ids[:-1]
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 10
            torch.testing.assert_close(torch.tensor(c.logprobs), recompute_logprobs(model, prompt, c.token_ids),
                                       atol=1e-4, rtol=0)
    first = out[0][0]
    assert first.finish_reason == "stop" and first.token_ids == free[: free.index(eos) + 1]


def test_eos_id_from_config(engine):
    assert engine.eos_token_ids == [EOS]


def test_update_weights_matches_fresh_model(model_a, model_b):
    _, path_a = model_a
    model_b_, path_b = model_b
    eng = HFEngine(path_a, device="cpu")
    cfg = SamplingConfig(n=1, temperature=0.0, max_tokens=10)
    before = [g[0].token_ids for g in eng.generate(PROMPTS, cfg)]
    # stream B's weights (as a Megatron export would: HF names, fp32, one at a time)
    eng.update_weights((k, v.clone()) for k, v in model_b_.state_dict().items())
    after = [g[0].token_ids for g in eng.generate(PROMPTS, cfg)]
    fresh = [g[0].token_ids for g in HFEngine(path_b, device="cpu").generate(PROMPTS, cfg)]
    assert after == fresh == [greedy_reference(model_b_, p, 10, eos=EOS) for p in PROMPTS]
    assert after != before


def test_update_weights_errors(engine):
    with pytest.raises(KeyError, match="not.a.weight"):
        engine.update_weights([("not.a.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights([("model.norm.weight", torch.zeros(3))])


@pytest.mark.parametrize("send_lm_head", [False, True])
def test_update_weights_tied_embeddings(tmp_path, send_lm_head):
    src, dst = tiny_qwen2(2, tie=True), tiny_qwen2(3, tie=True)
    eng = HFEngine(save(src, tmp_path), device="cpu")
    sd = dst.state_dict()
    named = [(k, v) for k, v in sd.items() if send_lm_head or k != "lm_head.weight"]
    eng.update_weights(named)
    torch.testing.assert_close(eng.model.lm_head.weight, dst.model.embed_tokens.weight)
    assert eng.model.lm_head.weight.data_ptr() == eng.model.model.embed_tokens.weight.data_ptr()
    out = eng.generate([PROMPTS[0]], SamplingConfig(temperature=0.0, max_tokens=6))
    assert out[0][0].token_ids == greedy_reference(dst, PROMPTS[0], 6, eos=EOS)


def test_make_engine_hf(model_a):
    eng = make_engine("hf", model_a[1], tp=1, gpu_memory_utilization=0.5, sleep_mode=False, seed=0)
    assert isinstance(eng, HFEngine)
    eng.sleep(), eng.wake(), eng.close()
    with pytest.raises(ValueError, match="unknown rollout engine kind"):
        make_engine("sglang", model_a[1])
    with pytest.raises(ValueError, match="tp"):
        make_engine("hf", model_a[1], tp=2)


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="n must be"):
        SamplingConfig(n=0)
    with pytest.raises(ValueError, match="log-probs"):
        Completion(token_ids=[1, 2], logprobs=[0.0], text="", finish_reason="stop")


# ----------------------------------------------------------------------------- bucketing


def _named(sizes):
    """Tensors of the given element counts (fp32 → 4 bytes each), named t0, t1, ..."""
    return [(f"t{i}", torch.full((s,), float(i))) for i, s in enumerate(sizes)]


@pytest.mark.parametrize("sizes,bucket_bytes", [
    ([10, 10, 10, 10], 80),          # exactly two per bucket
    ([5, 30, 5, 5, 100, 1], 64),     # oversize tensors alone
    ([1] * 17, 12),                  # many small
    ([50], 8),                       # a single oversize tensor
    ([], 16),                        # nothing
])
def test_bucketing_bounded_ordered_complete(sizes, bucket_bytes):
    named = _named(sizes)
    buckets = list(bucket_named_tensors(iter(named), bucket_bytes))
    flat = list(flatten_buckets(buckets))
    assert [n for n, _ in flat] == [n for n, _ in named]  # order preserved, each exactly once
    assert all(a is b for (_, a), (_, b) in zip(flat, named))
    for bucket in buckets:
        assert bucket, "no empty buckets"
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= bucket_bytes or len(bucket) == 1  # oversize only alone
    # greedy packing: a bucket is closed only when the next tensor would not fit
    for b, nxt in zip(buckets, buckets[1:]):
        size = sum(t.numel() * 4 for _, t in b)
        assert size + nxt[0][1].numel() * 4 > bucket_bytes or size >= bucket_bytes


def test_bucketing_is_lazy():
    """The producer is consumed only as far as the current bucket needs."""
    pulled = []

    def producer():
        for i in range(100):
            pulled.append(i)
            yield f"t{i}", torch.zeros(4)  # 16 bytes

    it = bucket_named_tensors(producer(), 32)
    first = next(it)
    assert [n for n, _ in first] == ["t0", "t1"]
    assert len(pulled) <= 3
    with pytest.raises(ValueError):
        next(bucket_named_tensors(producer(), 0))


def test_cast_named_tensors():
    named = [("w", torch.randn(3, 4).t()), ("idx", torch.arange(3))]
    out = list(cast_named_tensors(iter(named), torch.bfloat16))
    assert out[0][1].dtype == torch.bfloat16 and out[0][1].is_contiguous()
    assert out[1][1].dtype == torch.long
    torch.testing.assert_close(out[0][1].float(), named[0][1], atol=1e-2, rtol=1e-2)
