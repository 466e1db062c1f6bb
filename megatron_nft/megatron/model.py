"""Megatron-core GPTModel provider for HF Qwen2 / Qwen2.5 and Llama checkpoints.

``build_gpt_model(hf_config, transformer_impl=...)`` returns the GPTModel chunk of this
pipeline stage (call :func:`megatron_nft.megatron.parallel.init_distributed` first).

Layer specs (``transformer_impl``):

* ``"local"`` – megatron-core's own modules (unfused core attention); runs everywhere.
* ``"sdpa"`` – the local spec with core attention replaced by :class:`SDPACoreAttention`
  (``torch.nn.functional.scaled_dot_product_attention``, flash/mem-efficient kernels on GPU).
  The right default when Transformer Engine is missing.
* ``"transformer_engine"`` – TE spec; needs ``transformer_engine`` importable on a CUDA device.

Vocabulary: the embedding/output layer are padded to a multiple of
``make_vocab_size_divisible_by * tp`` rows (megatron convention). Logits of the padded rows
are *not* real tokens: mask them (``logits[..., vocab_size:] = -inf``) before a softmax.
:func:`vocab_size_of` gives the true size of a built model.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F

from megatron_nft.arch import (SUPPORTED_ARCHITECTURES, ModelArch, UnsupportedModelError,  # noqa: F401 (re-exported)
                               load_hf_config_dict, padded_vocab_size, parse_hf_config)
from megatron_nft.config import parse_layer_split

TRANSFORMER_IMPLS = ("local", "sdpa", "transformer_engine")


def validate_parallel(arch: ModelArch, tp: int, pp: int, pp_layer_split=None) -> None:
    """Errors name the recipe keys ``parallel.tp`` / ``parallel.pp`` / ``parallel.pp_layer_split``."""
    if arch.num_attention_heads % tp:
        raise ValueError(
            f"parallel.tp={tp} must divide the number of attention heads "
            f"({arch.num_attention_heads})"
        )
    if arch.num_kv_heads % tp:
        raise ValueError(
            f"parallel.tp={tp} must divide the number of key/value heads ({arch.num_kv_heads})"
        )
    if arch.ffn_hidden_size % tp:
        raise ValueError(f"parallel.tp={tp} must divide intermediate_size ({arch.ffn_hidden_size})")
    if pp_layer_split is not None:
        parts = parse_layer_split(pp_layer_split)
        if len(parts) != pp or sum(parts) != arch.num_layers or min(parts) < 1:
            raise ValueError(
                f"parallel.pp_layer_split={pp_layer_split!r} must have parallel.pp={pp} entries >= 1 "
                f"summing to the number of layers ({arch.num_layers})")
    elif arch.num_layers % pp:
        raise ValueError(f"parallel.pp={pp} must divide the number of layers ({arch.num_layers}); "
                         "or set parallel.pp_layer_split (layers per stage, e.g. '15,17')")


def pipeline_layout(split) -> str:
    """megatron ``pipeline_model_parallel_layout`` for layers per stage: ``[1, 3]`` ->
    ``"Et*1|t*3L"`` (E = embedding on the first stage, L = loss/output on the last)."""
    parts = parse_layer_split(split)
    stages = [f"t*{n}" for n in parts]
    stages[0] = "E" + stages[0]
    stages[-1] = stages[-1] + "L"
    return "|".join(stages)


def default_params_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def build_transformer_config(arch: ModelArch, *, tp: int, pp: int, params_dtype=None,
                             perform_initialization: bool = True, **overrides):
    """megatron TransformerConfig for ``arch`` (``overrides`` are TransformerConfig fields)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    if not overrides.get("pipeline_model_parallel_layout"):
        validate_parallel(arch, tp, pp)
    params_dtype = params_dtype or default_params_dtype()
    kw = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        perform_initialization=perform_initialization,
        sequence_parallel=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    kw.update(overrides)
    return TransformerConfig(**kw)


def _te_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "CUDA is not available (Transformer Engine needs a CUDA GPU)"
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"transformer_engine is not importable ({type(e).__name__}: {e})"
    return True, ""


def get_layer_spec(transformer_impl: str = "local"):
    """ModuleSpec for one transformer layer (see module docstring for the choices)."""
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ValueError(
            f"model.transformer_impl={transformer_impl!r}; choose one of {TRANSFORMER_IMPLS}"
        )
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if transformer_impl == "transformer_engine":
        ok, why = _te_available()
        if not ok:
            raise RuntimeError(
                f"model.transformer_impl='transformer_engine' but {why}. Install NVIDIA "
                "Transformer Engine (pip install --no-build-isolation 'transformer_engine[pytorch]', "
                "or use an NGC PyTorch container) on a CUDA machine, or set "
                "model.transformer_impl='sdpa'."
            )
        return specs.get_gpt_layer_with_transformer_engine_spec()
    spec = copy.deepcopy(specs.get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.input_layernorm = TPRMSNorm
    spec.submodules.pre_mlp_layernorm = TPRMSNorm
    if transformer_impl == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = _sdpa_class()
    return spec


class TPRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm built the way megatron builds its norms, usable with sequence parallelism.

    megatron-core's ``WrappedTorchNorm`` refuses ``sequence_parallel`` (only TE / apex norms
    support it). The norm itself needs nothing special: its input is already this rank's
    sequence slice. What SP needs is that the weight's grad, computed from 1/TP of the tokens,
    is summed over TP: the ``sequence_parallel`` attribute makes ``finalize_model_grads``
    all-reduce it (as megatron's ``FusedLayerNorm`` marks its weight). Same parameter name and
    checkpoint keys as ``WrappedTorchNorm``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = bool(getattr(config, "sequence_parallel", False))


def _sdpa_has_gqa() -> bool:
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):
        return False


