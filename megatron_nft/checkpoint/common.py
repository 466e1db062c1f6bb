"""Shared pieces of the checkpoint package: file-format names, the user-facing error, rank
helpers, and the one helper that writes a directory atomically (:func:`atomic_dir`) -- used by
training checkpoints, converted checkpoints, HF exports and the tiny base model alike."""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

FORMAT_NAME = "megatron-nft/mcore-dist"
FORMAT_VERSION = 1
META_FILE = "nft_checkpoint.json"
HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja", "chat_template.json")
ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConversionError(RuntimeError):
    """A problem with the user's input (printed without a traceback by the CLI)."""


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def progress_iter(iterable=None, **kw):
    from tqdm.auto import tqdm
    return tqdm(iterable, file=sys.stderr, disable=not (is_rank0() and kw.pop("enable", True)), **kw)


def unwrap_chunks(model_chunks):
    from megatron_nft.megatron.model import unwrap_model
    if not isinstance(model_chunks, (list, tuple)):
        model_chunks = [model_chunks]
    return [unwrap_model(m) for m in model_chunks]



def copy_tokenizer_files(src_dir: Path, dst_dir: Path) -> list[str]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in TOKENIZER_FILES if (src_dir / n).is_file()]
    for n in names:
        shutil.copy2(src_dir / n, dst_dir / n)
    return names


@contextmanager
def atomic_dir(final, *, overwrite: bool = True) -> Iterator[Path]:
    """Collective (every rank enters it; also fine without torch.distributed): yields a fresh
    temporary sibling ``.<name>.partial`` to write into; on a clean exit rank 0 moves it to
    ``final`` (an existing ``final`` is moved aside first and removed after). A crash leaves only
    the ``.partial`` directory, which nothing reads and the next attempt clears, so a
    half-written directory is never taken for a finished one."""
    final = Path(final).absolute()
    tmp = final.parent / f".{final.name}.partial"
    if final.exists() and not overwrite:  # checked on every rank (shared FS): no one hangs
        raise ConversionError(f"output {final} already exists (pass --overwrite to replace it)")
    if is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    yield tmp
    barrier()
    if is_rank0():
        old = final.parent / f".{final.name}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
