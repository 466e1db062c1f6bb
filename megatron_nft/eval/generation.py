"""Evaluation generation: a fixed plan of seeded chunks, ``dp`` engines over the node's GPUs,
and a generations file that is appended to as chunks finish (a killed run resumes).

Plan. Every problem needs ``n`` samples; they are cut into blocks of ``b`` samples (``b`` = the
largest divisor of ``n`` that is <= ``max_block``), a *unit* = one problem x one block. Units,
in benchmark / file order, are grouped ``chunk_units`` at a time into *chunks*; a chunk is one
``engine.generate`` call whose seed depends only on its first unit
(``seed + crc32("bench:idx:first_sample")``). What a chunk samples therefore depends only on the
chunk, never on which engine or process runs it or what ran before: ``--dp 2`` gives what
``--dp 1`` gives, and a resumed run what an uninterrupted one gives.

Engines. ``dp == 1``: one engine in this process. ``dp > 1``: ``dp`` spawned worker processes,
worker r seeing GPUs ``r*tp .. r*tp+tp-1`` of the visible ones (``CUDA_VISIBLE_DEVICES``); on a
machine without GPUs every worker gets ``cpu_count // dp`` threads. Workers pull chunks from
one queue (the first free one takes the next chunk) and send the texts back; only this process
writes the generations file.

Generations file (``--save-responses``): one JSON line per sample,
``{"benchmark", "idx", "sample", "response", "finish_reason"}`` (the ``--responses`` format),
flushed after each chunk; ``PATH.meta.json`` holds the settings that determine the samples
(model, sampling, seed, plan) and a rerun with other settings is refused. On start, samples
already in the file are kept and only chunks with a missing sample are generated again.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import traceback
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

__all__ = ["Chunk", "block_size", "plan_chunks", "GenerationStore", "run_chunks", "gpu_groups"]


@dataclass(frozen=True)
class Chunk:
    benchmark: str
    units: tuple  # ((idx, first_sample), ...)
    block: int  # samples per unit
    seed: int

    def keys(self) -> list[tuple[str, int, int]]:
        return [(self.benchmark, i, s0 + k) for i, s0 in self.units for k in range(self.block)]


def block_size(n: int, max_block: int) -> int:
    """The largest divisor of ``n`` that is at most ``max_block`` (>= 1)."""
    return max(d for d in range(1, min(n, max(1, max_block)) + 1) if n % d == 0)


def plan_chunks(idxs: dict[str, list[int]], n_of: dict[str, int], *, seed: int, max_block: int,
                chunk_units: int) -> list[Chunk]:
    """The fixed list of chunks for ``{benchmark: [problem idx]}`` (module docstring)."""
    chunks = []
    for name, ids in idxs.items():
        b = block_size(n_of[name], max_block)
        units = [(i, s0) for i in ids for s0 in range(0, n_of[name], b)]
        for start in range(0, len(units), max(1, chunk_units)):
            part = tuple(units[start:start + max(1, chunk_units)])
            tag = f"{name}:{part[0][0]}:{part[0][1]}".encode()
            chunks.append(Chunk(name, part, b, (seed + zlib.crc32(tag)) % (2**31)))
    return chunks


class GenerationStore:
    """The append-only generations file and its settings sidecar (module docstring)."""

    def __init__(self, path: str, settings: dict):
        self.path, self.meta_path = path, path + ".meta.json"
        self.done: dict[tuple[str, int, int], dict] = {}
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            old = self._read_meta()
            if old is not None and old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ValueError(f"{path} holds generations made with other settings ({', '.join(diff)} "
                                 f"differ, see {self.meta_path}): pass the same settings to resume, or "
                                 "another --save-responses path / delete the file to start afresh")
            self._load()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(self.meta_path, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=1, sort_keys=True)
        if os.path.isfile(path) and os.path.getsize(path) > 0 and not _ends_with_newline(path):
            _drop_cut_line(path)  # the last line of a killed run was cut mid-write
        self._f = open(path, "a", encoding="utf-8")

    def _read_meta(self) -> Optional[dict]:
        try:
            with open(self.meta_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a generation line
            if isinstance(row, dict) and {"benchmark", "idx", "sample", "response"} <= set(row):
                self.done[(row["benchmark"], int(row["idx"]), int(row["sample"]))] = row

    def missing(self, chunks: Iterable[Chunk]) -> list[Chunk]:
        return [c for c in chunks if any(k not in self.done for k in c.keys())]

    def add(self, chunk: Chunk, samples: list[dict]) -> None:
        """Append the samples of one finished chunk (those not in the file yet), then flush."""
        for key, s in zip(chunk.keys(), samples):
            if key in self.done:
                continue
            row = {"benchmark": key[0], "idx": key[1], "sample": key[2], "response": s["text"],
                   "finish_reason": s["finish_reason"]}
            self.done[key] = row
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _drop_cut_line(path: str) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# ----------------------------------------------------------------------------- running


def generate_chunk(engine, prompt_ids: dict, chunk: Chunk, sampling: dict, decode) -> list[dict]:
    """Run one chunk: ``[{"text", "finish_reason"}]`` in ``chunk.keys()`` order."""
    from megatron_nft.rollout import SamplingConfig

    sc = SamplingConfig(n=chunk.block, seed=chunk.seed, **sampling)
    outs = engine.generate([prompt_ids[(chunk.benchmark, i)] for i, _ in chunk.units], sc)
    return [{"text": c.text or decode(c.token_ids), "finish_reason": c.finish_reason}
            for comps in outs for c in comps]


def gpu_groups(dp: int, tp: int) -> list[Optional[str]]:
    """``CUDA_VISIBLE_DEVICES`` for each of ``dp`` engines of ``tp`` GPUs (None each without GPUs)."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        gpus = [g.strip() for g in vis.split(",") if g.strip()]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if not gpus:
        return [None] * dp
    if dp * tp > len(gpus):
        raise ValueError(f"--dp {dp} x --tp {tp} = {dp * tp} GPUs, but {len(gpus)} are visible "
                         f"({','.join(gpus)}): lower --dp (at most {max(1, len(gpus) // tp)})")
    return [",".join(gpus[r * tp:(r + 1) * tp]) for r in range(dp)]


