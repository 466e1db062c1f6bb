"""megatron-core GPTModel provider vs HF transformers (tiny random Qwen2 / Llama, CPU, gloo)."""

import json

import pytest
import torch

from megatron_nft.megatron import model as mm
from megatron_nft.testing import hf_logits, make_tiny_llama, make_tiny_qwen2

try:
    from tests._dist_helpers import DIST_SCRIPTS, run_torchrun
except ImportError:  # tests/ itself on sys.path (rootdir-less pytest invocation)
    from _dist_helpers import DIST_SCRIPTS, run_torchrun

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    qwen = make_tiny_qwen2(root / "qwen2", seed=1)  # GQA 4/2, head_dim 32 != 64/4, QKV bias
    llama = make_tiny_llama(root / "llama", seed=2)
    llama_tied = make_tiny_llama(root / "llama_tied", seed=3, tie_word_embeddings=True)
    ids = torch.randint(0, 1100, (2, 16), generator=torch.Generator().manual_seed(0))
    refs = {}
    for name, d in (("qwen", qwen), ("llama", llama), ("llama_tied", llama_tied)):
        refs[name] = root / f"ref_{name}.pt"
        torch.save({"input_ids": ids, "logits": hf_logits(d, ids)}, refs[name])
    return {"root": root, "qwen": qwen, "llama": llama, "llama_tied": llama_tied, "refs": refs,
            "ids": ids}


# ------------------------------------------------------------------ config / validation
def test_parse_qwen2_config(tiny):
    a = mm.parse_hf_config(tiny["qwen"])
    assert (a.family, a.qkv_bias, a.tie_word_embeddings) == ("qwen2", True, False)
    assert (a.num_attention_heads, a.num_kv_heads, a.head_dim, a.hidden_size) == (4, 2, 32, 64)
    b = mm.parse_hf_config(tiny["llama_tied"])
    assert (b.family, b.qkv_bias, b.tie_word_embeddings, b.rope_theta) == ("llama", False, True, 500000.0)


def test_unsupported_architecture_lists_supported():
    with pytest.raises(mm.UnsupportedModelError, match="Qwen2ForCausalLM.*LlamaForCausalLM"):
        mm.parse_hf_config({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})


def test_parallel_validation_names_keys(tiny):
    arch = mm.parse_hf_config(tiny["qwen"])
    with pytest.raises(ValueError, match=r"parallel\.tp=3.*attention heads"):
        mm.validate_parallel(arch, 3, 1)
    with pytest.raises(ValueError, match=r"parallel\.tp=4.*key/value heads"):
        mm.validate_parallel(arch, 4, 1)
    with pytest.raises(ValueError, match=r"parallel\.pp=3.*layers"):
        mm.validate_parallel(arch, 1, 3)


def test_uneven_pipeline_split(tiny):
    from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

    arch = mm.parse_hf_config(tiny["qwen"])  # 4 layers
    mm.validate_parallel(arch, 1, 2, "1,3")
    mm.validate_parallel(arch, 1, 3, [1, 1, 2])  # 3 stages: even layers per stage impossible
    for pp, bad in ((2, "3,3"), (2, "4"), (2, "0,4"), (3, [2, 2, 0])):
        with pytest.raises(ValueError, match=r"parallel\.pp_layer_split"):
            mm.validate_parallel(arch, 1, pp, bad)
    with pytest.raises(ValueError, match="comma-separated"):
        mm.parse_layer_split("1;3")
    # megatron's own parser is the reference for the layout string
    for split in ([1, 3], [15, 17], [3, 4, 4, 5]):
        layout = PipelineParallelLayerLayout(mm.pipeline_layout(split), len(split))
        layout.validate_layer_layout(num_layers=sum(split), mtp_num_layers=None)
        stages = [sum(1 for t in layout.layout[r][0] if t.name == "decoder") for r in range(len(split))]
        assert stages == split


