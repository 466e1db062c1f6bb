"""Numeric precision of the policy: FP8 recipe -> megatron-core fields, preflight checks, MFU.

Three things live here, all free of side effects at import (no megatron, no TE import):

* :func:`precision_overrides` maps the recipe keys ``precision.fp8`` / ``precision.fp8_recipe``
  onto the ``TransformerConfig`` fields of the *installed* megatron-core (field names are read
  with ``dataclasses.fields``; a missing field is a clear error, never a silent no-op).
* :func:`check_precision_supported` fails *before any model is built* when the recipe asks for
  something this machine cannot run: FP8 (or ``model.transformer_impl=transformer_engine``)
  without a CUDA GPU / without NVIDIA Transformer Engine, FP8 on a pre-Ada GPU, MXFP8 on a
  pre-Blackwell GPU, a recipe the installed TE is too old for.
* :func:`model_flops_per_token` / :func:`mfu` / :func:`peak_flops`: throughput accounting.

FP8 mapping (megatron-core 0.16 field names; ``Fp8Recipe`` from ``megatron.core.enums``)::

    precision.fp8         -> fp8          "e4m3" (all FP8 tensors e4m3) | "hybrid" (e5m2 grads)
    precision.fp8_recipe  -> fp8_recipe   Fp8Recipe.delayed | tensorwise | blockwise | mxfp8
    delayed only          -> fp8_amax_history_len=1024, fp8_amax_compute_algo="max", fp8_margin=0
                             (the settings of Megatron-LM's / NeMo's FP8 examples; the
                             current-scaling recipes compute scales from the live tensor and
                             ignore the amax history)

FP8 params (``fp8_param``) stay off: NFT's paper learning rate (1e-6) needs fp32 main weights,
and FP8 storage only saves memory. Optional keys a future ``PrecisionConfig`` may grow
(``fp8_param``, ``fp8_margin``, ``fp8_amax_history_len``, ``fp8_amax_compute_algo``,
``fp8_wgrad``, ``first_last_layers_bf16``) are forwarded when present.

FP8 GEMMs need the token count of a GEMM to be a multiple of :func:`fp8_align_size`
(16; 32 for MXFP8): pad packed micro-batches to that multiple when FP8 is on.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional

FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")

# Transformer Engine recipe class per recipe name (transformer_engine.common.recipe.*), and the
# oldest TE that megatron-core uses it with (megatron.core.fp8_utils.get_fp8_recipe).
TE_RECIPE_CLASSES = {
    "delayed": ("DelayedScaling", "1.0"),
    "tensorwise": ("Float8CurrentScaling", "2.2"),
    "blockwise": ("Float8BlockScaling", "2.3"),
    "mxfp8": ("MXFP8BlockScaling", "2.1"),
}
FP8_MIN_CAPABILITY = (8, 9)       # Ada (sm_89), Hopper (sm_90), Blackwell (sm_100+)
MXFP8_MIN_CAPABILITY = (10, 0)    # Blackwell only

INSTALL_TE = (
    "FP8 and model.transformer_impl=transformer_engine need NVIDIA Transformer Engine on a CUDA "
    "GPU: use an NGC PyTorch container (nvcr.io/nvidia/pytorch, TE preinstalled) or run "
    "`pip install --no-build-isolation \"transformer-engine[pytorch]\"` on a CUDA machine"
)
CPU_HINT = ("on CPU (or without TE) set precision.fp8=null and model.transformer_impl=sdpa "
            "(or auto)")

# Delayed scaling defaults (Megatron-LM / NeMo FP8 examples: --fp8-amax-history-len 1024
# --fp8-amax-compute-algo max).
DELAYED_DEFAULTS = {"fp8_margin": 0, "fp8_amax_history_len": 1024, "fp8_amax_compute_algo": "max"}
_OPTIONAL_KEYS = ("fp8_param", "fp8_margin", "fp8_amax_history_len", "fp8_amax_compute_algo",
                  "fp8_wgrad", "first_last_layers_bf16")


class PrecisionError(RuntimeError):
    """The precision recipe cannot run here; the message names the recipe keys and the fix."""


def _precision(cfg: Any):
    """``cfg`` may be a RecipeConfig (uses ``.precision``), a PrecisionConfig or a mapping."""
    p = getattr(cfg, "precision", cfg)
    if isinstance(p, Mapping):
        p = _Obj(p.get("precision", p) if isinstance(p.get("precision"), Mapping) else p)
    return p


class _Obj:
    def __init__(self, d: Mapping):
        self.__dict__.update(d)


def _fp8(p) -> tuple[Optional[str], str]:
    fmt = getattr(p, "fp8", None)
    recipe = getattr(p, "fp8_recipe", None) or "delayed"
    if fmt is not None and fmt not in FP8_FORMATS:
        raise PrecisionError(f"precision.fp8: got {fmt!r}; allowed: null, {', '.join(FP8_FORMATS)}")
    if recipe not in FP8_RECIPES:
        raise PrecisionError(f"precision.fp8_recipe: got {recipe!r}; allowed: {', '.join(FP8_RECIPES)}")
    return fmt, recipe


def transformer_config_fields() -> set[str]:
    """Field names of the installed megatron-core ``TransformerConfig``."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    return {f.name for f in dataclasses.fields(TransformerConfig)}


