"""`nft-train --dry-run` (megatron_nft/plan.py) and the cluster recipes."""
import glob
import json
import os
import pathlib
import re
import tempfile

import pytest
import torch
from safetensors.torch import save_file

from megatron_nft.config import load_config
from megatron_nft.plan import KNOWN_ARCHS, resolve_arch
from megatron_nft.train import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = os.path.join(ROOT, "recipes")
R7 = os.path.join(R, "nft_qwen2.5_math_7b.yaml")
R32 = os.path.join(R, "nft_qwen2.5_32b.yaml")
PEAK = re.compile(r"\[memory\] peak per GPU: ([0-9.]+) GiB of ([0-9.]+) GiB -> (FITS|DOES NOT FIT)")


def dry(capsys, recipe, *sets):
    """Dry run with the shipped data paths replaced by existing ones (later ``sets`` win)."""
    argv = ["--recipe", recipe, "--dry-run"]
    for s in (f"data.train={_DATA[0]}", f"data.eval={_DATA[1]}") + sets:
        argv += ["--set", s]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _existing_data(root):
    """A prompt file and a benchmark directory that exist, standing in for the shipped paths."""
    root = pathlib.Path(root)
    train = root / "train.jsonl"
    train.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1?"}], "answer": "2"}) + "\n")
    ev = root / "eval"
    ev.mkdir(exist_ok=True)
    (ev / "aime24.jsonl").write_text(json.dumps({"problem": "2+2?", "answer": "4"}) + "\n")
    return str(train), str(ev)


_DATA = _existing_data(tempfile.mkdtemp(prefix="nft-plan-data-"))


def peak(out):
    m = PEAK.search(out)
    assert m, f"no memory line in:\n{out}"
    return float(m.group(1)), float(m.group(2)), m.group(3)


def test_32b_on_16x8_fits(capsys):
    rc, out, err = dry(capsys, R32)
    assert rc == 0, err
    assert "world 128; layout TP 8 x PP 2 x DP 8" in out
    gib, cap, verdict = peak(out)
    assert verdict == "FITS" and cap == 80 and 20 < gib < 80
    assert "32 vLLM engines x TP 4" in out
    assert "tokens per step <= 134,217,728" in out  # 512 x 16 x (2048 + 14336)


def test_7b_on_4x8_fits(capsys):
    rc, out, err = dry(capsys, R7)
    assert rc == 0, err
    assert "world 32; layout TP 2 x PP 1 x DP 16" in out
    gib, _, verdict = peak(out)
    assert verdict == "FITS" and 20 < gib < 80
    assert "~8 micro-batches of 16384 tokens per update" in out  # 32 answers x 4096 / 16384


def test_tp_not_dividing_heads_names_key(capsys):
    rc, _, err = dry(capsys, R32, "parallel.tp=3")
    assert rc != 0
    assert "parallel.tp: 3 does not divide num_attention_heads 40" in err
    assert "use 1, 2, 4, 8" in err


def test_world_size_not_divisible_names_keys(capsys):
    rc, _, err = dry(capsys, R32, "cluster.nodes=3")  # world 24, TP 8 x PP 2 = 16
    assert rc != 0
    assert "parallel.tp x parallel.pp: 8 x 2 = 16 does not divide the world size 24" in err
    assert "cluster.nodes" in err


def test_pp_not_dividing_layers_and_layer_split(capsys):
    base = ("cluster.nodes=3", "parallel.pp=3")  # world 24 = TP 2 x PP 3 x DP 4; 28 layers
    rc, _, err = dry(capsys, R7, *base)
    assert rc != 0 and "parallel.pp: 3 does not divide num_layers 28" in err
    assert "parallel.pp_layer_split" in err
    rc, out, err = dry(capsys, R7, *base, "parallel.pp_layer_split=10,9,9")
    assert rc == 0, err
    assert "layers per stage 10,9,9" in out
    rc, _, err = dry(capsys, R7, *base, "parallel.pp_layer_split=10,10,10")
    assert rc != 0 and "parallel.pp_layer_split" in err


