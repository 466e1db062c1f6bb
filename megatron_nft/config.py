"""Typed recipe configuration.

A recipe is a YAML file mapped onto the dataclasses below. Recipes may start from
other recipes (``include: base.yaml`` or a list of files, resolved relative to the
including file), and command lines override single keys with ``--set a.b.c=value``.
Every key is checked: an unknown key or a value of the wrong type / outside the
allowed choices fails with a :class:`ConfigError` that names the key and what is
allowed, so a typo in a 32B recipe dies at start-up rather than hours in.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from megatron_nft.algorithms.registry import AGGREGATION_MODES, ALGORITHM_NAMES, NFT_WEIGHTINGS


class ConfigError(ValueError):
    """A recipe key is unknown or has a bad value; the message names the key."""


# --------------------------------------------------------------------------- sections


@dataclass
class TinyModelConfig:
    """Shape of the embedded tiny Qwen2-style model (used when ``model.hf_path`` is null)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    ffn_hidden_size: int = 352
    vocab_size: int = 512  # tokenizer trained offline to this size
    ops: str = "+"  # synthetic task operations, comma separated: "+", "-", "*"
    shape: Literal["mixed", "2+1"] = "2+1"  # operands: 2-digit + 1-digit, or 2-3 digit pairs
    bug_rate: float = 0.6  # warm-start answers computed with forgotten carries
    sft_steps: int = 200
    sft_batch: int = 64
    sft_lr: float = 1e-3


@dataclass
class ModelConfig:
    hf_path: Optional[str] = None  # HF dir or Megatron checkpoint; null = embedded tiny model
    transformer_impl: Literal["auto", "local", "sdpa", "transformer_engine"] = "auto"
    make_vocab_size_divisible_by: int = 128
    recompute: Literal["none", "selective", "full"] = "none"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    virtual_pp: Optional[int] = None
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    pp_layer_split: Optional[str] = None  # e.g. "15,17": uneven layers per pipeline stage
    # collective timeout (NCCL and the rollout's gloo group): longer than one generation round,
    # since ranks whose engine finished first wait in the gather (--dry-run warns)
    timeout_minutes: int = 60


@dataclass
class AlgorithmConfig:
    name: Literal[ALGORITHM_NAMES] = "nft"  # algorithms/registry.py
    epsilon: float = 1.0  # NFT: lower clip of the negative ratio (max_v(x, epsilon))
    weighting: Literal[NFT_WEIGHTINGS] = "1-r"  # NFT prompt weight omega(q)
    log_ratio_clamp: float = 10.0
    clip_low: float = 0.2  # GRPO/DAPO PPO clip
    clip_high: Optional[float] = None  # null = 0.28 for dapo (clip-higher), 0.2 otherwise
    aggregation: Literal[AGGREGATION_MODES] = "token-mean"
    loss_constant: float = 1000.0  # divisor for token-sum-norm / token-sum-dp-mean (reference: 1000)
    overlong_buffer: int = 0  # DAPO overlong reward shaping window (tokens); 0 = off
    overlong_penalty: float = 1.0
    tis_cap: Optional[float] = None  # token-level truncated importance sampling cap; null = off


@dataclass
class TrainConfig:
    lr: float = 1e-6
    min_lr: float = 0.0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 10
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    max_steps: int = 320  # rollout steps
    prompts_per_step: int = 512
    updates_per_rollout: int = 16  # optimizer steps per rollout step (mini-batches)
    micro_batch_tokens: int = 8192  # token budget of one packed micro-batch
    fused_adam: bool = True  # torch's fused AdamW kernel when megatron falls back to torch (no TE/apex)
    bf16: Optional[bool] = None  # null = bf16 on GPU, fp32 on CPU
    max_nonfinite_steps: int = 3  # consecutive non-finite (skipped) updates before the run stops
    spike_factor: float = 10.0  # warn when the grad norm exceeds this x its recent median; 0 = off
    # Time limits (runtime.StopSignal): stop, checkpoint and exit before the job's end time -- the
    # earliest of Slurm's (SLURM_JOB_END_TIME / squeue) and trainer start + time_limit_minutes.
    time_limit_minutes: Optional[float] = None
    stop_margin_s: float = 120.0  # kept free before the end time, beyond the measured checkpoint time
    sigterm_grace_s: float = 30.0  # SIGTERM -> SIGKILL (Slurm KillWait): checkpoint only if it fits


