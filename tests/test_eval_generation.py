"""nft-eval at node scale, on CPU: the seeded chunk plan, ``--dp 2`` == ``--dp 1`` with the HF
engine, kill-and-resume of the generations file, the ``--tp`` path into vLLM's own executor,
and response length / context taken from a recipe."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from megatron_nft.eval.engines import cpu_bind_lists, vllm_llm_kwargs
from megatron_nft.eval.generation import GenerationStore, block_size, plan_chunks
from megatron_nft.rollout import vllm_available
from tools import eval as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "eval")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "math500.jsonl")),
                                reason=f"benchmark files not found in {DATA}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from megatron_nft.testing import make_tiny_qwen2

    return str(make_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "model"))


def _lines(path) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return sorted(out, key=lambda r: (r["benchmark"], r["idx"], r["sample"]))


def test_plan_is_fixed_and_covers_every_sample():
    assert [block_size(n, 8) for n in (1, 4, 7, 12, 32)] == [1, 4, 7, 6, 8]
    chunks = plan_chunks({"aime24": [0, 1, 2], "math500": [5]}, {"aime24": 4, "math500": 1},
                         seed=0, max_block=2, chunk_units=4)
    # aime24: 3 problems x 2 blocks of 2 = 6 units -> chunks of 4 and 2; math500: 1 unit
    assert [(c.benchmark, c.units, c.block) for c in chunks] == [
        ("aime24", ((0, 0), (0, 2), (1, 0), (1, 2)), 2), ("aime24", ((2, 0), (2, 2)), 2), ("math500", ((5, 0),), 1)]
    keys = [k for c in chunks for k in c.keys()]
    assert len(keys) == len(set(keys)) == 13
    assert plan_chunks({"aime24": [0, 1, 2]}, {"aime24": 4}, seed=0, max_block=2, chunk_units=4)[0].seed == chunks[0].seed
    assert plan_chunks({"aime24": [0, 1, 2]}, {"aime24": 4}, seed=1, max_block=2, chunk_units=4)[0].seed != chunks[0].seed


def _gen_args(tiny, out_dir, name, extra=()):
    gens = os.path.join(out_dir, f"{name}.gens.jsonl")
    res = os.path.join(out_dir, f"{name}.json")
    return gens, res, ["--model", tiny, "--data-dir", DATA, "--benchmarks", "aime24,math500", "--limit", "3",
                       "--n", "4", "--max-block", "2", "--chunk-prompts", "2", "--max-tokens", "6",
                       "--engine", "hf", "--save-responses", gens, "--out", res, "--no-progress", *extra]


@needs_data
def test_dp2_equals_dp1(tiny, tmp_path):
    g1, r1, a1 = _gen_args(tiny, tmp_path, "dp1", ["--dp", "1"])
    g2, r2, a2 = _gen_args(tiny, tmp_path, "dp2", ["--dp", "2"])
    assert cli.main(a1) == 0 and cli.main(a2) == 0
    l1, l2 = _lines(g1), _lines(g2)
    assert len(l1) == 2 * 3 * 4 and l1 == l2
    assert len({r["response"] for r in l1}) > 1  # sampled, not one repeated text
    s1, s2 = json.loads(open(r1).read()), json.loads(open(r2).read())
    for b in ("aime24", "math500"):
        assert s1[b] == s2[b]
        assert (s1[b]["k"], s1[b]["n_problems"]) == (4, 3)
    assert s2["meta"]["dp"] == 2


@needs_data
def test_resume_after_cut_and_settings_guard(tiny, tmp_path):
    full, _, args = _gen_args(tiny, tmp_path, "full")
    assert cli.main(args) == 0
    ref = _lines(full)
    cut, _, cargs = _gen_args(tiny, tmp_path, "cut")
    with open(full) as f:
        text = f.read().splitlines(keepends=True)
    with open(cut, "w") as f:  # a run killed mid-write: 5 whole lines and half of the 6th
        f.writelines(text[:5])
        f.write(text[5][: len(text[5]) // 2])
    shutil.copy(full + ".meta.json", cut + ".meta.json")
    assert cli.main(cargs) == 0
    assert _lines(cut) == ref
    # other settings on an existing file are refused, naming what differs
    with pytest.raises(SystemExit, match="max_tokens"):
        cli.main(cargs[:-1] + ["--max-tokens", "7", "--no-progress"])


@needs_data
def test_kill_and_resume(tiny, tmp_path):
    gens = str(tmp_path / "k.gens.jsonl")
    args = ["--model", tiny, "--data-dir", DATA, "--benchmarks", "math500", "--limit", "12", "--n", "1",
            "--chunk-prompts", "1", "--max-tokens", "32", "--engine", "hf", "--no-progress", "--save-responses", gens]
    proc = subprocess.Popen([sys.executable, "-m", "tools.eval", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(gens) and os.path.getsize(gens) > 0:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_killed = len(_lines(gens))
    assert 1 <= n_killed < 12, "the run was not killed part-way"
    assert cli.main(args) == 0
    resumed = _lines(gens)
    ref = str(tmp_path / "ref.gens.jsonl")
    assert cli.main(args[:-1] + [ref]) == 0
    assert resumed == _lines(ref) and len(resumed) == 12


def test_tp_kwargs_for_vllm():
    kw = vllm_llm_kwargs("/m", tp=2, seed=3, dtype=None, on_cpu=False)
    assert kw == dict(model="/m", tensor_parallel_size=2, seed=3, max_model_len=None, dtype="bfloat16",
                      distributed_executor_backend="mp", gpu_memory_utilization=0.85)
    kw1 = vllm_llm_kwargs("/m", tp=1, seed=0, dtype=None, on_cpu=True)
    assert "distributed_executor_backend" not in kw1 and kw1["enforce_eager"] and "gpu_memory_utilization" not in kw1
    assert cpu_bind_lists(1).count("|") == 0
    with pytest.raises(ValueError, match="--tp"):
        vllm_llm_kwargs("/m", tp=0, seed=0, dtype=None, on_cpu=True)


@pytest.mark.skipif(not vllm_available(), reason="vllm not installed")
def test_tp2_reaches_vllm_multiproc_executor(tiny, monkeypatch):
    """The real ``vllm.LLM`` with ``--tp 2``'s kwargs builds its config and selects vLLM's own
    multiprocessing executor (stopped there: starting two CPU workers is a resource question)."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from megatron_nft.eval.engines import VLLMEvalEngine

    seen = {}

    class Reached(Exception):
        pass

    def init_executor(self):
        pc = self.parallel_config
        seen.update(tp=pc.tensor_parallel_size, backend=pc.distributed_executor_backend, world=pc.world_size)
        raise Reached

    monkeypatch.setattr(MultiprocExecutor, "_init_executor", init_executor)
    with pytest.raises(Reached):
        VLLMEvalEngine(tiny, tp=2, seed=0, max_model_len=128)
    assert seen == {"tp": 2, "backend": "mp", "world": 2}


