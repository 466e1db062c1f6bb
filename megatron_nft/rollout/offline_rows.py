"""Reading an offline rollout file (``rollout.source: answers.jsonl``) with every bad row named
by file, line and key, and the fix, before the model is built.

One JSON object per line: ``group`` (any id), ``prompt_ids`` / ``response_ids`` (token ids of
the model's tokenizer, ``0 <= id < vocab_size``), ``reward`` (the verifier's outcome: ``0`` or
``1``; ``true``/``false`` and ``0.0``/``1.0`` are accepted too) and optionally
``rollout_logprobs`` (one finite value <= 0 per response token). A prompt plus its response
must fit the model's ``max_position_embeddings``. A file whose groups are all-right or
all-wrong trains nothing and is refused.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from megatron_nft.stability import InputError, json_lines

REQUIRED = ("group", "prompt_ids", "response_ids", "reward")


def _token_ids(where: str, key: str, ids, vocab: Optional[int]) -> None:
    if not isinstance(ids, list) or not ids:
        raise InputError(f"{where}: {key} must be a non-empty list of token ids, got {str(ids)[:40]!r}")
    for i, t in enumerate(ids):
        if not isinstance(t, int) or isinstance(t, bool) or t < 0 or (vocab is not None and t >= vocab):
            bound = f"[0, {vocab})" if vocab is not None else ">= 0"
            raise InputError(f"{where}: {key}[{i}] = {t!r} is not a token id {bound} of the model "
                             "(config.json vocab_size): tokenize with the model's own tokenizer")


def _reward(where: str, r) -> float:
    if isinstance(r, bool) or (isinstance(r, (int, float)) and r in (0, 1)):
        return float(r)
    raise InputError(f"{where}: reward = {r!r}; accepted rewards are the verifier's outcomes 0 and 1 "
                     "(true/false, 0.0/1.0 too): grade the answers to 0/1 (the algorithm shapes them)")


def _logprobs(where: str, lp, n: int) -> None:
    if not isinstance(lp, list) or len(lp) != n:
        got = len(lp) if isinstance(lp, list) else type(lp).__name__
        raise InputError(f"{where}: rollout_logprobs has {got} values for {n} response tokens: one log-prob "
                         "per response_ids entry (or drop the key)")
    for i, v in enumerate(lp):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > 1e-6:
            raise InputError(f"{where}: rollout_logprobs[{i}] = {v!r} is not a log-probability (finite, <= 0)")


def check_row(row, where: str, vocab: Optional[int] = None, max_positions: Optional[int] = None) -> dict:
    """One parsed line -> the row (reward as 0.0/1.0), or :class:`InputError` naming ``where``."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for k in REQUIRED:
        if k not in row:
            raise InputError(f"{where}: missing key {k!r} (need group, prompt_ids, response_ids, reward)")
    _token_ids(where, "prompt_ids", row["prompt_ids"], vocab)
    _token_ids(where, "response_ids", row["response_ids"], vocab)
    row["reward"] = _reward(where, row["reward"])
    if row.get("rollout_logprobs") is not None:
        _logprobs(where, row["rollout_logprobs"], len(row["response_ids"]))
    n = len(row["prompt_ids"]) + len(row["response_ids"])
    if max_positions is not None and n > max_positions:
        raise InputError(f"{where}: prompt + response = {n} tokens, past the model's max_position_embeddings "
                         f"{max_positions}: truncate or drop the row")
    return row


def read_offline_groups(path: str, vocab: Optional[int] = None, max_positions: Optional[int] = None) -> list:
    """-> groups of checked rows (file order of first appearance)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"rollout.source: {path!r} not found")
    groups: dict = {}
    for n, row in json_lines(path):
        row = check_row(row, f"{path}:{n}", vocab, max_positions)
        groups.setdefault(str(row["group"]), []).append(row)
    if not groups:
        raise InputError(f"rollout.source {path}: no rows: nothing to train on (one JSON answer per line)")
    if not any(0 < sum(r["reward"] for r in g) < len(g) for g in groups.values()):
        raise InputError(f"rollout.source {path}: no informative group (every group is all-right or all-wrong, "
                         "or has one answer): nothing trains; add answers with mixed rewards per group")
    return list(groups.values())