@pytest.mark.parametrize("setting,key", [
    ("rollout.vllm_tp=3", "rollout.vllm_tp"),
    ("train.updates_per_rollout=7", "train.updates_per_rollout"),
    ("train.micro_batch_tokens=8192", "train.micro_batch_tokens"),
    ("train.prompts_per_step=500", "train.prompts_per_step"),  # 8000 / 16 = 500 answers, DP 8
    ("algorithm.overlong_buffer=20000", "algorithm.overlong_buffer"),
    ("rollout.gpu_memory_utilization=0.2", "rollout.gpu_memory_utilization"),  # no KV room
    ("parallel.virtual_pp=2", "parallel.virtual_pp"),  # not implemented: refused, never ignored
])
def test_invalid_settings_name_the_key(capsys, setting, key):
    rc, _, err = dry(capsys, R32, setting)
    assert rc != 0
    assert key in err, err


def test_does_not_fit(capsys):
    rc, out, err = dry(capsys, R32, "parallel.tp=1", "parallel.pp=1")
    assert rc != 0
    assert peak(out)[2] == "DOES NOT FIT"
    assert "cluster.gpu_memory_gb" in err


def test_all_recipes_load():
    files = sorted(glob.glob(os.path.join(R, "*.yaml")))
    names = {os.path.basename(f) for f in files}
    for algo in ("nft", "rft", "grpo", "drgrpo", "dapo"):
        assert {f"{algo}_qwen2.5_math_7b.yaml", f"{algo}_qwen2.5_32b.yaml"} <= names
    for f in files:
        load_config(f)


def test_no_two_recipes_share_an_output_dir():
    files = sorted(glob.glob(os.path.join(R, "*.yaml")))
    dirs = {f: os.path.normpath(load_config(f).output.dir) for f in files}
    assert len(set(dirs.values())) == len(files), dirs
    assert dirs[os.path.join(R, "dapo_qwen2.5_math_7b.yaml")] == os.path.join("outputs", "dapo_qwen2.5_math_7b")


CLUSTER = sorted(glob.glob(os.path.join(R, "*_qwen2.5_*.yaml")))


@pytest.mark.parametrize("recipe", CLUSTER)
def test_cluster_recipes_dry_run(capsys, recipe):
    rc, out, err = dry(capsys, recipe)  # shipped paths replaced by existing ones
    assert rc == 0, err
    assert peak(out)[2] == "FITS"


