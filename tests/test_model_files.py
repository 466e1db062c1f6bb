"""Damaged model files (real files of a tiny HF model): invalid config.json, a truncated or
overwritten model.safetensors, weights with NaN -- each one line naming the file and the fix."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_nft.checkpoint.hf_io import HFSafetensors, model_dir_config
from megatron_nft.stability import InputError
from megatron_nft.testing import make_tiny_qwen2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny"
    make_tiny_qwen2(d, vocab=300, hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, intermediate=64)
    return d


@pytest.fixture
def copy(tiny, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny, d)
    return d


def _read_all(d):
    with HFSafetensors(d) as st:
        return {n: st.get(n) for n in st.weight_map}


def test_invalid_config_json(copy):
    (copy / "config.json").write_text('{"vocab_size": 300,\n "hidden_size": }')
    with pytest.raises(InputError, match=r"config.json: invalid JSON \(line 2 column 17.*model.hf_path"):
        model_dir_config(str(copy))


def test_truncated_safetensors(copy):
    f = copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputError, match=r"model.safetensors: .*(not a readable safetensors|cannot be read).*re-download"):
        _read_all(copy)


def test_garbage_header(copy):
    f = copy / "model.safetensors"
    f.write_bytes(b"\xff" * 64 + f.read_bytes()[64:])
    with pytest.raises(InputError, match=r"model.safetensors: not a readable safetensors file"):
        _read_all(copy)


def test_non_finite_weights(copy):
    f = copy / "model.safetensors"
    w = load_file(str(f))
    name = sorted(w)[0]
    w[name] = w[name].clone()
    w[name].view(-1)[3] = float("nan")
    save_file(w, str(f), metadata={"format": "pt"})
    with pytest.raises(InputError, match=rf"tensor '{name}' has non-finite values"):
        _read_all(copy)


def test_intact_model_reads(tiny):
    got = _read_all(tiny)
    ref = load_file(str(tiny / "model.safetensors"))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
