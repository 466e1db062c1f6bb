"""HF <-> megatron-core checkpoints.

* :mod:`.mapping` – parameter name/shape mapping (pure torch; QKV grouped per KV head,
  ``[gate_i; up_i]`` per TP rank, vocab padding, PP layer offsets).
* :mod:`.common` – format names, the user-facing error, :func:`~.common.atomic_dir` (the one
  way a directory is written: temp sibling + rename);
* :mod:`.dist` – megatron dist-checkpoint save/load of a model, at any TP/PP;
* :mod:`.hf_io` – HF directories in and out (streaming load/export, the one HF-dir writer);
* :mod:`.convert` – the ``nft-convert`` CLI (``hf-to-mcore`` / ``mcore-to-hf``).

The public functions are re-exported lazily (importing this package stays cheap).
"""

_API = (
    "ConversionError",
    "convert_hf_to_mcore",
    "convert_mcore_to_hf",
    "export_model_to_hf_state",
    "load_dist_checkpoint",
    "load_hf_into_model",
    "read_checkpoint_info",
    "save_dist_checkpoint",
    "write_hf_safetensors",
)
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module("megatron_nft.checkpoint.convert"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