def _mcore_version() -> str:
    try:
        from megatron.core import package_info

        return package_info.__version__
    except Exception:  # noqa: BLE001
        return "unknown"


def _recipe_value(recipe: str):
    """``Fp8Recipe.<recipe>`` when megatron-core has the enum (a ``str`` subclass), else the str."""
    try:
        from megatron.core.enums import Fp8Recipe
    except ImportError:
        return recipe
    try:
        return Fp8Recipe(recipe)
    except ValueError:
        raise PrecisionError(
            f"precision.fp8_recipe={recipe!r} is not supported by the installed megatron-core "
            f"{_mcore_version()} (it knows {', '.join(r.value for r in Fp8Recipe)}); upgrade "
            "megatron-core or pick another precision.fp8_recipe") from None


def precision_overrides(cfg: Any, *, transformer_impl: str,
                        fields: Optional[Iterable[str]] = None) -> dict:
    """``TransformerConfig`` keyword overrides for the recipe's precision (``{}`` without FP8).

    Pure mapping plus validation of values and field names: it does not probe CUDA/TE (that is
    :func:`check_precision_supported`), so it runs on CPU for tests and dry runs.
    ``fields`` (names of the TransformerConfig fields) defaults to the installed megatron-core's.
    """
    p = _precision(cfg)
    fmt, recipe = _fp8(p)
    if fmt is None:
        return {}
    if transformer_impl != "transformer_engine":
        raise PrecisionError(
            f"precision.fp8={fmt!r} needs model.transformer_impl=transformer_engine (resolved "
            f"transformer_impl is {transformer_impl!r}): FP8 GEMMs come from Transformer Engine. "
            f"{INSTALL_TE}; {CPU_HINT}.")
    have = set(fields) if fields is not None else transformer_config_fields()
    out: dict[str, Any] = {"fp8": fmt}
    if "fp8_recipe" in have:
        out["fp8_recipe"] = _recipe_value(recipe)
    elif recipe != "delayed":  # old megatron-core: delayed scaling was the only recipe
        raise PrecisionError(
            f"precision.fp8_recipe={recipe!r} needs a megatron-core with TransformerConfig."
            f"fp8_recipe (installed: {_mcore_version()}); use fp8_recipe=delayed or upgrade")
    if recipe == "delayed":
        out.update(DELAYED_DEFAULTS)
    for k in _OPTIONAL_KEYS:
        if hasattr(p, k) and getattr(p, k) is not None:
            out[k] = getattr(p, k)
    missing = sorted(k for k in out if k not in have)
    if missing:
        raise PrecisionError(
            f"precision.fp8={fmt!r}/fp8_recipe={recipe!r} needs TransformerConfig field(s) "
            f"{', '.join(missing)}, which megatron-core {_mcore_version()} does not have; "
            "upgrade megatron-core or set precision.fp8=null")
    return out


def fp8_align_size(cfg: Any) -> int:
    """Multiple that the token count of a GEMM must have under the recipe's FP8 (1 = no FP8)."""
    fmt, recipe = _fp8(_precision(cfg))
    if fmt is None:
        return 1
    return 32 if recipe == "mxfp8" else 16   # megatron.core.fp8_utils.get_fp8_align_size


