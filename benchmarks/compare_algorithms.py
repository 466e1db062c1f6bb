"""CPU-scale comparison of the five algorithms on the tiny task, from one warm start.

    .venv/bin/python benchmarks/compare_algorithms.py                  # full: 5 algorithms x 3 seeds
    .venv/bin/python benchmarks/compare_algorithms.py --reduced        # CI size (a few minutes)
    .venv/bin/python benchmarks/compare_algorithms.py --set train.max_steps=60 --seeds 1,2,3,4

What it does (``--out``, default ``outputs/compare_algorithms``):

1. builds the tiny warm start ONCE (``recipes/tiny_cpu.yaml``, ``train.max_steps=0``: tokenizer,
   model, supervised warm start, step-0 evaluation) in ``OUT/base``;
2. writes the held-out set once to ``OUT/heldout.jsonl``: every problem of the synthetic task's
   held-out 10%, so all runs (every algorithm, every seed) are evaluated on the same problems;
3. for each algorithm and seed, copies ``OUT/base/base_model`` into ``OUT/<algo>/seed<S>/`` (so
   every run starts from identical weights) and trains with ``nft-train`` -- the algorithm keys
   of the algorithm's 7B cluster recipe (``recipes/<algo>_qwen2.5_math_7b.yaml``: clip ranges,
   weighting, aggregation; the reference loss scale ``token-sum-dp-mean`` replaced by the tiny
   recipe's ``token-mean``, which its learning rate was set for); finished runs are reused;
4. writes ``OUT/results.md`` (table) + ``OUT/results.json`` and ``OUT/curves.png`` (held-out
   accuracy, rollout reward and entropy against step, mean over seeds).

Table: start accuracy (step 0, shared), final held-out accuracy mean +- std over seeds (avg@
``eval.n``), rollout reward (mean of the first / last 5 steps), rollout entropy (first -> last
step), seconds per run; and which algorithm pairs differ by more than 2 standard errors.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "recipes", "tiny_cpu.yaml")
ALGOS = ("nft", "rft", "grpo", "drgrpo", "dapo")
ALGO_KEYS = ("name", "epsilon", "weighting", "clip_low", "clip_high", "aggregation", "overlong_buffer")
# --reduced: the CI size -- a short warm start and a few small steps per run
REDUCED = ["model.tiny.sft_steps=40", "train.max_steps=3", "train.prompts_per_step=8", "rollout.n=4",
           "eval.n=1", "eval.interval=0"]
COMMON = ["checkpoint.interval=0", "checkpoint.export_hf=false", "output.tensorboard=false"]


def algorithm_sets(algo: str) -> list[str]:
    """``--set`` keys of ``algo`` as its 7B cluster recipe defines them (module docstring)."""
    from megatron_nft.config import load_config

    a = load_config(os.path.join(REPO, "recipes", f"{algo}_qwen2.5_math_7b.yaml")).algorithm
    out = []
    for k in ALGO_KEYS:
        v = getattr(a, k)
        if k == "aggregation" and v == "token-sum-dp-mean":
            v = "token-mean"
        out.append(f"algorithm.{k}={'null' if v is None else v}")
    return out


def write_heldout(path: str, sets: list[str]) -> int:
    """The held-out problems of the recipe's synthetic task as a prompt file; returns the count.
    Shape ``2+1``: every held-out problem (enumerated); ``mixed``: ``data.eval_size`` of them."""
    from megatron_nft.config import load_config
    from megatron_nft.data.synthetic import correct_answer, format_problem, make_problems, split_of, tiny_problem_kwargs

    cfg = load_config(TINY, sets)
    kw = tiny_problem_kwargs(cfg)
    if kw["shape"] == "2+1":
        keys = [(a, op, b) for op in kw["ops"] for a in range(10, 100)
                for b in (range(2, 10) if op == "*" else range(1, 10)) if split_of(a, b, op) == "eval"]
        rows = [{"prompt": format_problem(a, b, op), "answer": str(correct_answer(a, b, op))} for a, op, b in keys]
    else:
        rows = make_problems(cfg.data.eval_size, 0, "eval", **kw)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n")
    return len(rows)


def train(out: str, sets: list[str], log) -> float:
    """One ``nft-train`` run (a subprocess); returns its wall time. Raises naming the log."""
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "megatron_nft.train", "--recipe", TINY, "--set", f"output.dir={out}"]
    for s in COMMON + sets:
        cmd += ["--set", s]
    t0 = time.time()
    with open(os.path.join(out, "train.log"), "w") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    if p.returncode != 0:
        raise RuntimeError(f"training failed (exit {p.returncode}); see {os.path.join(out, 'train.log')}")
    seconds = time.time() - t0
    log(f"[compare] {out}: {seconds:.0f} s")
    return seconds


def run_all(args, sets: list[str], log) -> dict:
    """Base + held-out set once, then every (algorithm, seed); returns ``{algo: [run, ...]}``."""
    base = os.path.join(args.out, "base")
    heldout = os.path.join(args.out, "heldout.jsonl")
    os.makedirs(args.out, exist_ok=True)
    n_eval = write_heldout(heldout, sets)
    data = [f"data.eval={heldout}", f"data.eval_size={n_eval}"]
    if not os.path.isfile(os.path.join(base, "done.json")):
        secs = train(base, sets + data + ["train.max_steps=0"], log)
        with open(os.path.join(base, "done.json"), "w") as f:
            json.dump({"seconds": secs}, f)
    runs: dict = {}
    for algo in args.algos:
        for seed in args.seeds:
            out = os.path.join(args.out, algo, f"seed{seed}")
            done = os.path.join(out, "done.json")
            if not os.path.isfile(done):
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(os.path.join(base, "base_model"), os.path.join(out, "base_model"))
                secs = train(out, sets + data + algorithm_sets(algo) + [f"seed={seed}"], log)
                with open(done, "w") as f:
                    json.dump({"seconds": secs}, f)
            runs.setdefault(algo, []).append(read_run(out))
    return {"runs": runs, "base": read_run(base), "n_eval": n_eval}


def read_run(out: str) -> dict:
    """Per-step series of one run's ``metrics.jsonl`` and its wall time."""
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl")) if x.strip()]
    series = {k: [(r["step"], r[k]) for r in rows if k in r]
              for k in ("eval/accuracy", "rollout/reward", "rollout/entropy")}
    done = os.path.join(out, "done.json")
    meta = json.load(open(done)) if os.path.isfile(done) else {}
    return {"series": series, "seconds": meta.get("seconds", float("nan"))}


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def _edge(series: list, first: bool, k: int = 5) -> float:
    vals = [v for _, v in series]
    part = vals[:k] if first else vals[-k:]
    return sum(part) / len(part) if part else float("nan")


