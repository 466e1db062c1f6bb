"""The one architecture record (:class:`ModelArch`) and how it is read from an HF config.

Pure Python (no torch): the dry-run planner and config checks use it without loading a model.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}


class UnsupportedModelError(ValueError):
    """The HF checkpoint uses an architecture/feature this provider cannot build."""


@dataclass(frozen=True)
class ModelArch:
    """The architecture facts every part needs (family-independent): the model provider, the
    HF <-> megatron mapping, the dry-run planner and the FLOPs accounting all read this one
    record (:func:`parse_hf_config` for an HF config, :func:`tiny_arch` for ``model.tiny``,
    :data:`KNOWN_ARCHS` for the planner's built-in table)."""

    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = True
    tie_word_embeddings: bool = False
    family: str = "qwen2"  # "qwen2" | "llama"
    architecture: str = "Qwen2ForCausalLM"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling_factor: float | None = None
    max_position_embeddings: int = 4096
    name: str = ""  # display name (the planner: the model directory's basename)

    @property
    def heads_per_group(self) -> int:
        """Query heads per KV head (query group)."""
        return self.num_attention_heads // self.num_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)

    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token: QKV, attention out, SwiGLU MLP (3
        matrices) per layer, plus the output (logit) layer -- counted even when tied to the
        embedding (the logit GEMM still runs). Excluded: the input embedding (a lookup), norms
        and biases."""
        h, d = self.hidden_size, self.head_dim
        nq, nkv, f = self.num_attention_heads, self.num_kv_heads, self.ffn_hidden_size
        return self.num_layers * (h * (nq + 2 * nkv) * d + nq * d * h + 3 * h * f) + h * self.vocab_size

    def layer_params(self) -> int:
        """Parameters of one transformer layer: QKV (+bias), output projection, SwiGLU MLP,
        two norms."""
        q, kv = self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = self.hidden_size * (q + 2 * kv) + (q + 2 * kv) * self.qkv_bias + q * self.hidden_size
        return attn + 3 * self.hidden_size * self.ffn_hidden_size + 2 * self.hidden_size


def load_hf_config_dict(hf_config: Any) -> dict:
    """Accepts a transformers ``PretrainedConfig``, a dict, an HF dir or a config.json path."""
    if isinstance(hf_config, dict):
        return dict(hf_config)
    if isinstance(hf_config, (str, os.PathLike)):
        p = Path(hf_config)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"HF config not found: {p} (expected an HF model dir with config.json)")
        return json.loads(p.read_text())
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"unsupported hf_config type {type(hf_config).__name__}")


def _family(cfg: dict) -> tuple[str, str]:
    archs = cfg.get("architectures") or []
    for a in archs:
        if a in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[a], a
    mt = cfg.get("model_type")
    if not archs:
        for a, fam in SUPPORTED_ARCHITECTURES.items():
            if fam == mt:
                return fam, a
    raise UnsupportedModelError(
        f"unsupported architecture {archs or mt!r}; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)} (model_type {', '.join(SUPPORTED_ARCHITECTURES.values())})"
    )


def parse_hf_config(hf_config: Any) -> ModelArch:
    """Reads and validates an HF config; raises :class:`UnsupportedModelError` with the reason."""
    cfg = load_hf_config_dict(hf_config)
    family, arch = _family(cfg)
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported (only 'silu'/SwiGLU)")
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if family == "llama":
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise UnsupportedModelError("Llama with attention_bias/mlp_bias=True is not supported")
        qkv_bias = False
    else:
        qkv_bias = True
        if cfg.get("use_sliding_window"):
            raise UnsupportedModelError("Qwen2 use_sliding_window=True is not supported")
    rope = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if scaling:
        rope = {**scaling, **rope}
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    factor = None
    if rope_type == "llama3":
        std = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        bad = {k: rope.get(k) for k, v in std.items() if float(rope.get(k, v)) != v}
        if bad:
            raise UnsupportedModelError(f"llama3 rope scaling with non-standard {bad} is not supported")
        factor = float(rope.get("factor", 8.0))
    elif rope_type != "default":
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported (default, llama3)")
    return ModelArch(
        family=family,
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        ffn_hidden_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling_factor=factor,
        qkv_bias=qkv_bias,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
    )


def padded_vocab_size(vocab_size: int, tp: int = 1, divisible_by: int = 128) -> int:
    """Megatron's padding: round up to a multiple of ``divisible_by * tp``."""
    m = max(1, divisible_by) * tp
    return int(math.ceil(vocab_size / m) * m)


def tiny_arch(t) -> ModelArch:
    """The embedded tiny model of ``model.tiny`` (a Qwen2 shape)."""
    return ModelArch(vocab_size=t.vocab_size, hidden_size=t.hidden_size, ffn_hidden_size=t.ffn_hidden_size,
                     num_layers=t.num_layers, num_attention_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                     head_dim=t.head_dim)


#: The planner's built-in table, used when ``model.hf_path`` is not a readable directory (a
#: cluster recipe dry-run on a laptop); keyed by the lower-cased basename of ``model.hf_path``.
#: Numbers from the models' published config.json files.
KNOWN_ARCHS = {
    "qwen2.5-math-7b": ModelArch(num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                                 num_kv_heads=4, head_dim=128, vocab_size=152064, rope_theta=10000.0,
                                 max_position_embeddings=4096),
    "qwen2.5-32b": ModelArch(num_layers=64, hidden_size=5120, ffn_hidden_size=27648, num_attention_heads=40,
                             num_kv_heads=8, head_dim=128, vocab_size=152064, rope_theta=1000000.0,
                             max_position_embeddings=131072),
}
