"""HF model directories in and out -- the one module for it.

* reading: :func:`model_dir_config` (what a ``model.hf_path`` is: an HF directory or a
  megatron-nft checkpoint), :class:`HFSafetensors` (lazy, one tensor at a time),
  :func:`load_hf_into_model`, :func:`load_initial_weights` (either kind of directory);
* writing: :func:`export_model_to_hf_state` (gathers TP/PP shards under HF names -- also the
  weight-sync stream), :func:`write_hf_safetensors`, and :func:`write_hf_dir`, the single HF
  directory writer (weights + config.json + the tokenizer files of
  :data:`~megatron_nft.checkpoint.common.TOKENIZER_FILES`), always through
  :func:`~megatron_nft.checkpoint.common.atomic_dir`. ``nft-convert mcore-to-hf``, the trainer's
  ``hf/`` export, the engine's start directory and the tiny base model all use it.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from megatron_nft.checkpoint import mapping as M
from megatron_nft.checkpoint.common import (DTYPES, HF_CONFIG_FILE, ST_DTYPES, TOKENIZER_DIR, ConversionError,
                                            atomic_dir, copy_tokenizer_files, dtype_name, is_rank0, progress_iter,
                                            unwrap_chunks)
from megatron_nft.checkpoint.dist import load_dist_checkpoint
from megatron_nft.stability import InputError


def model_dir_config(path: str) -> tuple[str, dict]:
    """``model.hf_path`` -> (its config file, the HF config dict): an HF directory
    (``config.json``) or a megatron-nft checkpoint (``hf_config.json``)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.hf_path: {path!r} is not a directory")
    for name in ("config.json", HF_CONFIG_FILE):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            return f, _read_config(f)
    raise FileNotFoundError(f"model.hf_path: {path!r} has neither config.json (HF) nor "
                            f"{HF_CONFIG_FILE} (megatron-nft checkpoint)")