@pytest.mark.parametrize("recipe", CLUSTER)
def test_cluster_recipes_print_time_gpu_hours_and_checkpoint_size(capsys, recipe):
    """Time per step by phase, the run's wall time and GPU-hours, checkpoint size x keep and the
    signal lead; checked against arithmetic on the printed numbers and the recipe."""
    rc, out, err = dry(capsys, recipe)
    assert rc == 0, err
    cfg = load_config(recipe)
    world = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    assert re.search(r"\[time\] per rollout step ~[0-9.]+ (s|min|h): generation .* tokens/s per engine\), "
                     r"train \+ old log-probs", out), out
    m = re.search(r"\[time\] (\d+) steps: ~([0-9.]+) h wall, ~([0-9,]+) GPU-hours; ~(\d+) requeue", out)
    assert m and int(m.group(1)) == cfg.train.max_steps
    hours, gpu_h = float(m.group(2)), float(m.group(3).replace(",", ""))
    assert gpu_h == pytest.approx(hours * world, rel=0.01, abs=world * 0.05)
    assert int(m.group(4)) == max(0, -(-hours // (cfg.plan.job_hours - 0.25)) - 1)
    params = float(re.search(r"\[plan\] parameters ([0-9.]+) B", out).group(1)) * 1e9
    d = re.search(r"\[disk\] checkpoint ([0-9.]+) GiB x keep (\d+) = ([0-9.]+) GiB", out)
    assert float(d.group(1)) == pytest.approx(params * 14 / 2 ** 30, rel=0.01)  # bf16 + fp32 main + 2 moments
    assert int(d.group(2)) == cfg.checkpoint.keep
    assert re.search(r"#SBATCH --signal=B:USR1@\d+; --cpus-per-task=\d+ --mem=\d+G", out)


def test_time_flag_sets_the_requeue_count(capsys):
    from megatron_nft.train import slurm_hours

    assert [slurm_hours(t) for t in ("90", "30:00", "24:00:00", "2-12", "1-00:30")] == [1.5, 0.5, 24.0, 60.0, 24.5]
    rc, out, err = dry(capsys, R7, "plan.job_hours=1000")
    assert rc == 0 and "~0 requeue(s) at --time 1000 h" in out
    argv = ["--recipe", R7, "--dry-run", "--time", "2-00:00:00", "--set", f"data.train={_DATA[0]}",
            "--set", f"data.eval={_DATA[1]}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    hours = float(re.search(r"~([0-9.]+) h wall", out).group(1))
    assert f"~{max(0, -(-hours // (48 - 0.25)) - 1):.0f} requeue(s) at --time 48 h" in out


@pytest.mark.parametrize("wrapper,recipe", [("nft_7b.sh", R7), ("nft_32b.sh", R32)])
def test_slurm_wrappers_follow_the_plan(capsys, wrapper, recipe):
    """The wrappers' signal lead covers what the plan says a step needs; --cpus-per-task and
    --mem are the plan's."""
    rc, out, err = dry(capsys, recipe)
    assert rc == 0, err
    lead, cpus, mem = re.search(r"signal lead >= (\d+) s .*--cpus-per-task=(\d+) --mem=(\d+G)", out).groups()
    text = open(os.path.join(ROOT, "slurm", wrapper)).read()
    assert int(re.search(r"#SBATCH --signal=B:USR1@(\d+)\n", text).group(1)) >= int(lead)
    assert f"#SBATCH --cpus-per-task={cpus}\n" in text and f"#SBATCH --mem={mem}\n" in text


@pytest.mark.parametrize("recipe", CLUSTER[:1])
def test_dry_run_names_missing_data_paths(capsys, tmp_path, recipe):
    rc, out, err = dry(capsys, recipe, f"data.train={tmp_path / 'none.jsonl'}", f"data.eval={tmp_path / 'ev'}")
    assert rc != 0 and "data.train" in err and "nft-prepare-data --format reference" in err
    assert "data.eval" in err
    (tmp_path / "ev").mkdir()  # a directory without any benchmark file
    rc, out, err = dry(capsys, recipe, f"data.train={_existing_data(tmp_path)[0]}", f"data.eval={tmp_path / 'ev'}")
    assert rc != 0 and "holds none of the benchmark files" in err


def test_cluster_recipes_train_like_the_reference():
    for f in CLUSTER:
        c = load_config(f)
        assert c.rollout.reward == "strict_box" and c.data.system_prompt == ""
        assert c.data.train.endswith("-boxed.jsonl") and c.data.eval == "data/eval"
        assert c.rollout.vllm_kwargs.get("enable_prefix_caching") is True
        assert (c.eval.interval, c.eval.benchmarks, c.eval.grader) == (2, "all", "reference")
    t = load_config(os.path.join(R, "tiny_cpu.yaml"))
    assert t.rollout.reward == "math_verifier" and t.data.eval == "synthetic"
    assert load_config(R7, ["rollout.vllm_kwargs.max_num_seqs=64"]).rollout.vllm_kwargs["max_num_seqs"] == 64
    assert load_config(R7).algorithm.aggregation == "token-sum-dp-mean"


def test_paper_hyperparameters():
    for f, lens in ((R7, (512, 3584)), (R32, (2048, 14336))):
        c = load_config(f)
        assert (c.train.prompts_per_step, c.rollout.n, c.train.updates_per_rollout) == (512, 16, 16)
        assert c.rollout.gen_batch_multiplier * c.train.prompts_per_step == 1536
        assert c.rollout.max_refill_rounds == 10
        assert (c.train.lr, c.train.lr_schedule, c.train.warmup_steps) == (1e-6, "constant", 10)
        assert (c.train.weight_decay, c.train.grad_clip) == (0.1, 1.0)
        assert (c.algorithm.name, c.algorithm.epsilon, c.algorithm.weighting) == ("nft", 1.0, "1-r")
        assert (c.rollout.max_prompt_tokens, c.rollout.max_response_tokens) == lens
        assert (c.rollout.temperature, c.rollout.top_p, c.eval.temperature, c.eval.top_p) == (1.0, 1.0, 0.6, 0.7)
        assert c.precision.fp8 is None
    d32 = load_config(os.path.join(R, "dapo_qwen2.5_32b.yaml")).algorithm
    assert (d32.clip_low, d32.clip_high, d32.aggregation, d32.overlong_buffer, d32.overlong_penalty) == \
        (0.2, 0.28, "token-mean", 4096, 1.0)


@pytest.mark.parametrize("size", ["qwen2.5_math_7b", "qwen2.5_32b"])
@pytest.mark.parametrize("algo", ["rft", "grpo", "drgrpo", "dapo"])
def test_variants_override_only_algorithm(algo, size):
    base = load_config(os.path.join(R, f"nft_{size}.yaml")).to_dict()
    var = load_config(os.path.join(R, f"{algo}_{size}.yaml")).to_dict()
    assert var["algorithm"]["name"] == algo
    assert var["output"]["dir"] == os.path.join("outputs", f"{algo}_{size}") != base["output"]["dir"]
    base.pop("algorithm"), var.pop("algorithm"), base.pop("output"), var.pop("output")
    assert var == base


def test_arch_from_local_hf_dir(tmp_path, capsys):
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
           "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 6, "num_attention_heads": 6,
           "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True}
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    rc, _, err = dry(capsys, R7, f"model.hf_path={d}")  # the dry run reads the tokenizer and weight headers too
    assert rc == 2 and "has no tokenizer" in err and "has no *.safetensors weights" in err
    (d / "tokenizer_config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    rc, _, err = dry(capsys, R7, f"model.hf_path={d}")
    assert rc == 2 and "model.safetensors is not a readable safetensors file" in err
    save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
    rc, out, err = dry(capsys, R7, f"model.hf_path={d}")  # TP 2 divides 6 heads / 2 kv heads
    assert rc == 0, err
    assert "6 layers, hidden 256" in out and str(d / "config.json") in out
    rc, _, err = dry(capsys, R7, f"model.hf_path={d}", "parallel.tp=4")
    assert rc != 0 and "parallel.tp: 4 does not divide num_attention_heads 6" in err


def test_unknown_model_names_hf_path(capsys):
    rc, _, err = dry(capsys, R7, "model.hf_path=org/Some-Unknown-Model")
    assert rc != 0 and "model.hf_path" in err


def test_missing_model_path_names_it(capsys):
    """A local path that does not exist is an error naming it, even with a known basename; a
    hub-style name of the built-in table is a warning unless plan.strict_paths."""
    rc, _, err = dry(capsys, R32, "model.hf_path=/nonexistent/Qwen2.5-32B")
    assert rc == 2 and "'/nonexistent/Qwen2.5-32B' is not a local directory" in err
    rc, out, err = dry(capsys, R32)
    assert rc == 0 and "warning: model.hf_path: 'Qwen/Qwen2.5-32B' is not a local directory" in err
    rc, _, err = dry(capsys, R32, "plan.strict_paths=true")
    assert rc == 2 and "'Qwen/Qwen2.5-32B' is not a local directory" in err


def test_builtin_table_by_basename():
    cfg = load_config(R32, ["model.hf_path=/nonexistent/Qwen2.5-32B/"])
    a = resolve_arch(cfg)
    assert (a.num_layers, a.hidden_size, a.num_kv_heads) == (64, 5120, 8)
    assert set(KNOWN_ARCHS) == {"qwen2.5-math-7b", "qwen2.5-32b"}


def test_tiny_recipe_dry_run(capsys):
    rc, out, err = dry(capsys, os.path.join(R, "tiny_cpu.yaml"), "cluster.nodes=2", "cluster.gpus_per_node=1")
    assert rc == 0, err
    assert "layout TP 1 x PP 1 x DP 2" in out
