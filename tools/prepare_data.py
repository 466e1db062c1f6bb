"""Convert DAPO-Math-17k and MATH-style files into the trainer's prompt jsonl.

Output: one row per unique prompt,
``{"prompt": [{"role": "user", "content": ...}], "answer": str, "data_source": str, "uid": str}``,
which ``megatron_nft.data.prompts.load_prompt_dataset`` reads (the system prompt is added at
load time, from the recipe). DAPO rows keep their prompt template (the chat list from the hub
layout, or ``source_prompt`` in the mirror layout); the hub file repeats every prompt ~100
times, so rows are deduplicated by prompt text (first occurrence kept). Dropped rows are
counted by reason: ``duplicate``, ``missing_answer``, ``empty_prompt``.

    nft-prepare-data --input dapo-math-17k.parquet --output data/dapo_17k.jsonl
    nft-prepare-data --input dapo-math-17k.parquet --output data/dapo-math-17k-boxed.jsonl --format reference

``--format reference`` writes the NFT reference's boxed-prompt variant (``megatron_nft/data/
reference.py``): the bare problem plus one ``\\boxed{}`` instruction as the user message (DAPO's
"Answer: $Answer" instruction removed), ``data_source: math_dapo_boxed``; use it with
``data.system_prompt: ""`` and ``rollout.reward: strict_box`` (the cluster recipes do).
    python -m tools.prepare_data --input math500.jsonl --output data/math500.jsonl --format math
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from typing import Optional

from megatron_nft.data.prompts import (
    TEXT_KEYS,
    describe_columns,
    extract_answer,
    extract_prompt,
    get_path,
    is_chat,
    iter_rows,
    UID_KEYS,
)


FORMATS = ("auto", "dapo", "math", "reference")


def detect_format(row: dict) -> str:
    """``"dapo"`` (chat-list prompt, ``source_prompt`` or ``reward_model``) or ``"math"``."""
    if is_chat(row.get("prompt")) or is_chat(row.get("source_prompt")) or isinstance(row.get("reward_model"), dict):
        return "dapo"
    if any(isinstance(row.get(k), str) for k in TEXT_KEYS):
        return "math"
    raise ValueError(
        "unknown input layout: expected a DAPO row (prompt chat list / source_prompt / reward_model) "
        f"or a MATH-style row ({' / '.join(TEXT_KEYS)} string); columns found: {describe_columns(row)}"
    )


def convert_row(row: dict, fmt: str, prompt_key: str, answer_key: str) -> tuple[Optional[list], Optional[str]]:
    """``(chat_list, answer)`` for one row; either is None when missing/empty."""
    prompt = extract_prompt(row, prompt_key, prefer_chat=(fmt in ("dapo", "reference")))
    if fmt == "reference" and prompt is not None:
        prompt = _reference_prompt(prompt)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}] if prompt.strip() else None
    elif is_chat(prompt):
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        if not "".join(m["content"] for m in prompt).strip():
            prompt = None
    elif prompt is not None:
        raise ValueError(f"prompt is neither a string nor a chat list; columns found: {describe_columns(row)}")
    return prompt, extract_answer(row, answer_key)


def _reference_prompt(prompt) -> Optional[list]:
    """The reference's boxed variant of a DAPO prompt: the user turn's bare problem + one boxed
    instruction; system turns dropped (the instruction lives in the user message)."""
    from megatron_nft.data.reference import bare_problem, boxed_user_prompt

    if is_chat(prompt):
        users = [str(m["content"]) for m in prompt if m["role"] == "user"]
        prompt = users[-1] if users else ""
    if not isinstance(prompt, str):
        return prompt
    return [{"role": "user", "content": boxed_user_prompt(prompt)}] if bare_problem(prompt) else None


def prepare(
    input_path: str,
    output_path: str,
    fmt: str = "auto",
    *,
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    data_source: Optional[str] = None,
    progress_every: int = 100_000,
    log=None,
) -> dict:
    """Convert ``input_path`` to ``output_path`` (written atomically); returns the counts.

    Returns ``{"read", "kept", "dropped": {reason: n}, "conflicting_answers", "format"}``;
    ``conflicting_answers`` counts duplicates whose answer differs from the kept row's.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    default_source = data_source or os.path.splitext(os.path.basename(input_path))[0]
    if fmt == "reference":
        from megatron_nft.data.reference import REFERENCE_DATA_SOURCE

        data_source = data_source or REFERENCE_DATA_SOURCE
    seen: dict[str, str] = {}  # prompt text -> answer of the kept row
    dropped: Counter = Counter()
    read = kept = conflicts = 0
    t0 = time.time()
    tmp = output_path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for row in iter_rows(input_path):
                if fmt == "auto":
                    fmt = detect_format(row)
                    log(f"prepare_data: detected format {fmt!r} (columns: {describe_columns(row)})")
                read += 1
                if progress_every and read % progress_every == 0:
                    rate = read / max(time.time() - t0, 1e-9)
                    log(f"prepare_data: {read:,} rows read, {kept:,} kept ({rate:,.0f} rows/s)")
                prompt, answer = convert_row(row, fmt, prompt_key, answer_key)
                if prompt is None:
                    dropped["empty_prompt"] += 1
                    continue
                key = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
                if key in seen:
                    dropped["duplicate"] += 1
                    conflicts += answer is not None and answer != seen[key]
                    continue
                if answer is None:
                    dropped["missing_answer"] += 1
                    continue
                seen[key] = answer
                uid = next((str(v) for v in (get_path(row, k) for k in UID_KEYS) if v not in (None, "")), None)
                rec = {
                    "prompt": prompt,
                    "answer": answer,
                    "data_source": data_source if fmt == "reference" else str(row.get("data_source") or default_source),
                    "uid": uid if uid is not None else f"{default_source}-{kept}",
                }
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                kept += 1
        if read == 0:
            raise ValueError(f"{input_path}: no rows")
        os.replace(tmp, output_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    stats = {"read": read, "kept": kept, "dropped": dict(dropped), "conflicting_answers": conflicts, "format": fmt}
    drops = ", ".join(f"{k}={v:,}" for k, v in sorted(dropped.items())) or "none"
    log(f"prepare_data: {input_path} -> {output_path}: read {read:,}, kept {kept:,}, dropped {sum(dropped.values()):,} ({drops})")
    if conflicts:
        log(f"prepare_data: warning: {conflicts:,} duplicate rows had a different answer than the kept row")
    return stats


def main(argv=None) -> int:
    """Console entry point ``nft-prepare-data``."""
    p = argparse.ArgumentParser(prog="nft-prepare-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="input .jsonl / .json / .parquet")
    p.add_argument("--output", required=True, help="output .jsonl (trainer prompt format)")
    p.add_argument("--format", default="auto", choices=list(FORMATS),
                   help="input layout (default: detect); reference = DAPO rows rewritten to the NFT reference's "
                        "boxed prompt")
    p.add_argument("--prompt-key", default="prompt", help="prompt column (fallbacks: problem, question)")
    p.add_argument("--answer-key", default="answer", help="answer column (fallbacks: reward_model.ground_truth, solution's \\boxed{})")
    p.add_argument("--data-source", default=None, help="data_source for rows without one (default: input file stem)")
    p.add_argument("--progress-every", type=int, default=100_000, help="log progress every N rows (0 = off)")
    args = p.parse_args(argv)
    try:
        stats = prepare(
            args.input,
            args.output,
            args.format,
            prompt_key=args.prompt_key,
            answer_key=args.answer_key,
            data_source=args.data_source,
            progress_every=args.progress_every,
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"nft-prepare-data: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
