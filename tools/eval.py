"""``nft-eval``: math-reasoning evaluation (AIME24/25, AMC23, MATH500, Minerva, OlympiadBench).

Generate and grade (PAPER.md "Evaluation protocol": temperature 0.6, top-p 0.7, avg@32 on
AIME/AMC, avg@1 elsewhere, the Qwen2.5-Math chat template with a step-by-step system prompt)::

    nft-eval --model HF_OR_CKPT_DIR --out results.json --records records.jsonl
    nft-eval --model DIR --benchmarks aime24,math500 --n 4 --limit 10 --engine hf

Grade existing generations only (no model)::

    nft-eval --responses gens.jsonl --out results.json

``gens.jsonl`` lines: ``{"benchmark": "math500", "idx": 3, "response": "..."}`` (several lines
with one idx = several samples; idx = 0-based line of the benchmark file). ``--save-responses``
writes generations in this format. ``--model`` may be an HF directory or a megatron-nft
checkpoint directory (``hf_config.json``), which is converted to HF in a temporary directory.

Outputs: a table on stdout; ``--out`` the results JSON (see ``megatron_nft.eval.report``: one
entry per benchmark with accuracy/k/n_problems/pass@1/pass@k/maj@k, plus the reserved keys
``"average"`` and ``"meta"``); ``--records`` one JSON line per problem (gold, extracted answers,
correctness flags, majority answer). Metrics: ``megatron_nft.eval.metrics``; grading and the
OlympiadBench multi-answer rules: ``megatron_nft.eval.benchmarks``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

from megatron_nft.eval import benchmarks as B
from megatron_nft.eval.metrics import make_record, summarize
from megatron_nft.eval.report import build_results, format_table, write_json, write_records

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
REPO_ROOT = Path(__file__).resolve().parent.parent
GRADE_CHUNK = 64  # problems per grading call (progress granularity)


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
    g = p.add_argument_group("sampling")
    g.add_argument("--n", type=int, default=None,
                   help="samples per problem (default: 32 for aime/amc, 1 otherwise); with "
                        "--responses: use the first N samples of each problem")
    g.add_argument("--temperature", type=float, default=0.6, help="default 0.6 (PAPER.md); 0 = greedy")
    g.add_argument("--top-p", type=float, default=0.7, help="default 0.7 (PAPER.md)")
    g.add_argument("--max-tokens", type=int, default=3584,
                   help="max response tokens (default 3584, the 7B recipe's response length)")
    g.add_argument("--seed", type=int, default=0, help="base sampling seed (default 0)")
    g.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT, help='"" = no system message')
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=["vllm", "hf", "auto"], default="auto",
                   help="auto (default): vLLM when installed, else HF generate")
    e.add_argument("--tp", type=int, default=1, help="tensor parallel size (vLLM)")
    e.add_argument("--dtype", default=None, help="model dtype (default: fp32 on CPU, bf16 on GPU)")
    e.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    e.add_argument("--max-model-len", type=int, default=None)
    e.add_argument("--chunk-prompts", type=int, default=128, help="prompts per generate() call")
    o = p.add_argument_group("grading and output")
    o.add_argument("--verify-workers", type=int, default=None, help="grader processes")
    o.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per answer")
    o.add_argument("--out", help="results JSON")
    o.add_argument("--records", help="per-problem records (jsonl)")
    o.add_argument("--save-responses", help="write generations as --responses jsonl")
    o.add_argument("--convert-dir", default=None,
                   help="where a megatron-nft checkpoint is converted to HF (default: system temp "
                        "dir); the converted copy is deleted after generation")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


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
            out.setdefault(name, {}).setdefault(idx, []).extend(resp)
    return out


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
    """HF dir as is; a megatron-nft checkpoint is converted into ``tmp_root/hf``."""
    d = Path(model)
    if (d / "config.json").is_file():
        return str(d)
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


def generate(args, problems: dict[str, list], hf_dir: str) -> dict[str, list[list[dict]]]:
    """``{benchmark: [[{"text", "finish_reason"}, ...] per problem]}``."""
    from transformers import AutoTokenizer

    from megatron_nft.data.prompts import render_prompt
    from megatron_nft.rollout import SamplingConfig, make_engine

    tok = AutoTokenizer.from_pretrained(hf_dir)
    system = args.system_prompt or None
    # gpu_memory_utilization / max_model_len only apply to vLLM (make_engine ignores them for HF)
    engine = make_engine(args.engine, hf_dir, tp=args.tp, seed=args.seed, dtype=args.dtype,
                         gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
    out: dict[str, list[list[dict]]] = {}
    try:
        for name, probs in problems.items():
            n = args.n or B.BENCHMARKS[name].default_n
            ids = [list(tok(render_prompt(p.question, tok, system), add_special_tokens=False)["input_ids"])
                   for p in probs]
            res: list[list[dict]] = []
            bar = _progress(total=len(ids), desc=f"generate {name} (n={n})", disable=args.no_progress)
            step = max(1, args.chunk_prompts)
            for start in range(0, len(ids), step):
                seed = (args.seed + zlib.crc32(f"{name}:{start}".encode())) % (2**31)
                sc = SamplingConfig(n=n, temperature=args.temperature, top_p=args.top_p,
                                    max_tokens=args.max_tokens, seed=seed)
                for comps in engine.generate(ids[start:start + step], sc):
                    res.append([{"text": c.text or tok.decode(c.token_ids, skip_special_tokens=True),
                                 "finish_reason": c.finish_reason} for c in comps])
                bar.update(min(step, len(ids) - start))
            bar.close()
            out[name] = res
    finally:
        engine.close()
    return out


# ----------------------------------------------------------------------------- main


def _fail(msg: str):
    raise EvalError(msg)


def main(argv=None, *, verifier=None) -> int:
    """CLI entry point. ``verifier``: an open ``MathVerifier`` to grade with (embedding, tests);
    by default one is created for the run and shared by all benchmarks."""
    args = build_parser().parse_args(argv)
    if bool(args.model) == bool(args.responses):
        _fail("give exactly one of --model (generate and grade) or --responses (grade only)")
    for opt in ("n", "limit", "max_tokens"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            _fail(f"--{opt.replace('_', '-')} must be >= 1")
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        _fail("no benchmark data: pass --data-dir DIR (with aime24.jsonl, ..., olympiadbench.jsonl); "
              f"the default {REPO_ROOT.parent / 'shared' / 'data' / 'eval'} does not exist")
    if not os.path.isdir(data_dir):
        _fail(f"--data-dir {data_dir}: no such directory")
    spec = args.benchmarks
    if spec is None and args.responses:
        spec = _benchmarks_in_file(args.responses) or None
    try:
        names = B.parse_benchmarks(spec)
        full = {n: B.load_problems(n, data_dir) for n in names}
    except (ValueError, FileNotFoundError) as ex:
        _fail(str(ex))

    problems = {n: ps[: args.limit] if args.limit else ps for n, ps in full.items()}
    gens: dict[str, list[list[dict]]] = {}
    tmp = None
    meta = {"data_dir": os.path.abspath(data_dir), "limit": args.limit}
    try:
        if args.responses:
            got = read_responses(args.responses, {n: len(ps) for n, ps in full.items()})
            meta.update(responses=os.path.abspath(args.responses), n=args.n)
            for name, ps in problems.items():
                by_idx = got.get(name, {})
                kept = [p for p in ps if by_idx.get(p.idx)]
                if len(kept) < len(ps):
                    print(f"[nft-eval] {name}: responses for {len(kept)} of {len(ps)} problems; "
                          "grading those", file=sys.stderr)
                problems[name] = kept
                gens[name] = [[{"text": t} for t in by_idx[p.idx][: args.n or None]] for p in kept]
        else:
            if args.convert_dir:
                os.makedirs(args.convert_dir, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix="nft-eval-", dir=args.convert_dir)
            hf_dir = resolve_model(args.model, tmp)
            meta.update(model=os.path.abspath(args.model), engine=args.engine, temperature=args.temperature,
                        top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
                        system_prompt=args.system_prompt,
                        n={n: args.n or B.BENCHMARKS[n].default_n for n in names})
            gens = generate(args, problems, hf_dir)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.save_responses:
        with open(args.save_responses, "w", encoding="utf-8") as f:
            for name, ps in problems.items():
                for p, samples in zip(ps, gens[name]):
                    for s in samples:
                        f.write(json.dumps({"benchmark": name, "idx": p.idx, "response": s["text"]},
                                           ensure_ascii=False) + "\n")

    from megatron_nft.rewards import MathVerifier

    summaries, records = {}, []
    own = verifier is None
    if own:
        verifier = MathVerifier(timeout_s=args.verify_timeout, num_workers=args.verify_workers)
    try:
        for name, ps in problems.items():
            texts = [[s["text"] for s in samples] for samples in gens[name]]
            flags: list[list[bool]] = []
            bar = _progress(total=len(ps), desc=f"grade {name}", disable=args.no_progress)
            for start in range(0, len(ps), GRADE_CHUNK):
                flags += B.grade(verifier, ps[start:start + GRADE_CHUNK], texts[start:start + GRADE_CHUNK])
                bar.update(len(ps[start:start + GRADE_CHUNK]))
            bar.close()
            recs = []
            for p, samples, ts, fl in zip(ps, gens[name], texts, flags):
                answers = [B.final_answer(t, p.grader) for t in ts]
                keys = [B.answer_key(a, p.grader) for a in answers]
                extra = {}
                if samples and "finish_reason" in samples[0]:
                    extra["n_truncated"] = sum(s["finish_reason"] == "length" for s in samples)
                recs.append(make_record(name, p.idx, p.gold, answers, keys, fl, **extra))
            summaries[name] = summarize(recs)
            records.extend(recs)
    finally:
        if own:
            verifier.close()

    results = build_results(summaries, meta)
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