@dataclass
class RolloutConfig:
    source: Optional[str] = None  # null = online generation; a .jsonl path = offline rollouts
    engine: Literal["auto", "vllm", "hf"] = "auto"
    n: int = 16  # answers per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_tokens: int = 512
    max_response_tokens: int = 3584
    gen_batch_multiplier: float = 3.0  # generation batch = multiplier x prompts_per_step
    max_refill_rounds: int = 10
    vllm_tp: int = 1
    gpu_memory_utilization: float = 0.5
    sleep_mode: bool = True
    sync_bucket_mb: int = 512
    # Training reward: "strict_box" = the reference's verl math_dapo strict last box (exact
    # string match of the last \boxed{} in the last 100 characters); "math_verifier" = the
    # lenient math verifier (extraction + equivalence, last-number fallback).
    reward: Literal["math_verifier", "strict_box"] = "math_verifier"
    # Extra vllm.LLM arguments (max_num_seqs, enforce_eager, enable_prefix_caching, ...).
    vllm_kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    train: str = "synthetic"  # "synthetic" or a .jsonl/.parquet prompt file
    train_size: int = 20000  # number of prompts drawn from a synthetic/generated source
    eval: Optional[str] = "synthetic"
    eval_size: int = 128
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    system_prompt: str = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class EvalConfig:
    interval: int = 10  # rollout steps; 0 = only at start and end
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.7
    max_response_tokens: Optional[int] = None  # null = rollout.max_response_tokens
    # With data.eval a directory of benchmark files: comma-separated names from the evaluation
    # registry (eval/benchmarks.py) or "all" (every registered benchmark whose file is there).
    benchmarks: str = "all"
    limit: Optional[int] = None  # first N problems of each benchmark; null = all
    # benchmark grading: "ours" (eval/benchmarks.py grade: normalised last box / math verifier) or
    # "reference" (eval/reference.py: the NFT reference's math_dapo strict box / math-verify call)
    grader: Literal["ours", "reference"] = "ours"


@dataclass
class CheckpointConfig:
    interval: int = 20  # rollout steps; 0 = only at the end
    keep: int = 2
    export_hf: bool = True  # write output.dir/hf at the end
    interval_minutes: float = 0.0  # also checkpoint when this long passed since the last one; 0 = off
    export_hf_interval: int = 0  # also write output.dir/hf (the latest step's HF export) every N steps
    resume_from: Literal["latest", "previous"] = "latest"  # previous: skip a corrupt newest checkpoint
    allow_changed_keys: str = ""  # comma-separated recipe keys (or prefixes like data.) allowed to differ on resume


@dataclass
class OutputConfig:
    dir: str = "outputs/run"  # "auto" = outputs/<recipe file stem>
    tensorboard: bool = True
    wandb: bool = False  # also log to wandb, offline, under output.dir/wandb (pip install megatron-nft[wandb])