def _worker(rank: int, spec: dict, tasks, results) -> None:
    """A dp worker: build the engine, then run chunks from ``tasks`` until ``None``."""
    try:
        if spec.get("threads"):
            import torch

            torch.set_num_threads(spec["threads"])
        from transformers import AutoTokenizer

        from .engines import build_engine

        tok = AutoTokenizer.from_pretrained(spec["hf_dir"])
        engine = build_engine(**spec["engine"])
        results.put(("ready", rank, None, None))
        while (item := tasks.get()) is not None:
            ci, chunk = item
            results.put(("done", rank, ci, generate_chunk(engine, spec["prompt_ids"], chunk, spec["sampling"],
                                                          lambda ids: tok.decode(ids, skip_special_tokens=True))))
        engine.close()
        results.put(("exit", rank, None, None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", rank, None, traceback.format_exc()))


def run_chunks(chunks: list[Chunk], spec: dict, store: GenerationStore, *, dp: int, tp: int,
               on_chunk: Callable[[Chunk], None] = lambda c: None) -> None:
    """Generate ``chunks`` with ``dp`` engines and add each finished chunk to ``store``.

    ``spec``: ``hf_dir``, ``engine`` (``build_engine`` kwargs), ``sampling`` (SamplingConfig
    kwargs without n/seed), ``prompt_ids`` (``{(benchmark, idx): [token ids]}``)."""
    if not chunks:
        return
    if dp == 1:
        from transformers import AutoTokenizer

        from .engines import build_engine

        tok = AutoTokenizer.from_pretrained(spec["hf_dir"])
        engine = build_engine(**spec["engine"])
        try:
            for c in chunks:
                store.add(c, generate_chunk(engine, spec["prompt_ids"], c, spec["sampling"],
                                            lambda ids: tok.decode(ids, skip_special_tokens=True)))
                on_chunk(c)
        finally:
            engine.close()
        return
    _run_pool(chunks, spec, store, dp=dp, tp=tp, on_chunk=on_chunk)


def _run_pool(chunks, spec, store, *, dp, tp, on_chunk) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    groups = gpu_groups(dp, tp)
    threads = None if groups[0] is not None else max(1, (os.cpu_count() or 1) // dp)
    procs = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for r, g in enumerate(groups):
            if g is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = g  # read by the spawned child at start-up
            p = ctx.Process(target=_worker, args=(r, dict(spec, threads=threads), tasks, results), daemon=True)
            p.start()
            procs.append(p)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    print(f"[nft-eval] {dp} engines x tp {tp}" + (f" on GPUs {groups}" if groups[0] else f", {threads} CPU threads each"),
          file=sys.stderr)
    try:
        for item in enumerate(chunks):
            tasks.put(item)
        for _ in procs:
            tasks.put(None)
        left, running = len(chunks), len(procs)
        while running:
            try:
                kind, rank, ci, payload = results.get(timeout=5)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"nft-eval: generation worker(s) {dead} died (exit codes "
                                       f"{[procs[r].exitcode for r in dead]}; out of memory?)") from None
                continue
            if kind == "error":
                raise RuntimeError(f"nft-eval: generation worker {rank} failed:\n{payload}")
            if kind == "done":
                store.add(chunks[ci], payload)
                on_chunk(chunks[ci])
                left -= 1
            elif kind == "exit":
                running -= 1
        if left:
            raise RuntimeError(f"nft-eval: {left} chunks were not generated")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
