"""End to end: megatron GPTModel -> export_model_to_hf_state -> bucket_named_tensors (CPU, world 1).

The bucketed stream a rollout engine receives must contain every HF tensor exactly once, in the
exporter's (HF) order, with every bucket within its byte budget (a lone oversize tensor forms its
own bucket), and exactly the bytes of the plain HF state dict of the same model.
"""
import pytest
import torch

from megatron_nft.checkpoint import mapping as M
from megatron_nft.checkpoint.convert import export_model_to_hf_state
from megatron_nft.rollout.weight_sync import (bucket_named_tensors, cast_named_tensors,
                                              flatten_buckets, tensor_nbytes)


def qwen2_config(tied: bool) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
            "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000,  # padded to 1024
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": tied,
            "max_position_embeddings": 128, "hidden_act": "silu"}


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model(request, world1):
    from megatron_nft.megatron.model import build_gpt_model

    torch.manual_seed(0)
    m = build_gpt_model(qwen2_config(request.param), transformer_impl="local",
                        params_dtype=torch.float32)
    with torch.no_grad():  # distinct values everywhere (norms are initialised to ones)
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m


def hf_reference_state(cfg: dict) -> dict:
    """Names/shapes/dtypes of the plain HF model's parameters (tied lm_head deduplicated)."""
    transformers = pytest.importorskip("transformers")
    c = transformers.Qwen2Config(**{k: v for k, v in cfg.items() if k != "architectures"})
    with torch.device("meta"):
        hf = transformers.Qwen2ForCausalLM(c)
    return {n: p for n, p in hf.named_parameters()}


@pytest.mark.parametrize("bucket_bytes", [1, 20_000, 150_000, 10 ** 9])
def test_bucketed_export_complete_ordered_bounded(model, bucket_bytes):
    cfg = model.nft_arch
    full = list(export_model_to_hf_state([model]))
    names = [n for n, _ in full]
    # every HF tensor exactly once; streamed layer by layer (megatron's parameter order inside a
    # layer: o_proj comes before q/k/v), embedding first, final norm / lm_head last
    assert sorted(names) == sorted(M.hf_param_names(cfg)) and len(set(names)) == len(names)
    assert names[0] == "model.embed_tokens.weight"
    layer_of = [int(n.split(".")[2]) for n in names if n.startswith("model.layers.")]
    assert layer_of == sorted(layer_of)
    assert names[-1] == ("model.norm.weight" if cfg.tie_word_embeddings else "lm_head.weight")

    buckets = list(bucket_named_tensors(export_model_to_hf_state([model]), bucket_bytes))
    flat = list(flatten_buckets(buckets))
    assert [n for n, _ in flat] == names             # order preserved, nothing lost or repeated
    for (n1, a), (n2, b) in zip(flat, full):
        assert torch.equal(a, b), n1
    for b in buckets:
        size = sum(tensor_nbytes(t) for _, t in b)
        assert size <= bucket_bytes or len(b) == 1, (size, bucket_bytes, [n for n, _ in b])
    if bucket_bytes == 10 ** 9:
        assert len(buckets) == 1
    if bucket_bytes == 1:
        assert len(buckets) == len(names)
    # no two consecutive buckets could have been merged: the budget is actually used
    for a, b in zip(buckets, buckets[1:]):
        assert (sum(tensor_nbytes(t) for _, t in a) + tensor_nbytes(b[0][1]) > bucket_bytes)


def test_export_bytes_equal_plain_hf_state_dict(model):
    arch = model.nft_arch
    ref = hf_reference_state(model.nft_hf_config)
    out = dict(export_model_to_hf_state([model]))
    assert set(out) == set(ref)
    for n, t in out.items():
        assert tuple(t.shape) == tuple(ref[n].shape), n
        assert t.is_contiguous(), n
    total = sum(tensor_nbytes(t) for t in out.values())
    assert total == sum(p.numel() * 4 for p in ref.values())
    # = megatron's own parameters minus the vocab padding rows (embedding, and lm_head if untied)
    mcore = sum(tensor_nbytes(p) for p in model.parameters())
    pad_rows = model.vocab_size - arch.vocab_size
    n_vocab_mats = 1 if arch.tie_word_embeddings else 2
    assert mcore - total == pad_rows * arch.hidden_size * 4 * n_vocab_mats
    assert ("lm_head.weight" in out) == (not arch.tie_word_embeddings)


def test_export_values_match_megatron_params(model):
    """The stream is the model, re-laid out: invert it with the mapping and compare."""
    cfg = model.nft_arch
    hf = dict(export_model_to_hf_state([model]))
    back = M.hf_state_to_mcore(hf, cfg, padded_vocab=model.vocab_size)[(0, 0)]
    params = dict(model.named_parameters())
    assert set(back) == set(params)
    for n, t in back.items():
        p = params[n]
        if n in ("embedding.word_embeddings.weight", "output_layer.weight"):
            v = model.nft_arch.vocab_size
            assert torch.equal(t[:v], p[:v]) and not t[v:].any(), n  # padding rows dropped
        else:
            assert torch.equal(t, p), n


def test_cast_then_bucket_halves_bytes(model):
    fp32 = sum(tensor_nbytes(t) for _, t in export_model_to_hf_state([model]))
    stream = cast_named_tensors(export_model_to_hf_state([model]), dtype=torch.bfloat16)
    buckets = list(bucket_named_tensors(stream, 50_000))
    flat = list(flatten_buckets(buckets))
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for _, t in flat)
    assert 2 * sum(tensor_nbytes(t) for _, t in flat) == fp32
    assert all(sum(tensor_nbytes(t) for _, t in b) <= 50_000 or len(b) == 1 for b in buckets)


def test_export_bf16_dtype_argument(model):
    a = dict(export_model_to_hf_state([model], dtype=torch.bfloat16))
    b = dict(cast_named_tensors(export_model_to_hf_state([model]), dtype=torch.bfloat16))
    assert list(a) == list(b)
    assert all(torch.equal(a[n], b[n]) for n in a)