_HAS_GQA = _sdpa_has_gqa()


_SDPA_CLASS = None


def _sdpa_class():
    """Builds SDPACoreAttention on first use (keeps ``import model`` free of megatron)."""
    global _SDPA_CLASS
    if _SDPA_CLASS is not None:
        return _SDPA_CLASS
    from megatron.core import tensor_parallel
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.module import MegatronModule

    class SDPACoreAttention(MegatronModule):
        """Core attention via torch SDPA; same interface as megatron's DotProductAttention.

        Inputs are query ``[sq, b, np, hn]``, key/value ``[sk, b, ng, hn]`` (this TP rank's
        heads/groups); output ``[sq, b, np*hn]``. ``attention_mask`` follows megatron's
        convention (bool, True = masked out, broadcastable to ``[b, np, sq, sk]``); with no
        mask and a causal mask type the causal mask is implied (bottom-right aligned).
        """

        def __init__(self, config, layer_number, attn_mask_type, attention_type,
                     attention_dropout=None, softmax_scale=None, cp_comm_type=None,
                     pg_collection=None, **kwargs):
            super().__init__(config=config)
            if config.context_parallel_size != 1:
                raise ValueError("SDPACoreAttention does not support context parallelism")
            self.layer_number = max(1, layer_number)
            self.attn_mask_type = attn_mask_type
            self.attention_type = attention_type
            self.softmax_scale = (
                softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
            )
            self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

        def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                    attention_bias=None, packed_seq_params=None):
            if packed_seq_params is not None:
                raise ValueError("SDPACoreAttention does not support packed sequences (thd)")
            if attention_bias is not None:
                raise ValueError("SDPACoreAttention does not support attention_bias")
            mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
            sq, b, nq, hn = query.shape
            sk, nkv = key.size(0), key.size(2)
            q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
            k = key.permute(1, 2, 0, 3)
            v = value.permute(1, 2, 0, 3)
            extra = {}
            if nq != nkv:
                if _HAS_GQA:
                    extra["enable_gqa"] = True
                else:
                    k = k.repeat_interleave(nq // nkv, dim=1)
                    v = v.repeat_interleave(nq // nkv, dim=1)
            is_causal, mask = False, None
            if attention_mask is not None:
                mask = ~attention_mask.bool()
            elif mask_type == AttnMaskType.causal and sq > 1:
                if sq == sk:
                    is_causal = True
                else:
                    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
            p = self.dropout_p if self.training else 0.0
            if p > 0 and not self.config.sequence_parallel:
                ctx = tensor_parallel.get_cuda_rng_tracker().fork()
            else:
                ctx = contextlib.nullcontext()
            with ctx:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal,
                    scale=self.softmax_scale, **extra,
                )
            # [b, np, sq, hn] -> [sq, b, np*hn]
            return out.permute(2, 0, 1, 3).reshape(sq, b, nq * hn)

    SDPACoreAttention.__qualname__ = "SDPACoreAttention"  # picklable via module __getattr__
    _SDPA_CLASS = SDPACoreAttention
    return _SDPA_CLASS


def __getattr__(name):
    if name == "SDPACoreAttention":
        return _sdpa_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_gpt_model(
    hf_config: Any,
    *,
    transformer_impl: str = "local",
    params_dtype: torch.dtype | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    pp_layer_split=None,
    parallel_output: bool = True,
    make_vocab_size_divisible_by: int = 128,
    perform_initialization: bool = True,
    max_sequence_length: int | None = None,
    **config_overrides,
):
    """The GPTModel chunk of this PP stage for an HF config (after ``init_distributed``)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    cfg = load_hf_config_dict(hf_config)
    arch = parse_hf_config(cfg)
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    if pp_layer_split is not None and pp == 1:
        pp_layer_split = None
    validate_parallel(arch, tp, pp, pp_layer_split)
    spec = get_layer_spec(transformer_impl)  # raises before building anything
    if pp_layer_split is not None:
        config_overrides["pipeline_model_parallel_layout"] = pipeline_layout(pp_layer_split)
    tcfg = build_transformer_config(
        arch, tp=tp, pp=pp, params_dtype=params_dtype,
        perform_initialization=perform_initialization, **config_overrides,
    )
    if transformer_impl != "transformer_engine":
        # megatron picks the final norm itself (WrappedTorchNorm without apex/TE), which refuses
        # sequence parallelism: hand it the block spec with our norm instead.
        from megatron.core.transformer.transformer_block import (
            TransformerBlockSubmodules, get_num_layers_to_build)

        n_layers = get_num_layers_to_build(tcfg, vp_stage=vp_stage)
        spec = TransformerBlockSubmodules(layer_specs=[spec] * n_layers, layer_norm=TPRMSNorm)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage()
    if post_process is None:
        post_process = ps.is_pipeline_last_stage()
    kw = {}
    if vp_stage is not None:
        kw["vp_stage"] = vp_stage
    if arch.rope_scaling_factor is not None:
        kw.update(rope_scaling=True, rope_scaling_factor=arch.rope_scaling_factor)
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(arch.vocab_size, tp, make_vocab_size_divisible_by),
        max_sequence_length=max_sequence_length or arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=arch.rope_theta,
        **kw,
    )
    # Remember where the model came from: the exporter needs the true vocab size and config.
    model.nft_hf_config = cfg
    model.nft_arch = arch
    return model


def unwrap_model(model):
    """Strips DDP / Float16Module style wrappers (``.module``) down to the GPTModel."""
    while hasattr(model, "module") and not hasattr(model, "nft_arch"):
        model = model.module
    return model


def vocab_size_of(model) -> int:
    """True (unpadded) vocabulary size of a model built by :func:`build_gpt_model`."""
    return unwrap_model(model).nft_arch.vocab_size