def test_tp_needs_vllm_and_gpus(tiny, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--engine vllm"):
        cli.main(["--model", tiny, "--data-dir", DATA, "--engine", "hf", "--tp", "2"])
    from megatron_nft.eval.generation import gpu_groups

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert gpu_groups(2, 4) == ["0,1,2,3", "4,5,6,7"] and gpu_groups(8, 1)[7] == "7"
    with pytest.raises(ValueError, match="lower --dp"):
        gpu_groups(3, 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_groups(2, 1) == [None, None]


def test_recipe_sets_lengths_and_paper_row():
    args = cli.build_parser().parse_args(["--responses", "x", "--recipe", os.path.join(ROOT, "recipes", "nft_qwen2.5_32b.yaml")])
    key = cli.apply_recipe(args)
    assert (args.max_tokens, args.max_model_len, args.temperature, args.top_p) == (14336, 2048 + 14336, 0.6, 0.7)
    assert key == {"model": "Qwen/Qwen2.5-32B", "method": "nft"}
    args = cli.build_parser().parse_args(["--responses", "x", "--recipe", os.path.join(ROOT, "recipes", "nft_qwen2.5_32b.yaml"),
                                          "--max-tokens", "100", "--paper-row", "Qwen2.5-Math-7B:rft"])
    assert cli.apply_recipe(args) == {"model": "Qwen2.5-Math-7B", "method": "rft"} and args.max_tokens == 100
    plain = cli.build_parser().parse_args(["--responses", "x"])
    assert cli.apply_recipe(plain) == {} and (plain.max_tokens, plain.max_model_len) == (3584, None)


def test_store_skips_done_and_ignores_cut_line(tmp_path):
    chunks = plan_chunks({"aime24": [0, 1]}, {"aime24": 2}, seed=0, max_block=2, chunk_units=1)
    path = str(tmp_path / "g.jsonl")
    st = GenerationStore(path, {"a": 1})
    st.add(chunks[0], [{"text": "x", "finish_reason": "stop"}, {"text": "y", "finish_reason": "length"}])
    st.close()
    with open(path, "a") as f:
        f.write('{"benchmark": "aime24", "idx": 1, "sam')  # killed mid-write
    st = GenerationStore(path, {"a": 1})
    assert [c.units for c in st.missing(chunks)] == [((1, 0),)]
    st.add(chunks[1], [{"text": "z", "finish_reason": "stop"}] * 2)
    st.close()
    assert [r["response"] for r in _lines(path)] == ["x", "y", "z", "z"]
    with pytest.raises(ValueError, match="other settings"):
        GenerationStore(path, {"a": 2})


def test_slurm_eval_uses_every_gpu():
    def dry(*args, **env):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NFT_"))}
        e.update(env, NFT_EVAL_DRY="1", PATH="/usr/bin:/bin")  # no nvidia-smi: Slurm's count only
        r = subprocess.run(["bash", os.path.join(ROOT, "slurm", "eval.sh"), *args], cwd=ROOT, env=e,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.split("-m tools.eval ", 1)[1].split()

    assert dry("--model", "m", "--tp", "4", SLURM_GPUS_ON_NODE="8") == ["--dp", "2", "--model", "m", "--tp", "4"]
    assert dry("--model", "m", SLURM_GPUS_ON_NODE="8", NFT_EVAL_TP="2") == ["--tp", "2", "--dp", "4", "--model", "m"]
    assert dry("--model", "m", "--dp", "3", SLURM_GPUS_ON_NODE="8") == ["--tp", "1", "--model", "m", "--dp", "3"]
    assert dry("--model", "m") == ["--tp", "1", "--dp", "1", "--model", "m"]
