"""HF <-> megatron mapping (pure) and the conversion CLI (torchrun, gloo, real megatron-core)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_nft.checkpoint import mapping as M
from megatron_nft.testing import hf_logits, make_tiny_qwen2

try:
    from tests._dist_helpers import CONVERT, DIST_SCRIPTS, run_python, run_torchrun
except ImportError:  # tests/ itself on sys.path
    from _dist_helpers import CONVERT, DIST_SCRIPTS, run_python, run_torchrun


def _cfg(qkv_bias=True, tie=False, layers=4, heads=4, kv=2, d=8, hidden=16, ffn=24, vocab=100):
    from megatron_nft.arch import ModelArch

    return ModelArch(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     num_kv_heads=kv, head_dim=d, ffn_hidden_size=ffn, vocab_size=vocab,
                     qkv_bias=qkv_bias, tie_word_embeddings=tie)


def _random_hf_state(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, d, F = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, H)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (cfg.num_attention_heads * d, H),
            p + "self_attn.k_proj.weight": (cfg.num_kv_heads * d, H),
            p + "self_attn.v_proj.weight": (cfg.num_kv_heads * d, H),
            p + "self_attn.o_proj.weight": (H, cfg.num_attention_heads * d),
            p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H),
            p + "mlp.down_proj.weight": (H, F),
        })
        if cfg.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (cfg.num_attention_heads * d,),
                           p + "self_attn.k_proj.bias": (cfg.num_kv_heads * d,),
                           p + "self_attn.v_proj.bias": (cfg.num_kv_heads * d,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


# ------------------------------------------------------------------ mapping (pure torch)
@pytest.mark.parametrize("qkv_bias,tie", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_mapping_round_trip_exact(qkv_bias, tie, tp, pp):
    cfg = _cfg(qkv_bias=qkv_bias, tie=tie)
    hf = _random_hf_state(cfg)
    assert sorted(M.hf_param_names(cfg)) == sorted(hf)
    padded = 128 * tp
    shards = M.hf_state_to_mcore(hf, cfg, tp, pp, padded_vocab=padded)
    H, d = cfg.hidden_size, cfg.head_dim
    for (tr, pr), sd in shards.items():
        names = set(sd)
        assert ("embedding.word_embeddings.weight" in names) == (pr == 0)
        assert ("decoder.final_layernorm.weight" in names) == (pr == pp - 1)
        assert ("output_layer.weight" in names) == (pr == pp - 1 and not (tie and pp == 1))
        assert ("decoder.layers.0.self_attention.linear_qkv.bias" in names) == qkv_bias
        assert sum(n.endswith("linear_qkv.weight") for n in names) == cfg.num_layers // pp
        qkv = sd["decoder.layers.0.self_attention.linear_qkv.weight"]
        assert qkv.shape == ((cfg.num_attention_heads + 2 * cfg.num_kv_heads) * d // tp, H)
        assert sd["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * cfg.ffn_hidden_size // tp, H)
        if pr == 0:
            emb = sd["embedding.word_embeddings.weight"]
            assert emb.shape == (padded // tp, H)
    back = M.mcore_to_hf_state(shards, cfg, tp, pp)
    assert set(back) == set(hf)
    for k in hf:
        assert torch.equal(back[k], hf[k]), k


def test_qkv_grouped_per_kv_head_with_tp_hand_built():
    # 4 query heads, 2 KV heads (2 queries per group), head_dim 2, hidden 1: label every row
    cfg = _cfg(heads=4, kv=2, d=2, hidden=1)
    q = torch.arange(100, 108.0).view(8, 1)
    k = torch.arange(200, 204.0).view(4, 1)
    v = torch.arange(300, 304.0).view(4, 1)
    full = M.hf_to_mcore("qkv_weight", [q, k, v], cfg, tp=1, tp_rank=0).flatten().tolist()
    assert full == [100, 101, 102, 103, 200, 201, 300, 301, 104, 105, 106, 107, 202, 203, 302, 303]
    r0 = M.hf_to_mcore("qkv_weight", [q, k, v], cfg, tp=2, tp_rank=0).flatten().tolist()
    r1 = M.hf_to_mcore("qkv_weight", [q, k, v], cfg, tp=2, tp_rank=1).flatten().tolist()
    assert r0 == [100, 101, 102, 103, 200, 201, 300, 301]
    assert r1 == [104, 105, 106, 107, 202, 203, 302, 303]
    # the same grouping for biases (1-D)
    b = M.hf_to_mcore("qkv_bias", [q.flatten(), k.flatten(), v.flatten()], cfg, tp=2, tp_rank=1)
    assert b.tolist() == r1
    out = dict(M.mcore_to_hf("qkv_bias", [torch.tensor(r0), torch.tensor(r1)], cfg, layer=3))
    assert torch.equal(out["model.layers.3.self_attn.q_proj.bias"], q.flatten())
    assert torch.equal(out["model.layers.3.self_attn.v_proj.bias"], v.flatten())


def test_fc1_is_gate_i_up_i_per_tp_rank_hand_built():
    cfg = _cfg(ffn=8, hidden=1)
    gate, up = torch.arange(0, 8.0).view(8, 1), torch.arange(100, 108.0).view(8, 1)
    assert M.hf_to_mcore("fc1", [gate, up], cfg, 1, 0).flatten().tolist() == (
        list(range(8)) + list(range(100, 108)))
    r0 = M.hf_to_mcore("fc1", [gate, up], cfg, 2, 0)
    r1 = M.hf_to_mcore("fc1", [gate, up], cfg, 2, 1)
    assert r0.flatten().tolist() == [0, 1, 2, 3, 100, 101, 102, 103]
    assert r1.flatten().tolist() == [4, 5, 6, 7, 104, 105, 106, 107]
    out = dict(M.mcore_to_hf("fc1", [r0, r1], cfg, layer=0))
    assert torch.equal(out["model.layers.0.mlp.gate_proj.weight"], gate)
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], up)


def test_vocab_padding_added_and_trimmed():
    cfg = _cfg(vocab=100, hidden=2)
    emb = torch.randn(100, 2)
    r0 = M.hf_to_mcore("embedding", [emb], cfg, tp=2, tp_rank=0, padded_vocab=256)
    r1 = M.hf_to_mcore("embedding", [emb], cfg, tp=2, tp_rank=1, padded_vocab=256)
    assert r0.shape == r1.shape == (128, 2)
    assert torch.equal(r0[:100], emb) and not r1.any()
    ((name, back),) = M.mcore_to_hf("output", [r0, r1], cfg)
    assert name == "lm_head.weight" and torch.equal(back, emb)
    tied = _cfg(vocab=100, hidden=2, tie=True)
    assert M.mcore_to_hf("output", [r0, r1], tied) == []
    assert M.hf_names("output", None, tied) == ["model.embed_tokens.weight"]


def test_mcore_name_parsing_local_and_te_and_pp_offsets():
    assert M.parse_mcore_name("decoder.layers.3.self_attention.linear_qkv.bias") == ("qkv_bias", 3)
    assert M.parse_mcore_name("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight") == (
        "input_norm", 0)
    assert M.parse_mcore_name("decoder.layers.1.mlp.linear_fc1.layer_norm_weight") == ("mlp_norm", 1)
    with pytest.raises(KeyError):
        M.parse_mcore_name("decoder.layers.0.self_attention.q_layernorm.weight")
    cfg = _cfg(layers=4)
    stage1 = M.mcore_names_for_stage(cfg, pp=2, pp_rank=1)
    assert ("decoder.layers.0.self_attention.linear_proj.weight", "proj", 2) in stage1
    assert M.hf_names("proj", 2, cfg) == ["model.layers.2.self_attn.o_proj.weight"]


# ------------------------------------------------------------------ CLI (real megatron)
@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    hf = make_tiny_qwen2(root / "hf", seed=7)
    ids = torch.randint(0, 1100, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.save({"input_ids": ids, "logits": hf_logits(hf, ids)}, root / "ref.pt")
    return root


@pytest.mark.slow
def test_cli_tp2pp2_round_trip_bit_identical_and_reshard(qwen_dir):
    root, hf = qwen_dir, qwen_dir / "hf"
    ck22, ck11, back = root / "mcore_tp2pp2", root / "mcore_plain", root / "hf_back"
    p = run_torchrun(4, CONVERT, "hf-to-mcore", "--hf", hf, "--out", ck22, "--tp", 2, "--pp", 2)
    assert p.returncode == 0, p.output
    assert not (root / f".{ck22.name}.partial").exists()
    meta = json.loads((ck22 / "nft_checkpoint.json").read_text())
    assert (meta["saved_tp"], meta["saved_pp"], meta["vocab_size"], meta["padded_vocab_size"]) == (
        2, 2, 1100, 1280)
    assert meta["format_version"] == 1 and meta["dtype"] == "float32"
    assert (ck22 / "hf_config.json").read_bytes() == (hf / "config.json").read_bytes()
    assert (ck22 / "tokenizer" / "tokenizer.json").is_file()

    p = run_python(CONVERT, "mcore-to-hf", "--mcore", ck22, "--out", back)
    assert p.returncode == 0, p.output
    a, b = load_file(hf / "model.safetensors"), load_file(back / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert (back / "config.json").read_bytes() == (hf / "config.json").read_bytes()
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(back)).encode("12 + 35") == \
        AutoTokenizer.from_pretrained(str(hf)).encode("12 + 35")

    # one plain process asked for TP2 converts at TP1 (layout-free); both load at TP2 / TP1
    p = run_python(CONVERT, "hf-to-mcore", "--hf", hf, "--out", ck11, "--tp", 2)
    assert p.returncode == 0, p.output
    assert json.loads((ck11 / "nft_checkpoint.json").read_text())["saved_tp"] == 1
    spec = [{"name": "plain", "hf": str(hf), "ref": str(root / "ref.pt"), "mcore": str(ck11),
             "layouts": [[2, 1]]},
            {"name": "tp2pp2", "hf": str(hf), "ref": str(root / "ref.pt"), "mcore": str(ck22),
             "layouts": [[2, 1], [1, 1]], "export": True}]
    (root / "spec.json").write_text(json.dumps(spec))
    p = run_torchrun(2, DIST_SCRIPTS / "check_forward.py", root / "spec.json", root / "res.json")
    assert p.returncode == 0, p.output
    res = json.loads((root / "res.json").read_text())
    assert set(res) == {"plain@tp2pp1", "tp2pp2@tp2pp1", "tp2pp2@tp1pp1"}
    for key, r in res.items():
        assert r["max_err"] <= 1e-4, (key, r)
    assert res["tp2pp2@tp1pp1"]["export_equal"] and res["tp2pp2@tp2pp1"]["export_equal"]


def test_write_hf_safetensors_shards_with_index(tmp_path):
    from megatron_nft.checkpoint.convert import write_hf_safetensors

    tensors = [(f"t{i}", torch.full((64,), float(i))) for i in range(5)]  # 256 B each
    files = write_hf_safetensors(iter(tensors), tmp_path, max_shard_size=600)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 256
    for name, t in tensors:
        assert torch.equal(load_file(tmp_path / index["weight_map"][name])[name], t)
    one = tmp_path / "one"
    one.mkdir()
    assert write_hf_safetensors(iter(tensors), one) == ["model.safetensors"]


# ------------------------------------------------------------------ CLI errors
def _convert_main(argv, capsys):
    from megatron_nft.checkpoint.convert import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_cli_missing_config_subprocess(tmp_path):
    (tmp_path / "hf").mkdir()
    p = run_python(CONVERT, "hf-to-mcore", "--hf", tmp_path / "hf", "--out", tmp_path / "o")
    assert p.returncode != 0
    assert "config.json not found" in p.stderr, p.output
    assert not (tmp_path / "o").exists()


def test_cli_unsupported_arch_and_missing_weights(qwen_dir, tmp_path, capsys):
    bad = tmp_path / "mistral"
    bad.mkdir()
    cfg = json.loads((qwen_dir / "hf" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"],
                                                 "model_type": "mistral"}))
    save_file({"x": torch.zeros(1)}, str(bad / "model.safetensors"))
    rc, err = _convert_main(["hf-to-mcore", "--hf", bad, "--out", tmp_path / "o"], capsys)
    assert rc != 0 and "unsupported architecture" in err and "Qwen2ForCausalLM" in err
    nowts = tmp_path / "nowts"
    nowts.mkdir()
    shutil.copy(qwen_dir / "hf" / "config.json", nowts / "config.json")
    rc, err = _convert_main(["hf-to-mcore", "--hf", nowts, "--out", tmp_path / "o"], capsys)
    assert rc != 0 and "safetensors" in err
    assert not (tmp_path / "o").exists()


def test_cli_tp_not_dividing_heads(qwen_dir, tmp_path, capsys):
    rc, err = _convert_main(["hf-to-mcore", "--hf", qwen_dir / "hf", "--out", tmp_path / "o",
                             "--tp", 3], capsys)
    assert rc != 0 and "parallel.tp=3" in err and "attention heads" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ local <-> TE checkpoint keys
def test_local_checkpoint_uses_te_names_and_loads_without_te_extra_state(qwen_dir, world1, capsys):
    """A TE-spec model asks a checkpoint for each fused module's ``_extra_state`` (FP8 scales,
    a ShardedObject). Checkpoints we write without TE have none: loading must still work, and
    the norms must be stored under TE's names. Real megatron dist checkpointing; the TE side is
    represented by the ShardedObjects a TE model requests beyond the local spec (TE itself
    cannot exist here)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from megatron_nft.checkpoint import convert as C
    from megatron_nft.megatron.model import build_gpt_model

    hf, ck = qwen_dir / "hf", qwen_dir / "mcore_local"
    src = build_gpt_model(hf, transformer_impl="local", params_dtype=torch.float32)
    C.load_hf_into_model([src], hf, progress=False)
    C.save_dist_checkpoint([src], ck, hf_dir=hf, overwrite=True)
    keys = set(dist_checkpointing.load_tensors_metadata(str(ck)))
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys  # TE names
    assert "decoder.layers.mlp.linear_fc1.layer_norm_weight" in keys
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in keys)

    def with_request(model, extra):
        orig = model.sharded_state_dict

        def sharded_state_dict(*a, **kw):
            sd = orig(*a, **kw)
            sd.update(extra)
            return sd
        model.sharded_state_dict = sharded_state_dict
        return model

    # what TE's fused core attention requests on top of the local spec (megatron's own linear
    # layers already write TE-compatible None ``_extra_state`` entries): one ShardedObject per
    # layer under the stacked key, built the way megatron builds its linear layers' ones
    base = src.sharded_state_dict()
    fp8_meta = {}
    for i in range(4):
        lin = base[f"decoder.layers.{i}.self_attention.linear_proj._extra_state"]
        assert isinstance(lin, ShardedObject) and lin.data is None
        key = lin.key.replace("linear_proj", "core_attention")
        fp8_meta[f"decoder.layers.{i}.self_attention.core_attention._extra_state"] = ShardedObject(
            key, None, lin.global_shape, lin.global_offset, lin.replica_id)
    dst = with_request(build_gpt_model(hf, transformer_impl="local", params_dtype=torch.float32), fp8_meta)
    C.load_dist_checkpoint([dst], ck)
    assert "FP8 scaling state starts fresh" in capsys.readouterr().out
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), n

    w = torch.zeros(4)
    from megatron.core.dist_checkpointing import ShardedTensor
    missing = {"decoder.layers.0.extra.weight": ShardedTensor.from_rank_offsets("decoder.layers.0.extra.weight", w)}
    other = with_request(build_gpt_model(hf, transformer_impl="local", params_dtype=torch.float32), missing)
    with pytest.raises(C.ConversionError, match="lacks 1 entry.*decoder.layers.0.extra.weight"):
        C.load_dist_checkpoint([other], ck)
