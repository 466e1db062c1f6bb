"""Recipe config: YAML -> dataclasses, includes, --set overrides, errors that name the key."""
import glob
import os
import textwrap

import pytest

from megatron_nft.config import ConfigError, RecipeConfig, dump_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_reserved_keys_only_recipe_fills_defaults(tmp_path):
    r = write(tmp_path, "r.yaml", """
        seed: 7
        model: {hf_path: /models/qwen}
        parallel: {tp: 2, pp: 2}
        algorithm: {name: rft, epsilon: 0.5, weighting: grpo}
        train: {lr: 2.0e-6, max_steps: 3}
        rollout: {source: data.jsonl}
        checkpoint: {interval: 2}
        output: {dir: out/x}
    """)
    cfg = load_config(r)
    assert cfg.seed == 7 and cfg.model.hf_path == "/models/qwen"
    assert (cfg.parallel.tp, cfg.parallel.pp) == (2, 2)
    assert cfg.algorithm.name == "rft" and cfg.algorithm.epsilon == 0.5 and cfg.algorithm.weighting == "grpo"
    assert cfg.train.lr == 2e-6 and cfg.train.max_steps == 3
    assert cfg.rollout.source == "data.jsonl" and cfg.checkpoint.interval == 2 and cfg.output.dir == "out/x"
    # untouched keys keep the dataclass defaults
    assert cfg.train.weight_decay == RecipeConfig().train.weight_decay


def test_overrides_coerce_types(tmp_path):
    cfg = load_config(None, ["parallel.tp=4", "train.lr=1e-6", "rollout.source=null",
                             "parallel.sequence_parallel=true", "algorithm.tis_cap=2",
                             "model.hf_path=/a/b=c", "output.dir=123"])
    assert cfg.parallel.tp == 4 and isinstance(cfg.parallel.tp, int)
    assert cfg.train.lr == 1e-6 and isinstance(cfg.train.lr, float)
    assert cfg.rollout.source is None
    assert cfg.parallel.sequence_parallel is True
    assert cfg.algorithm.tis_cap == 2.0 and isinstance(cfg.algorithm.tis_cap, float)
    assert cfg.model.hf_path == "/a/b=c"
    assert cfg.output.dir == "123"


@pytest.mark.parametrize("override,needle", [
    ("algorithm.name=ppo", "algorithm.name"),
    ("algorithm.weighting=sqrt", "'1-r', 'grpo', 'none'"),
    ("parallel.tp=two", "parallel.tp"),
    ("parallel.tq=2", "unknown key 'parallel.tq'"),
    ("trian.lr=1", "unknown key 'trian'"),
    ("train.lr=-1", "train.lr"),
    ("algorithm.epsilon=0", "algorithm.epsilon"),
    ("parallel.sequence_parallel=maybe", "parallel.sequence_parallel"),
    ("noequals", "KEY=VALUE"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match="did you mean 'parallel.tp'"):
        load_config(None, ["parallel.tpp=2"])


def test_include_and_override_order(tmp_path):
    write(tmp_path, "base.yaml", """
        train: {lr: 1.0e-6, max_steps: 10}
        algorithm: {name: nft}
    """)
    child = write(tmp_path, "child.yaml", """
        include: base.yaml
        algorithm: {name: dapo, clip_high: 0.28}
    """)
    cfg = load_config(child, ["train.max_steps=5"])
    assert cfg.algorithm.name == "dapo" and cfg.algorithm.clip_high == 0.28
    assert cfg.train.lr == 1e-6 and cfg.train.max_steps == 5


def test_include_cycle_and_missing_file(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    b = write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(b)
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["parallel.tp=2", "algorithm.name=grpo"])
    p = tmp_path / "dump.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(str(p)) == cfg


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml"))))
def test_shipped_recipes_load(recipe, tmp_path):
    cfg = load_config(recipe)
    assert isinstance(cfg, RecipeConfig)
    # what the recipe says survives a dump/load round trip (no key silently dropped)
    p = tmp_path / "dump.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(str(p)) == cfg


def test_output_dir_auto_and_vllm_kwargs(tmp_path):
    p = tmp_path / "my_baseline.yaml"
    p.write_text("output: {dir: auto}\nrollout: {vllm_kwargs: {max_num_seqs: 128, enforce_eager: true}}\n")
    cfg = load_config(str(p))
    assert cfg.output.dir == os.path.join("outputs", "my_baseline")
    assert cfg.rollout.vllm_kwargs == {"max_num_seqs": 128, "enforce_eager": True}
    assert load_config(str(p), ["output.dir=elsewhere"]).output.dir == "elsewhere"
    over = load_config(str(p), ["rollout.vllm_kwargs={max_num_seqs: 8}"]).rollout.vllm_kwargs
    assert over == {"max_num_seqs": 8}
    assert load_config(str(p), ["rollout.vllm_kwargs.enable_prefix_caching=false"]).rollout.vllm_kwargs == {
        "max_num_seqs": 128, "enforce_eager": True, "enable_prefix_caching": False}
    with pytest.raises(ConfigError, match="rollout.vllm_kwargs.*mapping"):
        load_config(None, ["rollout.vllm_kwargs=[1, 2]"])
    with pytest.raises(ConfigError, match="rollout.reward.*strict_box"):
        load_config(None, ["rollout.reward=lenient"])
