"""In-training validation on the evaluation registry's benchmarks (``data.eval: DIR``).

``data.eval`` names where the held-out prompts come from:

* ``synthetic`` or a prompt file: one prompt set, one number (``eval/accuracy``), graded by the
  training verifier (the tiny demo);
* a **directory of benchmark files** (e.g. ``data/eval`` holding ``aime24.jsonl`` ...): every
  benchmark of the registry (``megatron_nft/eval/benchmarks.py``) named by ``eval.benchmarks``
  (``all`` = every registered benchmark whose file is in the directory) is loaded with the
  registry's loader and graded with the registry's grader (``eval.grader: ours``: last-box exact
  match for AIME/AMC, the math verifier with OlympiadBench's multi-answer rules elsewhere; or
  ``reference``: the NFT reference's own grading, ``eval/reference.py``), ``eval.n`` samples per
  problem, the first ``eval.limit`` problems of each (null = all), every ``eval.interval``
  steps. Metrics: ``eval/<benchmark>/accuracy`` (avg@n) per benchmark and ``eval/accuracy`` =
  their unweighted mean (Table 1's "Avg" column).

Prompts: the benchmark question as the user message; with ``data.system_prompt`` set it is the
system message (the paper's evaluation protocol), with ``data.system_prompt: ""`` the reference's
boxed instruction is appended to the question instead (:func:`megatron_nft.data.reference.
boxed_user_prompt`, the same format as ``nft-prepare-data --format reference`` training data), so
a prompt always carries exactly one answer-format instruction.
"""
from __future__ import annotations

import os
from typing import Optional

from megatron_nft.config import ConfigError

__all__ = ["eval_benchmarks", "BenchmarkEval"]


def eval_benchmarks(data_eval: Optional[str], spec: str = "all") -> list[tuple[str, str]]:
    """``[(benchmark, file)]`` when ``data.eval`` is a directory of benchmark files, ``[]`` when it
    is ``synthetic`` / a file / null. Raises :class:`ConfigError` naming the key to fix."""
    if data_eval is None or not os.path.isdir(data_eval):
        return []
    from megatron_nft.eval.benchmarks import BENCHMARKS, parse_benchmarks

    try:
        names = parse_benchmarks(spec)
    except ValueError as e:
        raise ConfigError(f"eval.benchmarks: {e}") from None
    found = [(n, BENCHMARKS[n].path(data_eval)) for n in names if os.path.isfile(BENCHMARKS[n].path(data_eval))]
    missing = [BENCHMARKS[n].file for n in names if not os.path.isfile(BENCHMARKS[n].path(data_eval))]
    if spec != "all" and missing:
        raise ConfigError(f"data.eval: {data_eval!r} lacks {', '.join(missing)} named by eval.benchmarks={spec!r}; "
                          "add the files or drop those names")
    if not found:
        raise ConfigError(f"data.eval: directory {data_eval!r} holds none of the benchmark files "
                          f"({', '.join(b.file for b in BENCHMARKS.values())}); point it at the benchmark "
                          "directory (e.g. ../shared/data/eval) or use a prompt file / synthetic / null")
    return found


def check_data_paths(cfg) -> list[str]:
    """Errors (key + fix) for ``data.train`` / ``data.eval`` paths that do not exist (dry run)."""
    errors = []
    d = cfg.data
    if cfg.rollout.source is None and d.train != "synthetic" and not os.path.isfile(d.train):
        errors.append(f"data.train: {d.train!r} is not a file; build it with nft-prepare-data --format reference "
                      "(README) or set data.train to an existing .jsonl/.parquet")
    if d.eval not in (None, "synthetic") and not os.path.exists(d.eval):
        errors.append(f"data.eval: {d.eval!r} does not exist; point it at the benchmark directory, a prompt file, "
                      "synthetic or null")
    else:
        try:
            eval_benchmarks(d.eval, cfg.eval.benchmarks)
        except ConfigError as e:
            errors.append(str(e))
    return errors


class BenchmarkEval:
    """The validation benchmarks of a run, tokenized once; :meth:`evaluate` generates on this
    rank's engine slice, grades there with the registry's grader and gathers the flags."""

    def __init__(self, cfg, tokenizer, benchmarks: list[tuple[str, str]]):
        from megatron_nft.data.prompts import render_prompt
        from megatron_nft.data.reference import boxed_user_prompt
        from megatron_nft.eval.benchmarks import load_problems

        system = cfg.data.system_prompt or None
        self.problems, self.prompt_ids = [], []
        for name, path in benchmarks:
            for p in load_problems(name, os.path.dirname(path), limit=cfg.eval.limit):
                prompt = p.question if system else boxed_user_prompt(p.question)
                text = render_prompt(prompt, tokenizer, system)
                self.problems.append(p)
                self.prompt_ids.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        self.names = [name for name, _ in benchmarks]
        self.grader = cfg.eval.grader

    def __len__(self) -> int:
        return len(self.problems)

    def evaluate(self, engine, verifier, sampling, slot) -> dict:
        from megatron_nft.eval.benchmarks import grade
        from megatron_nft.eval.reference import grade_reference
        from megatron_nft.rollout.collect import _all_gather

        mine = list(range(slot.index, len(self.problems), slot.count))
        local = {}
        if mine:
            outs = engine.generate([self.prompt_ids[i] for i in mine], sampling)
            probs, texts = [self.problems[i] for i in mine], [[c.text for c in cs] for cs in outs]
            flags = grade_reference(probs, texts)[0] if self.grader == "reference" else grade(verifier, probs, texts)
            local = dict(zip(mine, flags))
        merged: dict = {}
        for part in _all_gather(local if slot.leader else {}):
            merged.update(part)
        return self.summarize([merged[i] for i in range(len(self.problems))])

    def summarize(self, flags: list[list[bool]]) -> dict:
        """``eval/<benchmark>/accuracy`` (mean over problems and samples) and their mean."""
        per: dict = {}
        for p, f in zip(self.problems, flags):
            per.setdefault(p.benchmark, []).extend(bool(x) for x in f)
        out = {f"eval/{n}/accuracy": sum(v) / max(len(v), 1) for n, v in per.items()}
        out["eval/accuracy"] = sum(out.values()) / max(len(out), 1)
        return out


def load_eval_set(cfg, tokenizer, **common):
    """The run's held-out set: a :class:`BenchmarkEval` for a benchmark directory, else the
    prompt items of ``data.eval`` (``synthetic`` / a file; ``[]`` when null). ``common``: the
    prompt loader's arguments shared with the training set."""
    d = cfg.data
    if d.eval is None:
        return []
    benchmarks = eval_benchmarks(d.eval, cfg.eval.benchmarks)
    if benchmarks:
        return BenchmarkEval(cfg, tokenizer, benchmarks)
    from megatron_nft.data.prompts import load_prompt_dataset

    return load_prompt_dataset(d.eval, tokenizer, split="eval", seed=cfg.seed + 1, size=d.eval_size,
                               limit=d.eval_size, **common)