def _read_config(f: str) -> dict:
    try:
        with open(f, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        where = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise InputError(f"{f}: invalid JSON ({where}): restore the model's config (model.hf_path)") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{f}: expected a JSON object, got {type(cfg).__name__}: restore the model's config")
    return cfg


def _open_safetensors(stack: ExitStack, path: Path):
    from safetensors import safe_open

    try:
        return stack.enter_context(safe_open(str(path), "pt"))
    except Exception as e:  # SafetensorError: a truncated or overwritten header
        raise InputError(f"{path}: not a readable safetensors file ({e}): re-download or re-export "
                         "model.hf_path") from None


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def tokenizer_dir(path: str) -> str:
    """Where the tokenizer of a model directory lives (checkpoints keep it in ``tokenizer/``)."""
    return path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else os.path.join(path, TOKENIZER_DIR)


def load_initial_weights(model_chunks, path: str) -> None:
    """Load an HF directory or a megatron-nft dist checkpoint into ``model_chunks``."""
    if is_hf_dir(path):
        load_hf_into_model(model_chunks, path)
    else:
        load_dist_checkpoint(model_chunks, path)


class HFSafetensors:
    """Lazy reader of an HF dir's safetensors (single file or index); one tensor at a time."""

    def __init__(self, hf_dir):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            wm = json.loads(index.read_text())["weight_map"]
            files = sorted(set(wm.values()))
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            wm = None
        if not files:
            raise ConversionError(f"no *.safetensors weights in {self.dir} (only safetensors "
                                  "HF checkpoints are supported)")
        self._stack = ExitStack()
        self._handles = {f: _open_safetensors(self._stack, self.dir / f) for f in files}
        self.weight_map = wm or {k: f for f, h in self._handles.items() for k in h.keys()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise ConversionError(f"tensor {name!r} is missing from the HF checkpoint {self.dir}")
        f = self.weight_map[name]
        try:
            t = self._handles[f].get_tensor(name)
        except Exception as e:  # a truncated file: the header promises bytes that are not there
            raise InputError(f"{self.dir / f}: tensor {name!r} cannot be read ({e}): the file is damaged; "
                             "re-download or re-export model.hf_path") from None
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"{self.dir / f}: tensor {name!r} has non-finite values (NaN/inf): the weight file "
                             "is damaged; re-download or re-export model.hf_path")
        return t

    def dtype(self) -> torch.dtype:
        """dtype of the stored weights (read from the header, no tensor is loaded)."""
        name = next(iter(self.weight_map))
        code = self._handles[self.weight_map[name]].get_slice(name).get_dtype()
        return ST_DTYPES.get(code, torch.float32)



def _entries(model_chunks):
    """``(kind, global_layer, mcore_name, param, chunk)`` for every parameter of this rank."""
    out = []
    for m in unwrap_chunks(model_chunks):
        layers = m.decoder.layers if hasattr(m, "decoder") else []
        glob = {i: layer.layer_number - 1 for i, layer in enumerate(layers)}  # 1-based, global
        for name, p in m.named_parameters():
            kind, local = M.parse_mcore_name(name)
            out.append((kind, glob[local] if local is not None else None, name, p, m))
    return out


def _mapping_cfg(model_chunks):
    """The :class:`~megatron_nft.arch.ModelArch` the model was built from."""
    return unwrap_chunks(model_chunks)[0].nft_arch


@torch.no_grad()
def load_hf_into_model(model_chunks, hf_dir, *, progress: bool = True) -> None:
    """Copies HF safetensors weights into this rank's shards of ``model_chunks`` (streaming).

    Every rank reads only the HF tensors its own parameters need, one at a time.
    """
    from megatron.core import parallel_state as ps

    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    cfg = _mapping_cfg(model_chunks)
    entries = _entries(model_chunks)
    with HFSafetensors(hf_dir) as st:
        for kind, layer, name, p, _ in progress_iter(entries, desc="load HF weights", unit="tensor",
                                                 enable=progress):
            src = [st.get(n) for n in M.hf_names(kind, layer, cfg)]
            padded = p.shape[0] * tp if kind in ("embedding", "output") else None
            t = M.hf_to_mcore(kind, src, cfg, tp, tp_rank, padded)
            if tuple(t.shape) != tuple(p.shape):
                raise ConversionError(
                    f"shape mismatch for {name} (from {M.hf_names(kind, layer, cfg)}): "
                    f"HF gives {tuple(t.shape)}, model expects {tuple(p.shape)}")
            p.data.copy_(t)
            del src, t


@torch.no_grad()
def export_model_to_hf_state(model_chunks, *, gather_to: str = "all", dtype: torch.dtype | None = None,
                             progress: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(hf_name, full_tensor)`` in HF order, gathering TP shards and PP stages.

    Collective: every rank of the job must iterate it to the end. With ``gather_to="all"``
    each rank yields every tensor (what colocated weight sync needs); with ``"rank0"`` only
    global rank 0 yields (others still take part in the communication). Tensors are on the
    parameters' device; a tied ``lm_head`` is not yielded (HF ties it to embed_tokens).
    """
    from megatron.core import parallel_state as ps

    if gather_to not in ("all", "rank0"):
        raise ValueError("gather_to must be 'all' or 'rank0'")
    cfg = _mapping_cfg(model_chunks)
    entries = _entries(model_chunks)
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    pp_rank = ps.get_pipeline_model_parallel_rank()
    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    emit = gather_to == "all" or dist.get_rank() == 0
    if gather_to == "rank0" and ps.get_data_parallel_rank(with_context_parallel=True) != 0:
        return  # only model replica 0 has to assemble the tensors for rank 0
    bcast = pp > 1 and (gather_to == "all" or 0 in dist.get_process_group_ranks(pp_group))
    dev = entries[0][3].device
    local_meta = [(k, l, tuple(p.shape), dtype_name(p.dtype)) for k, l, _, p, _ in entries]
    metas = [local_meta] * pp
    if pp > 1:
        dist.all_gather_object(metas, local_meta, group=pp_group)
    total = sum(len(m) for m in metas)
    bar = progress_iter(total=total, desc="export HF weights", unit="tensor", enable=progress)
    for stage, meta in enumerate(metas):
        for j, (kind, layer, shape, dt) in enumerate(meta):
            bar.update(1)
            if kind == "output" and cfg.tie_word_embeddings:
                continue
            n = 1 if M.KINDS[kind] is None else tp
            if stage == pp_rank:
                shard = entries[j][3].detach().contiguous()
                if n > 1:
                    stacked = torch.empty((n, *shape), dtype=shard.dtype, device=shard.device)
                    dist.all_gather(list(stacked.unbind(0)), shard, group=tp_group)
                else:
                    stacked = shard.unsqueeze(0)
            else:
                stacked = torch.empty((n, *shape), dtype=DTYPES.get(dt, torch.float32), device=dev)
            if bcast:
                dist.broadcast(stacked, src=dist.get_global_rank(pp_group, stage), group=pp_group)
            if not emit:
                continue
            for hf_name, t in M.mcore_to_hf(kind, list(stacked.unbind(0)), cfg, layer):
                yield hf_name, (t if dtype is None else t.to(dtype))
    bar.close()


def _parse_size(s: str | int) -> int:
    s = str(s).strip().upper()
    for unit, mul in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mul)
    return int(s)


def _umask() -> int:
    mask = os.umask(0o22)
    return os.umask(mask) and mask


def write_hf_safetensors(named_tensors, out_dir, *, max_shard_size="5GB") -> list[str]:
    """Writes ``(name, tensor)`` pairs as HF safetensors, holding at most one shard in RAM."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    limit = _parse_size(max_shard_size)
    shards, buf, size, total = [], {}, 0, 0

    def flush():
        nonlocal buf, size
        if buf:
            name = f"_shard{len(shards):05d}.safetensors"
            save_file(buf, str(out_dir / name), metadata={"format": "pt"})
            os.chmod(out_dir / name, 0o666 & ~_umask())
            shards.append((name, list(buf)))
            buf, size = {}, 0

    for name, t in named_tensors:
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if buf and size + nbytes > limit:
            flush()
        buf[name], size, total = t, size + nbytes, total + nbytes
    flush()
    if len(shards) == 1:
        os.replace(out_dir / shards[0][0], out_dir / "model.safetensors")
        return ["model.safetensors"]
    files, weight_map = [], {}
    for i, (tmp_name, names) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(out_dir / tmp_name, out_dir / final)
        files.append(final)
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files




def write_hf_dir(named_tensors, out_dir, src_dir, *, max_shard_size="5GB", overwrite: bool = True) -> Path:
    """Collective: write an HF directory from a ``(name, tensor)`` stream (only rank 0's stream
    is written; the other ranks' are drained so collectives in it complete). ``config.json``
    and tokenizer files come from ``src_dir`` (an HF dir or a megatron-nft checkpoint)."""
    src = Path(src_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if not is_rank0():
            for _ in named_tensors:
                pass
        else:
            write_hf_safetensors(named_tensors, tmp, max_shard_size=max_shard_size)
            cfg = src / "config.json" if (src / "config.json").is_file() else src / HF_CONFIG_FILE
            shutil.copy2(cfg, tmp / "config.json")
            copy_tokenizer_files(Path(tokenizer_dir(str(src))), tmp)
    return Path(out_dir).absolute()


def export_hf_dir(model_chunks, out_dir, src_dir, *, dtype: torch.dtype | None = None, show_progress: bool = False,
                  max_shard_size="5GB", overwrite: bool = True) -> Path:
    """Collective: the model (gathered over TP/PP to rank 0) as an HF directory."""
    named = export_model_to_hf_state(model_chunks, gather_to="rank0", dtype=dtype, progress=show_progress)
    return write_hf_dir(named, out_dir, src_dir, max_shard_size=max_shard_size, overwrite=overwrite)
