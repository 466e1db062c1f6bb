"""HF <-> megatron-core checkpoint conversion (library + ``nft-convert`` CLI).

Converted checkpoint layout (``--out DIR``)::

    DIR/  metadata.json, common.pt, __*.distcp   megatron-core dist_checkpointing checkpoint of
                                                 {"model": GPTModel.sharded_state_dict()}
          hf_config.json                         the HF config.json, byte-for-byte
          tokenizer/                             tokenizer + generation config files copied
          nft_checkpoint.json                    format/version, source, dtype, vocab sizes

A *dist* checkpoint (global shapes + shard offsets) loads at any TP/PP, vocab padding
differences included (megatron marks embeddings ``allow_shape_mismatch``).

``hf-to-mcore`` under ``torchrun --nproc-per-node K`` saves from a TP×PP layout (K a multiple
of tp*pp). CHOICE: as a plain single process with ``--tp/--pp`` > 1 it converts at TP1/PP1
(the sizes are still validated): the content is identical and layout-independent, so
spawning workers would gain nothing. ``mcore-to-hf`` loads at TP1/PP1 in one process (or at
``--tp/--pp`` under torchrun, gathering shards) and streams tensor by tensor into
``model.safetensors`` (numbered shards + index above ``--max-shard-size``). Outputs are
written to a temporary sibling directory and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from megatron_nft.checkpoint import mapping as M

FORMAT_NAME = "megatron-nft/mcore-dist"
FORMAT_VERSION = 1
META_FILE = "nft_checkpoint.json"
HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja", "chat_template.json")
_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConversionError(RuntimeError):
    """A problem with the user's input (printed without a traceback by the CLI)."""


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _progress(iterable=None, **kw):
    from tqdm.auto import tqdm
    return tqdm(iterable, file=sys.stderr, disable=not (_rank0() and kw.pop("enable", True)), **kw)