# ------------------------------------------------------------------------------ preflight
def probe_environment() -> dict:
    """What this process can run: CUDA, compute capability, TE importability and recipes."""
    import torch

    env = {"cuda": torch.cuda.is_available(), "capability": None, "device_name": None,
           "te_ok": False, "te_why": "", "te_version": None, "te_recipes": set(),
           "te_support": {}}
    if not env["cuda"]:
        env["te_why"] = "CUDA is not available (this is a CPU-only torch or machine)"
        return env
    dev = torch.cuda.current_device()
    env["capability"] = tuple(torch.cuda.get_device_capability(dev))
    env["device_name"] = torch.cuda.get_device_name(dev)
    try:
        import transformer_engine
        import transformer_engine.pytorch  # noqa: F401
        from transformer_engine.common import recipe as te_recipe
    except Exception as e:  # noqa: BLE001
        env["te_why"] = f"`import transformer_engine` failed ({type(e).__name__}: {e})"
        return env
    env["te_ok"] = True
    env["te_version"] = getattr(transformer_engine, "__version__", None)
    env["te_recipes"] = {name for name, (cls, _) in TE_RECIPE_CLASSES.items()
                         if hasattr(te_recipe, cls)}
    # TE's own hardware checks, where this TE version has them: (supported, reason).
    for name, fn in (("fp8", "check_fp8_support"), ("mxfp8", "check_mxfp8_support"),
                     ("blockwise", "check_fp8_block_scaling_support")):
        for mod in ("transformer_engine.pytorch.fp8", "transformer_engine.pytorch.quantization"):
            try:
                import importlib

                f = getattr(importlib.import_module(mod), fn)
                env["te_support"][name] = tuple(f())
                break
            except Exception:  # noqa: BLE001
                continue
    return env


def _cap(c) -> str:
    return f"sm_{c[0]}{c[1]}" if c else "unknown"


def check_precision_supported(cfg: Any, transformer_impl: str, *, env: Optional[dict] = None) -> None:
    """Raise :class:`PrecisionError` before any model is built if the recipe cannot run here.

    ``cfg``: a RecipeConfig (or its ``precision`` section); ``transformer_impl``: the *resolved*
    implementation (``policy.resolve_transformer_impl(cfg.model.transformer_impl)``).
    ``env`` overrides :func:`probe_environment` (tests).
    """
    p = _precision(cfg)
    fmt, recipe = _fp8(p)
    needs_te = fmt is not None or transformer_impl == "transformer_engine"
    if not needs_te:
        return
    want = (f"precision.fp8={fmt!r}, precision.fp8_recipe={recipe!r}" if fmt is not None
            else "model.transformer_impl='transformer_engine'")
    if fmt is not None and transformer_impl != "transformer_engine":
        raise PrecisionError(
            f"{want} needs model.transformer_impl=transformer_engine, but it resolved to "
            f"{transformer_impl!r} (FP8 GEMMs come from Transformer Engine; 'auto' picks it only "
            f"when TE imports on a CUDA GPU). {INSTALL_TE}; {CPU_HINT}.")
    env = probe_environment() if env is None else env
    if not env.get("cuda"):
        raise PrecisionError(f"{want}: {env.get('te_why') or 'CUDA is not available'}. "
                             f"{INSTALL_TE}; {CPU_HINT}.")
    if not env.get("te_ok"):
        raise PrecisionError(f"{want}: {env.get('te_why') or 'Transformer Engine is missing'}. "
                             f"{INSTALL_TE}; or set precision.fp8=null and "
                             "model.transformer_impl=sdpa to train in bf16 without TE.")
    if fmt is None:
        return
    cap, name = env.get("capability"), env.get("device_name") or "this GPU"
    if cap is not None and tuple(cap) < FP8_MIN_CAPABILITY:
        raise PrecisionError(
            f"{want}: FP8 needs compute capability >= 8.9 (Ada/Hopper/Blackwell); {name} is "
            f"{_cap(cap)}. Set precision.fp8=null (bf16).")
    if recipe == "mxfp8" and cap is not None and tuple(cap) < MXFP8_MIN_CAPABILITY:
        raise PrecisionError(
            f"{want}: precision.fp8_recipe=mxfp8 needs a Blackwell GPU (compute capability >= "
            f"10.0); {name} is {_cap(cap)}. Use precision.fp8_recipe=tensorwise, blockwise or "
            "delayed on Hopper/Ada.")
    recipes = env.get("te_recipes")
    if recipes is not None and recipe not in recipes:
        cls, ver = TE_RECIPE_CLASSES[recipe]
        raise PrecisionError(
            f"{want}: the installed Transformer Engine {env.get('te_version') or ''} has no "
            f"transformer_engine.common.recipe.{cls} (needs TE >= {ver}); upgrade TE (newer NGC "
            f"container) or choose precision.fp8_recipe among {', '.join(sorted(recipes)) or 'delayed'}.")
    key = "mxfp8" if recipe == "mxfp8" else ("blockwise" if recipe == "blockwise" else "fp8")
    ok_why = env.get("te_support", {}).get(key)
    if ok_why is not None and not ok_why[0]:
        raise PrecisionError(f"{want}: Transformer Engine reports this GPU cannot run it: "
                             f"{ok_why[1]}. Set precision.fp8=null or choose another "
                             "precision.fp8_recipe.")


