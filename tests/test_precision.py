"""Precision recipe -> megatron-core fields, FP8/TE preflight errors, FLOPs/MFU accounting (CPU)."""
import math

import pytest
import torch

from megatron_nft.config import ConfigError, load_config
from megatron_nft.megatron import precision as P

QWEN25_7B = dict(num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                 num_kv_heads=4, head_dim=128, vocab_size=152064)
QWEN25_15B_HF = {  # HF config.json of Qwen2.5-1.5B (tied embeddings)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "tie_word_embeddings": True, "max_position_embeddings": 32768, "hidden_act": "silu"}


def recipe(**sets):
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def cuda_env(cap=(9, 0), name="NVIDIA H100 80GB HBM3", recipes=("delayed", "tensorwise",
             "blockwise", "mxfp8"), support=None):
    return {"cuda": True, "capability": cap, "device_name": name, "te_ok": True, "te_why": "",
            "te_version": "2.8.0", "te_recipes": set(recipes), "te_support": support or {}}


# ----------------------------------------------------------------------------- mapping
def test_no_fp8_no_overrides():
    assert P.precision_overrides(recipe(), transformer_impl="sdpa") == {}
    assert P.precision_overrides(recipe(), transformer_impl="transformer_engine") == {}
    assert P.fp8_align_size(recipe()) == 1


@pytest.mark.parametrize("fmt", ["e4m3", "hybrid"])
@pytest.mark.parametrize("rec", ["delayed", "tensorwise", "blockwise", "mxfp8"])
def test_fp8_mapping_builds_transformer_config(fmt, rec):
    from megatron.core.enums import Fp8Recipe

    from megatron_nft.megatron.model import build_transformer_config, parse_hf_config

    cfg = recipe(**{"precision.fp8": fmt, "precision.fp8_recipe": rec})
    ov = P.precision_overrides(cfg, transformer_impl="transformer_engine")
    assert ov["fp8"] == fmt
    assert ov["fp8_recipe"] == rec and ov["fp8_recipe"] == Fp8Recipe(rec)
    if rec == "delayed":
        assert (ov["fp8_amax_history_len"], ov["fp8_amax_compute_algo"], ov["fp8_margin"]) == (1024, "max", 0)
    else:  # current-scaling recipes ignore the amax history: leave megatron's defaults
        assert not {"fp8_amax_history_len", "fp8_amax_compute_algo"} & set(ov)
    assert "fp8_param" not in ov  # fp32 main weights; FP8 storage stays off
    # megatron-core accepts these fields on CPU (TransformerConfig does not import TE for fp8)
    arch = parse_hf_config(QWEN25_15B_HF)
    tc = build_transformer_config(arch, tp=1, pp=1, params_dtype=torch.bfloat16, **ov)
    assert tc.fp8 == fmt and tc.fp8_recipe == Fp8Recipe(rec) and tc.fp8_param is False
    if rec == "delayed":
        assert tc.fp8_amax_history_len == 1024 and tc.fp8_amax_compute_algo == "max"
    assert P.fp8_align_size(cfg) == (32 if rec == "mxfp8" else 16)


def test_mapping_accepts_sections_and_mappings():
    cfg = recipe(**{"precision.fp8": "e4m3", "precision.fp8_recipe": "tensorwise"})
    a = P.precision_overrides(cfg.precision, transformer_impl="transformer_engine")
    b = P.precision_overrides({"fp8": "e4m3", "fp8_recipe": "tensorwise"}, transformer_impl="transformer_engine")
    c = P.precision_overrides({"precision": {"fp8": "e4m3", "fp8_recipe": "tensorwise"}},
                              transformer_impl="transformer_engine")
    assert a == b == c == {"fp8": "e4m3", "fp8_recipe": "tensorwise"}


def test_optional_keys_forwarded():
    ov = P.precision_overrides({"fp8": "hybrid", "fp8_recipe": "delayed", "fp8_amax_history_len": 16,
                                "fp8_param": True}, transformer_impl="transformer_engine")
    assert ov["fp8_amax_history_len"] == 16 and ov["fp8_param"] is True


def test_fp8_needs_te_impl_in_mapping():
    cfg = recipe(**{"precision.fp8": "hybrid"})
    with pytest.raises(P.PrecisionError, match=r"model\.transformer_impl=transformer_engine.*'sdpa'"):
        P.precision_overrides(cfg, transformer_impl="sdpa")


def test_missing_field_in_older_megatron_is_clear():
    fields = P.transformer_config_fields() - {"fp8_amax_history_len"}
    with pytest.raises(P.PrecisionError, match="fp8_amax_history_len.*megatron-core"):
        P.precision_overrides({"fp8": "e4m3", "fp8_recipe": "delayed"},
                              transformer_impl="transformer_engine", fields=fields)
    no_recipe = P.transformer_config_fields() - {"fp8_recipe"}
    with pytest.raises(P.PrecisionError, match=r"fp8_recipe='mxfp8'.*fp8_recipe=delayed"):
        P.precision_overrides({"fp8": "e4m3", "fp8_recipe": "mxfp8"},
                              transformer_impl="transformer_engine", fields=no_recipe)
    ov = P.precision_overrides({"fp8": "e4m3", "fp8_recipe": "delayed"},
                               transformer_impl="transformer_engine", fields=no_recipe)
    assert "fp8_recipe" not in ov and ov["fp8"] == "e4m3"


def test_bad_values_name_the_key():
    with pytest.raises(P.PrecisionError, match=r"precision\.fp8_recipe.*'custom'"):
        P.precision_overrides({"fp8": "e4m3", "fp8_recipe": "custom"}, transformer_impl="transformer_engine")
    with pytest.raises(P.PrecisionError, match=r"precision\.fp8: got 'e5m2'"):
        P.precision_overrides({"fp8": "e5m2"}, transformer_impl="transformer_engine")
    with pytest.raises(ConfigError, match=r"precision\.fp8_recipe"):
        recipe(**{"precision.fp8_recipe": "nvfp4"})


# ----------------------------------------------------------------------------- preflight
def test_bf16_sdpa_needs_nothing():
    P.check_precision_supported(recipe(), "sdpa")
    P.check_precision_supported(recipe(), "local", env={"cuda": False})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
@pytest.mark.parametrize("impl", ["transformer_engine", "sdpa", "local"])
def test_fp8_on_cpu_is_a_clear_error(impl):
    cfg = recipe(**{"precision.fp8": "hybrid", "precision.fp8_recipe": "tensorwise"})
    with pytest.raises(P.PrecisionError) as e:
        P.check_precision_supported(cfg, impl)
    msg = str(e.value)
    for needle in ("precision.fp8='hybrid'", "precision.fp8_recipe='tensorwise'",
                   "transformer-engine[pytorch]", "NGC PyTorch container", "precision.fp8=null",
                   "model.transformer_impl"):
        assert needle in msg, (needle, msg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_transformer_engine_impl_on_cpu_is_a_clear_error():
    with pytest.raises(P.PrecisionError) as e:
        P.check_precision_supported(recipe(**{"model.transformer_impl": "transformer_engine"}),
                                    "transformer_engine")
    msg = str(e.value)
    assert "model.transformer_impl='transformer_engine'" in msg
    assert "CUDA is not available" in msg and "transformer-engine[pytorch]" in msg
    assert "model.transformer_impl=sdpa" in msg


def test_te_missing_on_gpu_is_a_clear_error():
    env = dict(cuda_env(), te_ok=False, te_why="`import transformer_engine` failed (ModuleNotFoundError)")
    with pytest.raises(P.PrecisionError, match=r"import transformer_engine.*transformer-engine\[pytorch\]"):
        P.check_precision_supported(recipe(**{"precision.fp8": "e4m3"}), "transformer_engine", env=env)


def test_gpu_capability_rules():
    fp8 = lambda rec: recipe(**{"precision.fp8": "hybrid", "precision.fp8_recipe": rec})  # noqa: E731
    for rec in ("delayed", "tensorwise", "blockwise"):
        P.check_precision_supported(fp8(rec), "transformer_engine", env=cuda_env((9, 0)))
    with pytest.raises(P.PrecisionError, match=r"mxfp8 needs a Blackwell.*H100.*sm_90.*tensorwise"):
        P.check_precision_supported(fp8("mxfp8"), "transformer_engine", env=cuda_env((9, 0)))
    P.check_precision_supported(fp8("mxfp8"), "transformer_engine",
                                env=cuda_env((10, 0), "NVIDIA B200"))
    with pytest.raises(P.PrecisionError, match=r"compute capability >= 8.9.*A100.*sm_80"):
        P.check_precision_supported(fp8("delayed"), "transformer_engine",
                                    env=cuda_env((8, 0), "NVIDIA A100-SXM4-80GB"))
    # TE present but too old for the recipe
    with pytest.raises(P.PrecisionError, match=r"Float8BlockScaling.*TE >= 2.3"):
        P.check_precision_supported(fp8("blockwise"), "transformer_engine",
                                    env=cuda_env(recipes=("delayed", "tensorwise")))
    # TE's own support check says no
    with pytest.raises(P.PrecisionError, match="Transformer Engine reports.*no FP8 here"):
        P.check_precision_supported(fp8("tensorwise"), "transformer_engine",
                                    env=cuda_env(support={"fp8": (False, "no FP8 here")}))
    # bf16 on a TE GPU: fine
    P.check_precision_supported(recipe(), "transformer_engine", env=cuda_env((8, 0)))


# ----------------------------------------------------------------------------- FLOPs / MFU
def test_flops_qwen25_7b_by_hand():
    h, L, nq, nkv, d, f, V = 3584, 28, 28, 4, 128, 18944, 152064
    per_layer = h * (nq * d) + 2 * h * (nkv * d) + (nq * d) * h + 3 * h * f
    n = L * per_layer + h * V
    assert n == P.matmul_params(QWEN25_7B) == 7_070_285_824
    # Qwen2.5-7B has ~7.62B parameters; the ~0.55B input embedding is a lookup, not a matmul
    s = 4096
    expect = 6 * n + 12 * L * nq * d * s
    assert P.model_flops_per_token(QWEN25_7B, s) == pytest.approx(expect)
    assert expect / 1e9 == pytest.approx(47.354, abs=1e-3)       # 42.42 (6N) + 4.93 (attention)
    causal = P.model_flops_per_token(QWEN25_7B, s, causal=True)
    assert causal == pytest.approx(6 * n + 6 * L * nq * d * s)
    # DESIGN.md: HF 7B fwd+bwd at seq 4096, 10.9k tok/s = 489 TFLOP/s -> the causal variant
    assert 10.9e3 * causal / 1e12 == pytest.approx(489, rel=0.01)
    fwd = P.model_flops_per_token(QWEN25_7B, s, training=False)
    assert fwd == pytest.approx(expect / 3)


def test_flops_from_hf_config_tied_counts_logit_gemm():
    a = P.matmul_params(QWEN25_15B_HF)
    h, L, f, V = 1536, 28, 8960, 151936
    assert a == L * (h * (12 + 4) * 128 + 12 * 128 * h + 3 * h * f) + h * V
    assert 1.3e9 < a < 1.6e9
    # Megatron-LM's num_floating_point_operations, written its way (expansion factor 12)
    s, nq, g = 4096, 12, 2
    megatron = 12 * L * h * h * ((1 + g / nq + s / h) * (nq * 128 / h) + (f / h) * 1.5
                                 + V / (2 * L * h))
    assert P.model_flops_per_token(QWEN25_15B_HF, s) == pytest.approx(megatron, rel=1e-12)


def test_token_weighted_seq_len_and_mfu():
    assert P.token_weighted_seq_len([4096, 4096]) == 4096
    assert P.token_weighted_seq_len([100, 300]) == pytest.approx((100 ** 2 + 300 ** 2) / 400)
    assert P.token_weighted_seq_len([]) == 0.0
    fpt = P.model_flops_per_token(QWEN25_7B, 4096)
    peak = P.peak_flops("NVIDIA H100 80GB HBM3")
    assert peak == 989.4e12
    assert P.mfu(10_000, fpt, peak) == pytest.approx(10_000 * fpt / 989.4e12)
    assert P.mfu(80_000, fpt, peak, n_devices=8) == pytest.approx(P.mfu(10_000, fpt, peak))
    assert math.isnan(P.mfu(10_000, fpt, None))


def test_peak_table(monkeypatch):
    monkeypatch.delenv("NFT_PEAK_TFLOPS", raising=False)
    assert P.peak_flops("NVIDIA H200") == 989.4e12
    assert P.peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert P.peak_flops("NVIDIA GH200 480GB") == 989.4e12
    assert P.peak_flops("NVIDIA B200") == 2250e12
    assert P.peak_flops("NVIDIA H100 80GB HBM3", "fp8") == 1978.9e12
    assert P.peak_flops("Some Unknown Accelerator") is None
    if not torch.cuda.is_available():
        assert P.peak_flops() is None
    monkeypatch.setenv("NFT_PEAK_TFLOPS", "793")
    assert P.peak_flops("NVIDIA H200") == 793e12