@dataclass
class PrecisionConfig:
    fp8: Optional[Literal["e4m3", "hybrid"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"


@dataclass
class ClusterConfig:
    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0


@dataclass
class PlanConfig:
    """Assumptions of ``--dry-run``'s time and size estimate (megatron_nft/plan_run.py): printed
    with the estimate; replace them with what a short run on your cluster measures."""
    mfu: float = 0.35  # training model-FLOPs utilisation
    gpu_tflops: float = 989.0  # dense bf16 peak per GPU (H100 SXM)
    hbm_tb_s: float = 3.35  # GPU memory bandwidth (decode is bound by it)
    decode_efficiency: float = 0.5  # fraction of hbm_tb_s a vLLM decode step reaches
    mean_response_frac: float = 0.5  # mean answer length / rollout.max_response_tokens
    refill_rounds: float = 1.5  # expected generation rounds per step (dynamic sampling)
    fs_write_gb_s: float = 2.0  # shared-filesystem write bandwidth for checkpoints (whole job)
    job_hours: float = 24.0  # the Slurm --time of one job (requeue count); nft-train --time sets it
    strict_paths: bool = False  # a model.hf_path that is not a local directory is an error, not a warning


@dataclass
class RecipeConfig:
    seed: int = 1234
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- coercion


def parse_layer_split(split) -> list[int]:
    """``parallel.pp_layer_split``: ``"15,17"`` / ``[15, 17]`` -> ``[15, 17]`` (layers per
    pipeline stage); raises ValueError naming the key on anything else."""
    if isinstance(split, str):
        try:
            return [int(x) for x in split.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError(f"parallel.pp_layer_split={split!r} is not a comma-separated list of "
                             "integers") from None
    return [int(x) for x in split]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_NULLS = {"null", "none", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to type ``tp`` or raise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NULLS)):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: got {value!r}; expected {_describe(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value.strip()):
                return a
        raise ConfigError(f"{key}: got {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: got {value!r}; expected a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}; expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}; expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected a number")
    if tp is dict:
        return _coerce_mapping(key, value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: got {value!r}; expected a string")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, key)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _coerce_mapping(key: str, value: Any) -> dict:
    """A free-form mapping (YAML, or a ``--set key='{a: 1}'`` string)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError:
            pass
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: got {value!r}; expected a mapping such as {{max_num_seqs: 256}}")
    return {str(k): v for k, v in value.items()}


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {full!r}{hint}; allowed keys here: {', '.join(names)}")
        kwargs[k] = _coerce(full, v, hints[k])
    return cls(**kwargs)


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: str, _seen: tuple = ()) -> dict:
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"include cycle: {' -> '.join(_seen + (path,))}")
    if not os.path.isfile(path):
        raise ConfigError(f"recipe file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at top level")
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        inc_path = inc if os.path.isabs(inc) else os.path.join(os.path.dirname(path), inc)
        merged = _deep_merge(merged, _read_yaml(inc_path, _seen + (path,)))
    return _deep_merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a","b","c"], parsed value). The value is read as YAML
    scalar (so ``null``, ``1e-6``, ``true`` work) and then coerced to the field type."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        value = raw  # keep composite-looking strings literal; field coercion decides
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
            node[p] = dict(nxt)
            node = node[p]
        node[path[-1]] = value
    return data


def validate(cfg: RecipeConfig) -> RecipeConfig:
    """Cross-field checks that don't depend on the model or cluster."""
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.parallel.tp >= 1, "parallel.tp", "must be >= 1")
    need(cfg.parallel.pp >= 1, "parallel.pp", "must be >= 1")
    need(cfg.algorithm.epsilon > 0, "algorithm.epsilon", "must be > 0 (the paper uses 1.0; 0.5 at 32B)")
    need(cfg.algorithm.clip_low >= 0, "algorithm.clip_low", "must be >= 0")
    need(cfg.algorithm.clip_high is None or cfg.algorithm.clip_high >= 0, "algorithm.clip_high", "must be >= 0 or null")
    need(cfg.train.lr > 0, "train.lr", "must be > 0")
    need(cfg.train.max_steps >= 0, "train.max_steps", "must be >= 0")
    need(cfg.train.updates_per_rollout >= 1, "train.updates_per_rollout", "must be >= 1")
    need(cfg.train.micro_batch_tokens >= 1, "train.micro_batch_tokens", "must be >= 1")
    need(cfg.rollout.n >= 2, "rollout.n", "must be >= 2: a group of one answer has no advantage, nothing trains")
    need(cfg.train.prompts_per_step >= 1, "train.prompts_per_step", "must be >= 1 (prompts per rollout step)")
    need(cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
    need(cfg.train.spike_factor >= 0, "train.spike_factor", "must be >= 0 (0 = no spike warning)")
    need(0 < cfg.rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    need(cfg.rollout.temperature >= 0, "rollout.temperature", "must be >= 0")
    need(cfg.rollout.gen_batch_multiplier >= 1, "rollout.gen_batch_multiplier", "must be >= 1")
    need(cfg.checkpoint.interval >= 0, "checkpoint.interval", "must be >= 0 (0 = only at the end)")
    need(cfg.checkpoint.interval_minutes >= 0, "checkpoint.interval_minutes", "must be >= 0 (0 = off)")
    need(cfg.checkpoint.export_hf_interval >= 0, "checkpoint.export_hf_interval", "must be >= 0 (0 = only at the end)")
    need(cfg.train.time_limit_minutes is None or cfg.train.time_limit_minutes > 0, "train.time_limit_minutes",
         "must be > 0 or null (null = the job's own end time only)")
    need(cfg.train.stop_margin_s >= 0 and cfg.train.sigterm_grace_s >= 0, "train.stop_margin_s / train.sigterm_grace_s",
         "must be >= 0 seconds")
    need(cfg.eval.interval >= 0, "eval.interval", "must be >= 0 (0 = only at start and end)")
    need(cfg.algorithm.tis_cap is None or cfg.algorithm.tis_cap > 0, "algorithm.tis_cap", "must be > 0 or null")
    return cfg


def load_config(recipe: Optional[str] = None, overrides: Optional[list[str]] = None) -> RecipeConfig:
    """Load a recipe YAML (with includes), apply ``--set`` overrides, type-check and validate."""
    data = _read_yaml(recipe) if recipe else {}
    data = apply_overrides(data, overrides or [])
    cfg = _build(RecipeConfig, data)
    if cfg.output.dir == "auto":
        stem = os.path.splitext(os.path.basename(recipe))[0] if recipe else "run"
        cfg.output.dir = os.path.join("outputs", stem)
    return validate(cfg)


def dump_config(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