# ------------------------------------------------------------------------------ FLOPs / MFU
def _arch(arch: Any):
    """A :class:`~megatron_nft.arch.ModelArch`; a mapping of its field names; or an HF config
    (dict / PretrainedConfig / path) read into one."""
    from megatron_nft.arch import ModelArch, parse_hf_config

    if isinstance(arch, ModelArch):
        return arch
    if isinstance(arch, Mapping) and "num_layers" in arch:
        return ModelArch(**arch)
    return parse_hf_config(arch)


def matmul_params(arch: Any) -> int:
    """:meth:`ModelArch.matmul_params <megatron_nft.arch.ModelArch.matmul_params>`."""
    return _arch(arch).matmul_params()


def model_flops_per_token(arch: Any, seq_len: float, *, causal: bool = False,
                          training: bool = True) -> float:
    """Model FLOPs per token, Megatron-LM / PaLM MFU accounting (no recomputation counted).

    ``6 * N + 12 * L * n_heads * head_dim * s`` for training (``2 * N + 4 * L * n * d * s`` for a
    forward-only pass), where ``N`` = :func:`matmul_params` (2 FLOPs per multiply-add; backward
    = 2x forward: data grad + weight grad) and the second term is attention's ``Q K^T`` and
    ``A V`` (``2 * 2 * n * d * s`` per token and layer forward). ``s`` is the sequence length
    each token attends over: for packed micro-batches of varied lengths use
    :func:`token_weighted_seq_len`. This is exactly Megatron-LM's
    ``num_floating_point_operations`` (arXiv:2104.04473 appendix; GQA and SwiGLU terms as in
    ``megatron/training/training.py``) and PaLM's (arXiv:2204.02311 App. B: 6N + 12 L H Q T),
    both of which count the full ``s x s`` score matrix. ``causal=True`` halves the attention
    term (only the lower triangle is computed by flash/SDPA kernels); DESIGN.md's
    "489 TFLOP/s at 10.9k tok/s" for the 7B shape used that variant (44.9 GFLOP/token).
    """
    a = _arch(arch)
    attn = 4.0 * a.num_layers * a.num_attention_heads * a.head_dim * float(seq_len)
    if causal:
        attn /= 2.0
    dense = 2.0 * a.matmul_params()
    return 3.0 * (dense + attn) if training else dense + attn


def token_weighted_seq_len(lengths: Iterable[int]) -> float:
    """Mean attention span per token of a batch of sequences: ``sum(s_i^2) / sum(s_i)``."""
    lengths = [int(x) for x in lengths]
    tot = sum(lengths)
    return sum(x * x for x in lengths) / tot if tot else 0.0


# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() (first match wins: put specific names first). MFU is by convention
# relative to this spec peak. Achievable bf16 GEMM is lower: DESIGN.md measured 793 TFLOP/s on
# one H200 (80% of 989) -- see `ACHIEVABLE_BF16_TFLOPS`.
PEAK_TFLOPS = {
    "bf16": [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4),
             ("H100", 989.4), ("H200", 989.4), ("H800", 989.4), ("GB200", 2500.0),
             ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1)],
    "fp8": [("H100 PCIe", 1513.0), ("H100 NVL", 1671.0), ("H200 NVL", 1671.0), ("GH200", 1978.9),
            ("H100", 1978.9), ("H200", 1978.9), ("H800", 1978.9), ("GB200", 5000.0),
            ("B200", 4500.0), ("L40S", 733.0)],
}
ACHIEVABLE_BF16_TFLOPS = {"H200": 793.0}


def peak_flops(device_name: Optional[str] = None, dtype: str = "bf16") -> Optional[float]:
    """Spec dense peak FLOP/s of one GPU (``None`` if unknown, e.g. CPU). ``device_name``
    defaults to ``torch.cuda.get_device_name()``; env ``NFT_PEAK_TFLOPS`` overrides."""
    import os

    if os.environ.get("NFT_PEAK_TFLOPS"):
        return float(os.environ["NFT_PEAK_TFLOPS"]) * 1e12
    if device_name is None:
        import torch

        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, tf in PEAK_TFLOPS.get(dtype, []):
        if key.lower() in device_name.lower():
            return tf * 1e12
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: Optional[float],
        n_devices: int = 1) -> float:
    """Model FLOPs utilisation: ``tokens_per_s * flops_per_token / (peak_flops * n_devices)``.

    ``tokens_per_s`` is the job's total; ``peak_flops`` one device's. NaN when the peak is
    unknown (CPU, unlisted GPU)."""
    if not peak_flops or not n_devices or not math.isfinite(tokens_per_s):
        return float("nan")
    return tokens_per_s * flops_per_token / (peak_flops * n_devices)
