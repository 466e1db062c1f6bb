"""HF (Qwen2 / Llama) <-> megatron-core GPTModel parameter mapping. Pure torch, no megatron.

Megatron layouts handled here (TP = tensor-parallel size, r = TP rank):

* ``linear_qkv`` (weight and bias): rows grouped per KV head (query group):
  ``[q_g (heads_per_group*d rows), k_g (d rows), v_g (d rows)]`` for g = 0..G-1; TP rank r holds
  the contiguous groups ``[r*G/TP, (r+1)*G/TP)``.
* ``linear_fc1``: SwiGLU ``[gate; up]``; TP rank r holds ``[gate_r; up_r]`` (its own gate and
  up chunks stacked), so the full tensor is NOT ``[gate; up]`` when TP > 1.
* ``word_embeddings`` / ``output_layer``: vocab-parallel along rows, padded with zero rows to
  the padded vocab size on import and trimmed on export.
* ``linear_proj`` / ``linear_fc2``: row-parallel, split along columns.
* norms: replicated.

Layer indices: megatron names carry the *local* index inside a PP stage
(``decoder.layers.{i}``); the global HF index is ``offset + i``.
"""

from __future__ import annotations

import re
import torch

from megatron_nft.arch import ModelArch

# kind -> how the megatron tensor is split over TP: None (replicated) or the split dim
KINDS = {
    "embedding": 0,
    "output": 0,
    "final_norm": None,
    "input_norm": None,
    "qkv_weight": 0,
    "qkv_bias": 0,
    "proj": 1,
    "mlp_norm": None,
    "fc1": 0,
    "fc2": 1,
}

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_LAYER_SUFFIX = {
    "input_layernorm.weight": "input_norm",
    "self_attention.linear_qkv.layer_norm_weight": "input_norm",  # TE fused norm
    "self_attention.linear_qkv.weight": "qkv_weight",
    "self_attention.linear_qkv.bias": "qkv_bias",
    "self_attention.linear_proj.weight": "proj",
    "pre_mlp_layernorm.weight": "mlp_norm",
    "mlp.linear_fc1.layer_norm_weight": "mlp_norm",  # TE fused norm
    "mlp.linear_fc1.weight": "fc1",
    "mlp.linear_fc2.weight": "fc2",
}
_GLOBAL = {
    "embedding.word_embeddings.weight": "embedding",
    "output_layer.weight": "output",
    "decoder.final_layernorm.weight": "final_norm",
}


def parse_mcore_name(name: str) -> tuple[str, int | None]:
    """``(kind, local_layer_index or None)`` of a GPTModel parameter name."""
    m = _LAYER_RE.match(name)
    if m:
        kind = _LAYER_SUFFIX.get(m.group(2))
        if kind is None:
            raise KeyError(f"no HF mapping for megatron parameter {name!r}")
        return kind, int(m.group(1))
    if name in _GLOBAL:
        return _GLOBAL[name], None
    raise KeyError(f"no HF mapping for megatron parameter {name!r}")


def mcore_name(kind: str, layer: int | None = None) -> str:
    """Canonical (local-spec) megatron name for ``kind`` at local ``layer``."""
    for k, v in _GLOBAL.items():
        if v == kind:
            return k
    for suffix, v in _LAYER_SUFFIX.items():
        if v == kind and "layer_norm_weight" not in suffix:
            return f"decoder.layers.{layer}.{suffix}"
    raise KeyError(kind)


