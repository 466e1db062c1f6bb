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
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# The library API lives in common / dist / hf_io; re-exported here for the CLI's users.
from megatron_nft.checkpoint.common import (DTYPES, FORMAT_NAME, FORMAT_VERSION, HF_CONFIG_FILE,  # noqa: F401
                                            META_FILE, TOKENIZER_DIR, TOKENIZER_FILES, ConversionError,
                                            dtype_name, is_rank0)
from megatron_nft.checkpoint.dist import (  # noqa: F401
    load_dist_checkpoint, read_checkpoint_info, resolve_checkpoint_dir, save_dist_checkpoint)
from megatron_nft.checkpoint.hf_io import (HFSafetensors, export_hf_dir, export_model_to_hf_state,  # noqa: F401
                                           load_hf_into_model, write_hf_safetensors)


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
    params_dtype = src_dtype if dtype == "auto" else DTYPES[dtype]
    parallel.init_distributed(tp, pp, seed)
    model = build_gpt_model(hf_dir, transformer_impl=transformer_impl, params_dtype=params_dtype,
                            perform_initialization=False)
    load_hf_into_model([model], hf_dir)
    meta = {"source": str(hf_dir.absolute()), "source_dtype": dtype_name(src_dtype)}
    out = save_dist_checkpoint([model], out_dir, hf_dir=hf_dir, meta=meta, overwrite=overwrite)
    if is_rank0():
        print(f"[nft-convert] wrote megatron dist checkpoint {out}", file=sys.stderr)
    return out


def convert_mcore_to_hf(mcore_dir, out_dir, *, tp: int = 1, pp: int = 1, dtype: str = "auto",
                        max_shard_size="5GB", overwrite: bool = False) -> Path:
    """megatron-nft dist checkpoint -> HF dir (config.json, safetensors, tokenizer files)."""
    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.model import build_gpt_model, parse_hf_config, validate_parallel

    mcore_dir = resolve_checkpoint_dir(mcore_dir)  # a run / step directory -> its dist checkpoint
    hf_cfg, meta = read_checkpoint_info(mcore_dir)
    validate_parallel(parse_hf_config(hf_cfg), tp, pp)
    if tp * pp > 1 and not _under_launcher():
        tp = pp = 1
    saved = DTYPES.get(meta.get("dtype", "float32"), torch.float32)
    out_dtype = DTYPES.get(meta.get("source_dtype"), saved) if dtype == "auto" else DTYPES[dtype]
    parallel.init_distributed(tp, pp)
    model = build_gpt_model(hf_cfg, params_dtype=saved, perform_initialization=False)
    load_dist_checkpoint([model], mcore_dir)
    out = export_hf_dir([model], out_dir, mcore_dir, dtype=out_dtype, show_progress=True,
                        max_shard_size=max_shard_size, overwrite=overwrite)
    if is_rank0():
        print(f"[nft-convert] wrote HF checkpoint {out}", file=sys.stderr)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nft-convert", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors dir -> megatron dist checkpoint")
    a.add_argument("--hf", required=True, type=Path, help="HF model directory")
    b = sub.add_parser("mcore-to-hf", help="megatron dist checkpoint -> HF safetensors dir")
    b.add_argument("--mcore", required=True, type=Path,
                   help="converted checkpoint, training step directory (checkpoints/step_N) or run directory "
                        "(output.dir: its checkpoints/latest)")
    b.add_argument("--max-shard-size", default="5GB")
    for p in (a, b):
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--tp", type=int, default=1, help="tensor parallel size (under torchrun)")
        p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (under torchrun)")
        p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
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
