"""Training checkpoints you can use: every ``checkpoints/step_N`` carries hf_config.json and the
tokenizer beside its model weights (``step_N/dist``), ``checkpoints/latest`` names the newest
step, and ``nft-convert mcore-to-hf`` takes a step directory or the run directory; time-based
checkpoints (``checkpoint.interval_minutes``) and a periodic HF export. Independent
reference: the trainer's own ``hf/`` export of the last step (bit for bit), and the base model
(an earlier step differs from the last one)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from _dist_helpers import PYTHON, _run
from test_train_offline import _recipe, _train, _write_offline
from megatron_nft.testing import make_tiny_qwen2

pytestmark = pytest.mark.slow


def _convert(src, out):
    p = _run([PYTHON, "-m", "megatron_nft.checkpoint.convert", "mcore-to-hf", "--mcore", str(src), "--out", str(out)],
             600)
    assert p.returncode == 0, p.output
    return load_file(str(out / "model.safetensors"))


def test_step_and_run_directories_convert_to_the_hf_export(tmp_path):
    hf = make_tiny_qwen2(tmp_path / "base", vocab=1100, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32)
    recipe = _recipe(tmp_path, hf, _write_offline(tmp_path))
    run = tmp_path / "run"
    p = _train(1, recipe, f"output.dir={run}", "train.max_steps=3", "train.prompts_per_step=2", "checkpoint.keep=2",
               "checkpoint.interval=0", "checkpoint.interval_minutes=0.0001", "checkpoint.export_hf_interval=2")
    assert "[nft] step 2: exported" in p.stdout and "[nft] step 1: exported" not in p.stdout
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (ckpts / "latest").read_text().strip() == "step_00000003"
    step3 = ckpts / "step_00000003"
    assert json.loads((step3 / "dist" / "hf_config.json").read_text()) == json.loads((hf / "config.json").read_text())
    assert (step3 / "dist" / "tokenizer" / "tokenizer_config.json").is_file()

    ref = load_file(str(run / "hf" / "model.safetensors"))
    for src in (run, step3):  # the run directory resolves to checkpoints/latest
        out = tmp_path / f"conv_{src.name}"
        got = _convert(src, out)
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
        assert (out / "model.safetensors").read_bytes() == (run / "hf" / "model.safetensors").read_bytes()
        assert (out / "tokenizer_config.json").is_file()
    step2 = _convert(ckpts / "step_00000002", tmp_path / "conv_step2")
    assert any(not torch.equal(step2[k], ref[k]) for k in ref), "step 2 and step 3 weights are the same"
