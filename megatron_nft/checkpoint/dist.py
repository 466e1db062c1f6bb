"""megatron-core dist checkpoints of the model alone (``nft-convert`` outputs, the model part of
a training checkpoint): save with the HF config and tokenizer beside it, read its info, load at
any TP/PP. Layout: see :mod:`megatron_nft.checkpoint.convert`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from megatron_nft.checkpoint.common import (FORMAT_NAME, FORMAT_VERSION, HF_CONFIG_FILE, META_FILE, TOKENIZER_DIR,
                                            ConversionError, atomic_dir, barrier, copy_tokenizer_files, dtype_name,
                                            is_rank0, unwrap_chunks)


def _sharded_state(model_chunks) -> dict:
    chunks = unwrap_chunks(model_chunks)
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def save_dist_checkpoint(model_chunks, ckpt_dir, *, hf_dir=None, hf_config: dict | None = None,
                         meta: dict | None = None, extra_state: dict | None = None,
                         overwrite: bool = False) -> Path:
    """Saves ``{"model": GPTModel.sharded_state_dict(), **extra_state}`` with megatron's
    dist_checkpointing, plus hf_config.json / tokenizer / nft_checkpoint.json; atomic.

    Collective (all ranks). ``hf_dir`` supplies config.json and tokenizer files to copy.
    """
    from megatron.core import dist_checkpointing

    state = _sharded_state(model_chunks)
    if extra_state:
        state.update(extra_state)
    with atomic_dir(ckpt_dir, overwrite=overwrite) as tmp:
        dist_checkpointing.save(state, str(tmp))
        barrier()
        if is_rank0():
            write_checkpoint_info(model_chunks, tmp, hf_dir, hf_config, meta)
    return Path(ckpt_dir).absolute()


def write_checkpoint_info(model_chunks, tmp: Path, hf_dir, hf_config, meta) -> None:
    """hf_config.json, tokenizer/ and nft_checkpoint.json of a dist checkpoint (rank 0); also
    the model part (``step_N/dist``) of a training checkpoint."""
    from megatron.core import parallel_state as ps

    m0 = unwrap_chunks(model_chunks)[0]
    arch = m0.nft_arch
    src = Path(hf_dir) if hf_dir else None  # an HF directory or a megatron-nft checkpoint
    hf_cfg_path = next((src / n for n in ("config.json", HF_CONFIG_FILE) if (src / n).is_file()), None) if src else None
    if hf_cfg_path is not None:
        shutil.copy2(hf_cfg_path, tmp / HF_CONFIG_FILE)
    else:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(hf_config or m0.nft_hf_config, indent=2))
    if src is not None and not (src / "tokenizer_config.json").is_file() and (src / TOKENIZER_DIR).is_dir():
        src = src / TOKENIZER_DIR
    tok = copy_tokenizer_files(src, tmp / TOKENIZER_DIR) if src else []
    info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "architecture": arch.architecture, "dtype": dtype_name(next(m0.parameters()).dtype),
            "vocab_size": arch.vocab_size, "padded_vocab_size": getattr(m0, "vocab_size", None),
            "saved_tp": ps.get_tensor_model_parallel_world_size(),
            "saved_pp": ps.get_pipeline_model_parallel_world_size(),
            "tokenizer_files": tok, **(meta or {})}
    (tmp / META_FILE).write_text(json.dumps(info, indent=2) + "\n")


LATEST_FILE = "latest"  # checkpoints/latest: the name of the newest complete step directory


def resolve_checkpoint_dir(path) -> Path:
    """A path a user gives for a trained model -> the dist checkpoint directory to read:
    a run directory (``output.dir``: its ``checkpoints/latest``), its ``checkpoints/`` folder or
    ``checkpoints/latest`` (the newest step), a training step directory (``step_N/dist``), or a
    converted checkpoint (itself)."""
    d = Path(path)
    if d.is_file() and d.name == LATEST_FILE:
        d = d.parent
    if (d / "checkpoints").is_dir() and not (d / "metadata.json").is_file():
        d = d / "checkpoints"
    if (d / LATEST_FILE).is_file():
        name = (d / LATEST_FILE).read_text().strip()
        if not (d / name).is_dir():
            raise ConversionError(f"{d / LATEST_FILE} names {name!r}, which is not in {d} (removed by "
                                  "checkpoint.keep?); pass a step directory instead")
        d = d / name
    elif d.name == "checkpoints" and d.is_dir():
        steps = sorted(p for p in d.glob("step_*") if (p / "trainer_state.json").is_file())
        if not steps:
            raise ConversionError(f"{d} holds no complete step_* checkpoint yet")
        d = steps[-1]
    if (d / "dist" / "metadata.json").is_file():
        d = d / "dist"
    return d


def read_checkpoint_info(ckpt_dir) -> tuple[dict, dict]:
    """``(hf_config, nft_meta)`` of a converted checkpoint directory."""
    d = Path(ckpt_dir)
    if not (d / HF_CONFIG_FILE).is_file() or not (d / "metadata.json").is_file():
        raise ConversionError(f"{d} is not a megatron-nft dist checkpoint (missing {HF_CONFIG_FILE} "
                              "or metadata.json)")
    meta = json.loads((d / META_FILE).read_text()) if (d / META_FILE).is_file() else {}
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ConversionError(f"{d} has format_version {meta['format_version']} > {FORMAT_VERSION}")
    return json.loads((d / HF_CONFIG_FILE).read_text()), meta


EXTRA_STATE = "_extra_state"  # TE modules' FP8 metadata (a ShardedObject per module)


def load_dist_checkpoint(model_chunks, ckpt_dir, *, strict: bool = True,
                         extra_state: dict | None = None) -> dict:
    """Loads a dist checkpoint into ``model_chunks`` at the current TP/PP (resharding as
    needed); returns the loaded state (extra entries such as optimizer state included).

    Checkpoints are interchangeable between layer specs: the local / sdpa specs save their
    norms under Transformer Engine's names (megatron's ``sharded_state_dict_keys_map``), a TE
    model reads a local-spec checkpoint (its FP8 ``_extra_state`` -- scales, amax history --
    is absent and starts fresh) and a local model reads a TE checkpoint (the ``_extra_state``
    entries are simply not requested). Any other tensor the model needs and the checkpoint
    lacks is an error naming it.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    state = _sharded_state(model_chunks)
    if extra_state:
        state.update(extra_state)
    # megatron's "unexpected" keys: requested here but not in the checkpoint (dropped from the load)
    loaded, _, absent = dist_checkpointing.load(state, str(Path(ckpt_dir).absolute()),
                                                strict=StrictHandling.RETURN_UNEXPECTED)
    absent = sorted(absent)
    lacking = [k for k in absent if not k.endswith(EXTRA_STATE)]
    if lacking:
        raise ConversionError(
            f"checkpoint {ckpt_dir} lacks {len(lacking)} entr{'y' if len(lacking) == 1 else 'ies'} the model "
            f"needs, e.g. {lacking[:3]} (a different architecture, or a checkpoint of another kind?)")
    if absent and is_rank0():
        print(f"[checkpoint] {ckpt_dir}: no {EXTRA_STATE} for {len(absent)} module(s) (checkpoint written "
              "without Transformer Engine); FP8 scaling state starts fresh", flush=True)
    for i, m in enumerate(unwrap_chunks(model_chunks)):
        key = "model" if "model" in loaded and len(unwrap_chunks(model_chunks)) == 1 else f"model{i}"
        res = m.load_state_dict(loaded[key], strict=False)
        bad = [k for k in res.missing_keys if not k.endswith(EXTRA_STATE)] + list(res.unexpected_keys)
        if strict and bad:
            raise ConversionError(f"checkpoint {ckpt_dir} does not match the model: {bad[:5]}")
    return loaded