def test_tp_rms_norm_formula_and_sequence_parallel_flag():
    from types import SimpleNamespace

    x = torch.randn(5, 3, 8, dtype=torch.float64)
    norm = mm.TPRMSNorm(SimpleNamespace(sequence_parallel=True), 8, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * torch.linspace(0.5, 2.0, 8).double()
    torch.testing.assert_close(norm(x), ref, rtol=1e-12, atol=1e-12)
    assert norm.weight.sequence_parallel is True  # finalize_model_grads all-reduces it over TP
    assert mm.TPRMSNorm(SimpleNamespace(sequence_parallel=False), 8).weight.sequence_parallel is False


def test_padded_vocab():
    assert mm.padded_vocab_size(1100, 1) == 1152
    assert mm.padded_vocab_size(1100, 2) == 1280
    assert mm.padded_vocab_size(151936, 1) == 151936
    assert mm.padded_vocab_size(151936, 2) == 152064


def test_transformer_engine_missing_is_a_clear_error():
    if mm._te_available()[0]:
        pytest.skip("Transformer Engine is available here")
    with pytest.raises(RuntimeError, match="Transformer Engine.*transformer_impl='sdpa'"):
        mm.get_layer_spec("transformer_engine")
    with pytest.raises(ValueError, match="transformer_impl"):
        mm.get_layer_spec("flash")


# ------------------------------------------------------------------ TP1 forward in-process
def _tp1_logits(hf_dir, ids, impl="local"):
    from megatron_nft.checkpoint.convert import load_hf_into_model

    model = mm.build_gpt_model(hf_dir, transformer_impl=impl)
    load_hf_into_model([model], hf_dir, progress=False)
    model.eval()
    pos = torch.arange(ids.size(1)).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return model(ids, pos, None)


@pytest.mark.parametrize("name", ["qwen", "llama", "llama_tied"])
def test_tp1_logits_match_hf(tiny, world1, name):
    ref = torch.load(tiny["refs"][name])
    out = _tp1_logits(tiny[name], ref["input_ids"])
    assert out.shape[-1] == mm.padded_vocab_size(1100, 1)
    err = (out[..., :1100] - ref["logits"]).abs().max().item()
    assert err <= TOL, err
    # log-probs (padded vocab masked out) agree as well
    lp = torch.log_softmax(out[..., :1100], -1)
    assert (lp - torch.log_softmax(ref["logits"], -1)).abs().max().item() <= TOL


def test_sdpa_core_attention_matches_local(tiny, world1):
    ids = tiny["ids"]
    local = _tp1_logits(tiny["qwen"], ids, "local")
    sdpa = _tp1_logits(tiny["qwen"], ids, "sdpa")
    assert (local - sdpa).abs().max().item() <= 1e-5


def test_sdpa_module_matches_dot_product_attention(world1):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    arch = mm.parse_hf_config(
        {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 128, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 8,
         "num_key_value_heads": 2, "head_dim": 16})
    cfg = mm.build_transformer_config(arch, tp=1, pp=1)
    kw = dict(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    ref_mod, sdpa_mod = DotProductAttention(**kw), mm.SDPACoreAttention(**kw)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(10, 3, 8, 16, generator=g)
    k, v = torch.randn(10, 3, 2, 16, generator=g), torch.randn(10, 3, 2, 16, generator=g)
    assert (ref_mod(q, k, v, None) - sdpa_mod(q, k, v, None)).abs().max().item() <= 1e-5
    # explicit megatron-style mask (True = masked): causal + first key of batch 0 masked
    mask = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1).expand(3, 1, 10, 10).clone()
    mask[0, :, 1:, 0] = True
    got = sdpa_mod(q, k, v, mask)
    want = ref_mod(q, k, v, mask)
    assert got.shape == (10, 3, 128)
    assert (got - want).abs().max().item() <= 1e-5


# ------------------------------------------------------------------ TP / PP (4 gloo procs)
@pytest.mark.slow
def test_tp_pp_logits_match_hf(tiny):
    root = tiny["root"]
    spec = [
        {"name": "qwen", "hf": str(tiny["qwen"]), "ref": str(tiny["refs"]["qwen"]),
         "layouts": [[2, 1], [1, 2], [2, 2]], "export": True},
        {"name": "qwen_sdpa", "hf": str(tiny["qwen"]), "ref": str(tiny["refs"]["qwen"]),
         "layouts": [[2, 2]], "impl": "sdpa"},
        {"name": "llama_tied", "hf": str(tiny["llama_tied"]), "ref": str(tiny["refs"]["llama_tied"]),
         "layouts": [[2, 2]], "export": True},
    ]
    (root / "spec.json").write_text(json.dumps(spec))
    p = run_torchrun(4, DIST_SCRIPTS / "check_forward.py", root / "spec.json", root / "res.json")
    assert p.returncode == 0, p.output
    res = json.loads((root / "res.json").read_text())
    assert set(res) == {"qwen@tp2pp1", "qwen@tp1pp2", "qwen@tp2pp2", "qwen_sdpa@tp2pp2",
                        "llama_tied@tp2pp2"}
    for key, r in res.items():
        assert r["max_err"] <= TOL, (key, r)
        assert r["export_equal"] in (True, None), (key, r)
    assert res["qwen@tp2pp2"]["export_equal"] is True


def test_parse_transformers4_style_configs():
    qwen25 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
              "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
              "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
              "use_sliding_window": False, "hidden_act": "silu", "max_position_embeddings": 32768}
    a = mm.parse_hf_config(qwen25)
    assert (a.head_dim, a.rope_theta, a.num_kv_heads, a.rope_scaling_factor) == (128, 1e6, 4, None)
    llama31 = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
               "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "rope_theta": 500000.0,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    assert mm.parse_hf_config(llama31).rope_scaling_factor == 8.0
    with pytest.raises(mm.UnsupportedModelError, match="yarn"):
        mm.parse_hf_config({**llama31, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


@pytest.mark.parametrize("impl", ["local", "sdpa"])
def test_cpu_shim_dropout_and_recompute_backward(tiny, world1, impl):
    """Training-mode forward/backward with dropout (RNG tracker fork) and full activation
    recomputation (tracker state save/restore) runs on CPU and is reproducible."""
    from megatron.core import tensor_parallel

    from megatron_nft.megatron import cpu_shim

    assert cpu_shim.is_active()
    assert type(tensor_parallel.get_cuda_rng_tracker()).__name__ == "CpuRNGStatesTracker"
    ids = tiny["ids"]
    pos = torch.arange(ids.size(1)).unsqueeze(0).expand_as(ids)
    grads = []
    for _ in range(2):
        tensor_parallel.model_parallel_cuda_manual_seed(123)
        torch.manual_seed(123)
        model = mm.build_gpt_model(tiny["qwen"], transformer_impl=impl, hidden_dropout=0.1,
                                   attention_dropout=0.1, recompute_granularity="full",
                                   recompute_method="uniform", recompute_num_layers=1)
        model.train()
        loss = model(ids, pos, None, labels=ids).float().mean()
        loss.backward()
        grads.append(model.decoder.layers[0].self_attention.linear_qkv.weight.grad.clone())
        assert torch.isfinite(loss)
    assert torch.equal(grads[0], grads[1])