def summarize(res: dict) -> dict:
    """Per algorithm: final accuracy mean/std, reward and entropy first/last, seconds per run."""
    out = {}
    for algo, runs in res["runs"].items():
        finals = [r["series"]["eval/accuracy"][-1][1] for r in runs]
        m, s = mean_std(finals)
        out[algo] = {
            "final_acc": finals, "final_mean": m, "final_std": s, "seeds": len(runs),
            "reward_first": mean_std([_edge(r["series"]["rollout/reward"], True) for r in runs])[0],
            "reward_last": mean_std([_edge(r["series"]["rollout/reward"], False) for r in runs])[0],
            "entropy_first": mean_std([_edge(r["series"]["rollout/entropy"], True, 1) for r in runs])[0],
            "entropy_last": mean_std([_edge(r["series"]["rollout/entropy"], False, 1) for r in runs])[0],
            "seconds": mean_std([r["seconds"] for r in runs])[0]}
    return out


def separated_pairs(summary: dict) -> list[str]:
    """Pairs whose final-accuracy means differ by more than 2 standard errors of the difference."""
    names, out = list(summary), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = summary[a], summary[b]
            se = math.sqrt(sa["final_std"] ** 2 / sa["seeds"] + sb["final_std"] ** 2 / sb["seeds"])
            diff = sa["final_mean"] - sb["final_mean"]
            if abs(diff) > 2 * se and se > 0:
                out.append(f"{a if diff > 0 else b} > {b if diff > 0 else a} ({abs(diff):.3f} > 2 x {se:.3f})")
    return out


def format_table(res: dict, summary: dict) -> str:
    start = res["base"]["series"]["eval/accuracy"]
    lines = [f"held-out problems: {res['n_eval']}; start accuracy (step 0, every run): "
             f"{start[0][1]:.3f}" if start else "start accuracy: n/a", "",
             "| algorithm | seeds | final held-out acc (mean ± std) | rollout reward first 5 → last 5 | "
             "entropy first → last | s / run |", "|---|---|---|---|---|---|"]
    for algo, s in summary.items():
        lines.append(f"| {algo} | {s['seeds']} | {s['final_mean']:.3f} ± {s['final_std']:.3f} | "
                     f"{s['reward_first']:.3f} → {s['reward_last']:.3f} | "
                     f"{s['entropy_first']:.3f} → {s['entropy_last']:.3f} | {s['seconds']:.0f} |")
    pairs = separated_pairs(summary)
    if min(s["seeds"] for s in summary.values()) < 2:
        verdict = "n/a (one seed: no spread to compare against)"
    else:
        verdict = "; ".join(pairs) if pairs else "none -- the tiny task does not separate the algorithms"
    lines += ["", "separated (> 2 standard errors): " + verdict]
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("eval/accuracy", "rollout/reward", "rollout/entropy")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for ax, key in zip(axes, keys):
        for algo, runs in res["runs"].items():
            steps = sorted({s for r in runs for s, _ in r["series"][key]})
            ys = [sum(v for r in runs for s2, v in r["series"][key] if s2 == s) /
                  max(1, sum(1 for r in runs for s2, _ in r["series"][key] if s2 == s)) for s in steps]
            ax.plot(steps, ys, marker="." if len(steps) < 30 else None, label=algo)
        ax.set_title(f"{key} (mean over seeds)")
        ax.set_xlabel("rollout step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("outputs", "compare_algorithms"))
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated subset of " + ", ".join(ALGOS))
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (>= 3 for the table in RESULTS.md)")
    p.add_argument("--reduced", action="store_true", help="CI size: " + " ".join(REDUCED))
    p.add_argument("--set", action="append", default=[], help="extra recipe key for every run (repeatable)")
    args = p.parse_args(argv)
    args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in args.algos if a not in ALGOS]
    if bad:
        p.error(f"--algos: unknown {', '.join(bad)}; allowed: {', '.join(ALGOS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    sets = (REDUCED if args.reduced else []) + args.set
    res = run_all(args, sets, log=lambda m: print(m, file=sys.stderr, flush=True))
    summary = summarize(res)
    table = format_table(res, summary)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"summary": summary, "sets": sets, "seeds": args.seeds, "n_eval": res["n_eval"]}, f, indent=1)
    plot(res, os.path.join(args.out, "curves.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