def hf_names(kind: str, layer: int | None, cfg: ModelArch) -> list[str]:
    """HF tensor names that make up megatron tensor ``kind`` (``layer`` = global index)."""
    p = f"model.layers.{layer}."
    if kind == "embedding":
        return ["model.embed_tokens.weight"]
    if kind == "output":
        return ["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
    if kind == "final_norm":
        return ["model.norm.weight"]
    if kind == "input_norm":
        return [p + "input_layernorm.weight"]
    if kind == "mlp_norm":
        return [p + "post_attention_layernorm.weight"]
    if kind == "qkv_weight":
        return [p + f"self_attn.{x}_proj.weight" for x in "qkv"]
    if kind == "qkv_bias":
        return [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
    if kind == "proj":
        return [p + "self_attn.o_proj.weight"]
    if kind == "fc1":
        return [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
    if kind == "fc2":
        return [p + "mlp.down_proj.weight"]
    raise KeyError(kind)


def hf_param_names(cfg: ModelArch) -> list[str]:
    """All HF parameter names of the model, in export order."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.num_layers):
        for kind in ("input_norm", "qkv_weight", "qkv_bias", "proj", "mlp_norm", "fc1", "fc2"):
            if kind == "qkv_bias" and not cfg.qkv_bias:
                continue
            names += hf_names(kind, i, cfg)
    names.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def _chunk(t: torch.Tensor, dim: int, tp: int, rank: int) -> torch.Tensor:
    if t.size(dim) % tp:
        raise ValueError(f"dim {dim} of size {t.size(dim)} is not divisible by TP={tp}")
    return t.chunk(tp, dim=dim)[rank]


def hf_to_mcore(kind: str, tensors: list[torch.Tensor], cfg: ModelArch, tp: int = 1,
                tp_rank: int = 0, padded_vocab: int | None = None) -> torch.Tensor:
    """This TP rank's megatron tensor built from the HF ``tensors`` (order of :func:`hf_names`)."""
    if kind in ("embedding", "output"):
        (w,) = tensors
        padded = padded_vocab or w.size(0)
        if padded < w.size(0):
            raise ValueError(f"padded vocab {padded} < vocab {w.size(0)}")
        if padded > w.size(0):
            w = torch.cat([w, w.new_zeros(padded - w.size(0), *w.shape[1:])], dim=0)
        return _chunk(w, 0, tp, tp_rank).contiguous()
    if kind in ("final_norm", "input_norm", "mlp_norm"):
        return tensors[0]
    if kind in ("qkv_weight", "qkv_bias"):
        q, k, v = tensors
        g, d, hpg = cfg.num_kv_heads, cfg.head_dim, cfg.heads_per_group
        if g % tp:
            raise ValueError(f"TP={tp} does not divide the {g} key/value heads")
        tail = q.shape[1:]
        grouped = torch.cat(
            [q.reshape(g, hpg * d, *tail), k.reshape(g, d, *tail), v.reshape(g, d, *tail)], dim=1
        )  # [G, (hpg+2)*d, ...]
        return _chunk(grouped, 0, tp, tp_rank).reshape(-1, *tail).contiguous()
    if kind == "fc1":
        gate, up = tensors
        return torch.cat([_chunk(gate, 0, tp, tp_rank), _chunk(up, 0, tp, tp_rank)], 0).contiguous()
    if kind in ("proj", "fc2"):
        return _chunk(tensors[0], 1, tp, tp_rank).contiguous()
    raise KeyError(kind)


def mcore_to_hf(kind: str, shards: list[torch.Tensor], cfg: ModelArch,
                layer: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """HF ``(name, tensor)`` pairs from all TP ``shards`` (rank order) of one megatron tensor.

    ``layer`` is the global layer index. For a tied ``output`` it returns ``[]`` (the HF
    checkpoint has no lm_head then).
    """
    names = hf_names(kind, layer, cfg)
    if kind == "output" and cfg.tie_word_embeddings:
        return []
    if kind in ("embedding", "output"):
        return [(names[0], torch.cat(shards, 0)[: cfg.vocab_size].contiguous())]
    if kind in ("final_norm", "input_norm", "mlp_norm"):
        return [(names[0], shards[0])]
    if kind in ("qkv_weight", "qkv_bias"):
        g, d, hpg = cfg.num_kv_heads, cfg.head_dim, cfg.heads_per_group
        full = torch.cat(shards, 0)
        tail = full.shape[1:]
        grouped = full.reshape(g, (hpg + 2) * d, *tail)
        q = grouped[:, : hpg * d].reshape(-1, *tail)
        k = grouped[:, hpg * d : (hpg + 1) * d].reshape(-1, *tail)
        v = grouped[:, (hpg + 1) * d :].reshape(-1, *tail)
        return [(n, t.contiguous()) for n, t in zip(names, (q, k, v))]
    if kind == "fc1":
        halves = [s.chunk(2, dim=0) for s in shards]
        gate = torch.cat([h[0] for h in halves], 0)
        up = torch.cat([h[1] for h in halves], 0)
        return [(names[0], gate.contiguous()), (names[1], up.contiguous())]
    if kind in ("proj", "fc2"):
        return [(names[0], torch.cat(shards, 1).contiguous())]
    raise KeyError(kind)


def stage_layers(num_layers: int, pp: int, pp_rank: int) -> range:
    """Global layer indices of PP stage ``pp_rank`` (even split, as megatron without VPP)."""
    if num_layers % pp:
        raise ValueError(f"PP={pp} does not divide {num_layers} layers")
    n = num_layers // pp
    return range(pp_rank * n, (pp_rank + 1) * n)


def mcore_names_for_stage(cfg: ModelArch, pp: int, pp_rank: int) -> list[tuple[str, str, int | None]]:
    """``(mcore_name, kind, global_layer)`` for every parameter of a stage (local-spec names)."""
    out = []
    if pp_rank == 0:
        out.append((mcore_name("embedding"), "embedding", None))
    layers = stage_layers(cfg.num_layers, pp, pp_rank)
    for local, glob in enumerate(layers):
        for kind in ("input_norm", "qkv_weight", "qkv_bias", "proj", "mlp_norm", "fc1", "fc2"):
            if kind == "qkv_bias" and not cfg.qkv_bias:
                continue
            out.append((mcore_name(kind, local), kind, glob))
    if pp_rank == pp - 1:
        out.append((mcore_name("final_norm"), "final_norm", None))
        # megatron keeps an output_layer on the last stage unless tied AND it is also stage 0
        if not (cfg.tie_word_embeddings and pp == 1):
            out.append((mcore_name("output"), "output", None))
    return out


def hf_state_to_mcore(hf_state: dict, cfg: ModelArch, tp: int = 1, pp: int = 1,
                      padded_vocab: int | None = None) -> dict:
    """Full in-memory conversion: ``{(tp_rank, pp_rank): {mcore_name: tensor}}`` (tests/tools)."""
    out = {}
    for pr in range(pp):
        for tr in range(tp):
            sd = {}
            for name, kind, layer in mcore_names_for_stage(cfg, pp, pr):
                src = [hf_state[n] for n in hf_names(kind, layer, cfg)]
                sd[name] = hf_to_mcore(kind, src, cfg, tp, tr, padded_vocab)
            out[(tr, pr)] = sd
    return out


def mcore_to_hf_state(shards: dict, cfg: ModelArch, tp: int = 1, pp: int = 1) -> dict:
    """Inverse of :func:`hf_state_to_mcore`: ``{hf_name: tensor}``."""
    out = {}
    for pr in range(pp):
        for name, kind, layer in mcore_names_for_stage(cfg, pp, pr):
            for hf_name, t in mcore_to_hf(kind, [shards[(tr, pr)][name] for tr in range(tp)], cfg, layer):
                out.setdefault(hf_name, t)
    return out