# ---------------------------------------------------------------- HF safetensors (streaming)
class HFSafetensors:
    """Lazy reader of an HF dir's safetensors (single file or index); one tensor at a time."""

    def __init__(self, hf_dir):
        from safetensors import safe_open

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
        self._handles = {f: self._stack.enter_context(safe_open(str(self.dir / f), "pt")) for f in files}
        self.weight_map = wm or {k: f for f, h in self._handles.items() for k in h.keys()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise ConversionError(f"tensor {name!r} is missing from the HF checkpoint {self.dir}")
        return self._handles[self.weight_map[name]].get_tensor(name)

    def dtype(self) -> torch.dtype:
        """dtype of the stored weights (read from the header, no tensor is loaded)."""
        name = next(iter(self.weight_map))
        code = self._handles[self.weight_map[name]].get_slice(name).get_dtype()
        return _ST_DTYPES.get(code, torch.float32)


# ---------------------------------------------------------------- model <-> HF tensors
def _chunks(model_chunks):
    from megatron_nft.megatron.model import unwrap_model
    if not isinstance(model_chunks, (list, tuple)):
        model_chunks = [model_chunks]
    return [unwrap_model(m) for m in model_chunks]


def _entries(model_chunks):
    """``(kind, global_layer, mcore_name, param, chunk)`` for every parameter of this rank."""
    out = []
    for m in _chunks(model_chunks):
        layers = m.decoder.layers if hasattr(m, "decoder") else []
        glob = {i: layer.layer_number - 1 for i, layer in enumerate(layers)}  # 1-based, global
        for name, p in m.named_parameters():
            kind, local = M.parse_mcore_name(name)
            out.append((kind, glob[local] if local is not None else None, name, p, m))
    return out


def _mapping_cfg(model_chunks) -> M.MappingConfig:
    return M.MappingConfig.from_arch(_chunks(model_chunks)[0].nft_arch)


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
        for kind, layer, name, p, _ in _progress(entries, desc="load HF weights", unit="tensor",
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
    local_meta = [(k, l, tuple(p.shape), _dtype_name(p.dtype)) for k, l, _, p, _ in entries]
    metas = [local_meta] * pp
    if pp > 1:
        dist.all_gather_object(metas, local_meta, group=pp_group)
    total = sum(len(m) for m in metas)
    bar = _progress(total=total, desc="export HF weights", unit="tensor", enable=progress)
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
                stacked = torch.empty((n, *shape), dtype=_DTYPES.get(dt, torch.float32), device=dev)
            if bcast:
                dist.broadcast(stacked, src=dist.get_global_rank(pp_group, stage), group=pp_group)
            if not emit:
                continue
            for hf_name, t in M.mcore_to_hf(kind, list(stacked.unbind(0)), cfg, layer):
                yield hf_name, (t if dtype is None else t.to(dtype))
    bar.close()


# ---------------------------------------------------------------- dist checkpoint save / load
def _sharded_state(model_chunks) -> dict:
    chunks = _chunks(model_chunks)
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def _copy_tokenizer(src_dir: Path, dst_dir: Path) -> list[str]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in TOKENIZER_FILES if (src_dir / n).is_file()]
    for n in names:
        shutil.copy2(src_dir / n, dst_dir / n)
    return names


def _prepare_tmp(out: Path, overwrite: bool) -> Path:
    """Rank 0 creates ``.<name>.partial`` next to ``out``; all ranks get the same path."""
    out = Path(out).absolute()
    tmp = out.parent / f".{out.name}.partial"
    if out.exists() and not overwrite:  # checked on every rank (shared FS): no one hangs
        raise ConversionError(f"output {out} already exists (pass --overwrite to replace it)")
    if _rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    return tmp


def _finalize(tmp: Path, out: Path) -> None:
    out = Path(out).absolute()
    if _rank0():
        old = out.parent / f".{out.name}.old"
        if out.exists():  # --overwrite: move the previous one aside first
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def save_dist_checkpoint(model_chunks, ckpt_dir, *, hf_dir=None, hf_config: dict | None = None,
                         meta: dict | None = None, extra_state: dict | None = None,
                         overwrite: bool = False) -> Path:
    """Saves ``{"model": GPTModel.sharded_state_dict(), **extra_state}`` with megatron's
    dist_checkpointing, plus hf_config.json / tokenizer / nft_checkpoint.json; atomic.

    Collective (all ranks). ``hf_dir`` supplies config.json and tokenizer files to copy.
    """
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    out = Path(ckpt_dir).absolute()
    tmp = _prepare_tmp(out, overwrite)
    state = _sharded_state(model_chunks)
    if extra_state:
        state.update(extra_state)
    dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank0():
        m0 = _chunks(model_chunks)[0]
        arch = m0.nft_arch
        hf_cfg_path = Path(hf_dir) / "config.json" if hf_dir else None
        if hf_cfg_path is not None and hf_cfg_path.is_file():
            shutil.copy2(hf_cfg_path, tmp / HF_CONFIG_FILE)
        else:
            (tmp / HF_CONFIG_FILE).write_text(json.dumps(hf_config or m0.nft_hf_config, indent=2))
        tok = _copy_tokenizer(Path(hf_dir), tmp / TOKENIZER_DIR) if hf_dir else []
        info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "architecture": arch.architecture, "dtype": _dtype_name(next(m0.parameters()).dtype),
                "vocab_size": arch.vocab_size, "padded_vocab_size": getattr(m0, "vocab_size", None),
                "saved_tp": ps.get_tensor_model_parallel_world_size(),
                "saved_pp": ps.get_pipeline_model_parallel_world_size(),
                "tokenizer_files": tok, **(meta or {})}
        (tmp / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    _finalize(tmp, out)
    return out


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
    if absent and _rank0():
        print(f"[checkpoint] {ckpt_dir}: no {EXTRA_STATE} for {len(absent)} module(s) (checkpoint written "
              "without Transformer Engine); FP8 scaling state starts fresh", flush=True)
    for i, m in enumerate(_chunks(model_chunks)):
        key = "model" if "model" in loaded and len(_chunks(model_chunks)) == 1 else f"model{i}"
        res = m.load_state_dict(loaded[key], strict=False)
        bad = [k for k in res.missing_keys if not k.endswith(EXTRA_STATE)] + list(res.unexpected_keys)
        if strict and bad:
            raise ConversionError(f"checkpoint {ckpt_dir} does not match the model: {bad[:5]}")
    return loaded


# ---------------------------------------------------------------- HF writer
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


# ---------------------------------------------------------------- conversions
def _under_launcher() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _check_hf_dir(hf_dir: Path):
    from megatron_nft.megatron.model import parse_hf_config
    if not (hf_dir / "config.json").is_file():
        raise ConversionError(f"config.json not found in {hf_dir} (expected an HF model directory)")
    if not any(hf_dir.glob("*.safetensors")):
        raise ConversionError(f"no *.safetensors weights in {hf_dir} (only safetensors HF "
                              "checkpoints are supported; re-save with save_pretrained)")
    return parse_hf_config(hf_dir)


def convert_hf_to_mcore(hf_dir, out_dir, *, tp: int = 1, pp: int = 1, dtype: str = "auto",
                        transformer_impl: str = "local", overwrite: bool = False,
                        seed: int = 1234) -> Path:
    """HF dir -> megatron-core dist checkpoint (see module docstring)."""
    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.model import build_gpt_model, validate_parallel

    hf_dir = Path(hf_dir)
    arch = _check_hf_dir(hf_dir)
    validate_parallel(arch, tp, pp)
    if tp * pp > 1 and not _under_launcher():
        print(f"[nft-convert] single process: converting at TP1/PP1 instead of TP{tp}/PP{pp} "
              "(the dist checkpoint loads at any TP/PP)", file=sys.stderr)
        tp = pp = 1
    with HFSafetensors(hf_dir) as st:
        src_dtype = st.dtype()
    params_dtype = src_dtype if dtype == "auto" else _DTYPES[dtype]
    parallel.init_distributed(tp, pp, seed)
    model = build_gpt_model(hf_dir, transformer_impl=transformer_impl, params_dtype=params_dtype,
                            perform_initialization=False)
    load_hf_into_model([model], hf_dir)
    meta = {"source": str(hf_dir.absolute()), "source_dtype": _dtype_name(src_dtype)}
    out = save_dist_checkpoint([model], out_dir, hf_dir=hf_dir, meta=meta, overwrite=overwrite)
    if _rank0():
        print(f"[nft-convert] wrote megatron dist checkpoint {out}", file=sys.stderr)
    return out


def convert_mcore_to_hf(mcore_dir, out_dir, *, tp: int = 1, pp: int = 1, dtype: str = "auto",
                        max_shard_size="5GB", overwrite: bool = False) -> Path:
    """megatron-nft dist checkpoint -> HF dir (config.json, safetensors, tokenizer files)."""
    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.model import build_gpt_model, parse_hf_config, validate_parallel

    mcore_dir = Path(mcore_dir)
    hf_cfg, meta = read_checkpoint_info(mcore_dir)
    validate_parallel(parse_hf_config(hf_cfg), tp, pp)
    if tp * pp > 1 and not _under_launcher():
        tp = pp = 1
    saved = _DTYPES.get(meta.get("dtype", "float32"), torch.float32)
    out_dtype = _DTYPES.get(meta.get("source_dtype"), saved) if dtype == "auto" else _DTYPES[dtype]
    parallel.init_distributed(tp, pp)
    model = build_gpt_model(hf_cfg, params_dtype=saved, perform_initialization=False)
    load_dist_checkpoint([model], mcore_dir)
    out = Path(out_dir).absolute()
    tmp = _prepare_tmp(out, overwrite)
    tensors = export_model_to_hf_state([model], gather_to="rank0", dtype=out_dtype, progress=True)
    if not _rank0():
        for _ in tensors:  # take part in the collectives
            pass
    else:
        write_hf_safetensors(tensors, tmp, max_shard_size=max_shard_size)
        shutil.copy2(mcore_dir / HF_CONFIG_FILE, tmp / "config.json")
        for f in (mcore_dir / TOKENIZER_DIR).glob("*"):
            shutil.copy2(f, tmp / f.name)
    _finalize(tmp, out)
    if _rank0():
        print(f"[nft-convert] wrote HF checkpoint {out}", file=sys.stderr)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nft-convert", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors dir -> megatron dist checkpoint")
    a.add_argument("--hf", required=True, type=Path, help="HF model directory")
    b = sub.add_parser("mcore-to-hf", help="megatron dist checkpoint -> HF safetensors dir")
    b.add_argument("--mcore", required=True, type=Path, help="converted/trained checkpoint dir")
    b.add_argument("--max-shard-size", default="5GB")
    for p in (a, b):
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--tp", type=int, default=1, help="tensor parallel size (under torchrun)")
        p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (under torchrun)")
        p.add_argument("--dtype", choices=["auto", *_DTYPES], default="auto")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return ap


def _quiet_warnings() -> None:
    import warnings
    for msg in (".*Apex.*", ".*Transformer Engine.*", ".*deprecated.*", ".*cuda_graph_scope.*"):
        warnings.filterwarnings("ignore", message=msg)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_warnings()
    from megatron_nft.megatron.model import UnsupportedModelError

    owns_dist = not dist.is_initialized()
    try:
        if args.cmd == "hf-to-mcore":
            convert_hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype,
                                overwrite=args.overwrite)
        else:
            convert_mcore_to_hf(args.mcore, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype,
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    except (ConversionError, UnsupportedModelError, ValueError, FileNotFoundError) as e:
        print(f"nft-convert: error: {e}", file=sys.stderr)
        return 2
    finally:
        if owns_dist and dist.is_initialized():
            from megatron_nft.megatron import parallel
            parallel.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
