"""Prompt datasets for training and evaluation.

:func:`load_prompt_dataset` turns a data source into tokenized :class:`PromptItem` s:

* ``"synthetic"`` - the arithmetic task of :mod:`megatron_nft.data.synthetic`;
* ``.jsonl`` / ``.json`` / ``.parquet`` files in any of these row layouts:

  (a) DAPO-Math-17k hub layout: ``prompt`` is a chat list ``[{"role": "user", "content": ...}]``,
      the answer is ``reward_model.ground_truth``;
  (b) the mirror layout of ``shared/data/train/dapo_math_17k_sample.jsonl``: ``prompt`` is the
      bare problem and ``source_prompt`` the original chat list (used, so (a) and (b) give the
      same items);
  (c) MATH-style rows: ``prompt`` / ``problem`` / ``question`` string with ``answer`` (or
      ``final_answer``, ``label``, ``reward_model.ground_truth``) or only a ``solution``, whose
      last ``\\boxed{}`` is taken as the answer.

The trainer's own prompt files (``tools/prepare_data.py``) are layout (a) with a flat ``answer``.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Iterator, Optional

from megatron_nft.stability import InputError, json_lines
from megatron_nft.types import PromptItem

logger = logging.getLogger(__name__)

TEXT_KEYS = ("prompt", "problem", "question")
ANSWER_KEYS = ("answer", "final_answer", "label", "reward_model.ground_truth", "ground_truth")
UID_KEYS = ("uid", "extra_info.index", "unique_id", "id", "idx", "index")


class PromptDataset(list):
    """A ``list[PromptItem]`` that also records how many rows were read and why some were dropped."""

    def __init__(self, items=(), *, source: str = "", rows_read: int = 0, dropped: Optional[Counter] = None):
        super().__init__(items)
        self.source = source
        self.rows_read = rows_read
        self.dropped: Counter = dropped if dropped is not None else Counter()

    def summary(self) -> str:
        """``"<source>: kept K of N rows (dropped: reason=count, ...)"``."""
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{self.source}: kept {len(self)} of {self.rows_read} rows (dropped: {drops})"


# --------------------------------------------------------------------------- helpers


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched;
    None if there is none or the last one never closes (see ``megatron_nft.latex``)."""
    from megatron_nft.latex import last_boxed as scan_last_boxed

    return scan_last_boxed(text)


def get_path(row: dict, key: str) -> Any:
    """``row["a"]["b"]`` for ``key="a.b"`` (a literal ``"a.b"`` column wins); None if absent."""
    if key in row:
        return row[key]
    cur: Any = row
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def is_chat(value: Any) -> bool:
    """True for a non-empty list of ``{"role", "content"}`` dicts."""
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def answer_to_str(value: Any) -> Optional[str]:
    """Normalise an answer cell: strings stripped, ``27.0`` -> ``"27"``, one-item lists unwrapped."""
    if isinstance(value, (list, tuple)):
        value = ", ".join(a for a in (answer_to_str(v) for v in value) if a) if value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    return s or None


def iter_rows(path: str, *, batch_size: int = 8192) -> Iterator[dict]:
    """Rows of a ``.jsonl`` / ``.json`` (array) / ``.parquet`` file as dicts, streaming."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file not found: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    elif ext == ".jsonl":
        for _, row in json_lines(path):
            yield row
    elif ext == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                rows = json.load(f)
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}): write the file as UTF-8") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON array of row objects")
        yield from rows
    else:
        raise ValueError(f"unsupported prompt file type {ext!r} ({path}); use .jsonl, .json or .parquet")


def extract_prompt(row: dict, prompt_key: str = "prompt", prefer_chat: bool = True) -> Any:
    """The row's prompt: a chat list or a string; None if the row has none.

    With ``prefer_chat`` and a chat-list ``source_prompt`` column (mirror layout), that wins
    over a bare-string ``prompt``. Falls back to ``problem`` / ``question`` when ``prompt_key``
    is absent.
    """
    value = get_path(row, prompt_key)
    if prefer_chat and not is_chat(value) and is_chat(row.get("source_prompt")):
        return row["source_prompt"]
    if value is None:
        for k in TEXT_KEYS:
            if k in row and row[k] is not None:
                return row[k]
    return value


def extract_answer(row: dict, answer_key: str = "answer") -> Optional[str]:
    """The row's gold answer (see module docstring for the fallbacks), or None."""
    for k in (answer_key,) + ANSWER_KEYS:
        a = answer_to_str(get_path(row, k))
        if a is not None:
            return a
    sol = row.get("solution")
    if isinstance(sol, (list, tuple)):
        sol = sol[-1] if sol else None
    if isinstance(sol, str):
        return last_boxed(sol)
    return None


def describe_columns(row: dict) -> str:
    """``"a, b (c, d), e"`` - the row's keys with one level of nested keys."""
    parts = []
    for k, v in row.items():
        parts.append(f"{k} ({', '.join(map(str, v))})" if isinstance(v, dict) else str(k))
    return ", ".join(parts)


def render_prompt(prompt: Any, tokenizer, system_prompt: Optional[str]) -> str:
    """Prompt text as the model sees it.

    A chat list, or any prompt when the tokenizer has a chat template, goes through
    ``apply_chat_template(add_generation_prompt=True)``; ``system_prompt`` is prepended as a
    system message when the data has none. Without a template, a chat list becomes its
    messages' contents joined by blank lines and a string is used as is.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, str):
        if not has_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        if not has_template:
            return "\n\n".join(m["content"] for m in messages)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------- loader


def load_prompt_dataset(
    path_or_name: str,
    tokenizer,
    *,
    system_prompt: Optional[str] = None,
    max_prompt_tokens: Optional[int] = None,
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    limit: Optional[int] = None,
    size: Optional[int] = None,
    seed: int = 0,
    split: str = "train",
    synthetic_kwargs: Optional[dict] = None,
    prefer_chat: bool = True,
    dedupe: bool = True,
) -> PromptDataset:
    """Load and tokenize prompts.

    Args:
        path_or_name: ``"synthetic"`` or a ``.jsonl`` / ``.json`` / ``.parquet`` file.
        tokenizer: a Hugging Face tokenizer (its chat template is used when it has one).
        system_prompt: system message added when the data has none (None/"" = no system).
        max_prompt_tokens: prompts with more tokens are dropped (reason ``too_long``).
        prompt_key / answer_key: column names (dotted paths allowed, e.g. ``reward_model.ground_truth``).
        limit: stop after this many kept items.
        size / seed / split: synthetic only - number of problems (default 4096 for train, 128
            for eval), generator seed, and ``"train"`` or ``"eval"`` split.
        synthetic_kwargs: extra arguments for ``synthetic.make_problems`` (``ops``, ``carry_fraction``).
        prefer_chat: use a ``source_prompt`` chat list over a bare-string ``prompt`` (mirror layout).
        dedupe: drop rows whose rendered prompt text was already seen (reason ``duplicate``).

    Returns a :class:`PromptDataset` (a list of :class:`PromptItem`); ``.dropped`` counts the
    reasons (``too_long``, ``duplicate``, ``missing_answer``, ``empty_prompt``) and
    ``.summary()`` is logged.
    """
    if path_or_name == "synthetic":
        from megatron_nft.data import synthetic

        n = size if size is not None else (4096 if split == "train" else 128)
        probs = synthetic.make_problems(n, seed, split, **(synthetic_kwargs or {}))
        rows: Any = (
            {"prompt": p["prompt"], "answer": p["answer"], "data_source": "synthetic", "uid": f"synthetic-{split}-{i}"}
            for i, p in enumerate(probs)
        )
        default_source, prompt_key, answer_key = "synthetic", "prompt", "answer"
    else:
        rows = iter_rows(path_or_name)
        default_source = os.path.splitext(os.path.basename(path_or_name))[0]

    out = PromptDataset(source=path_or_name)
    seen: set[str] = set()
    for idx, row in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        out.rows_read += 1
        prompt = extract_prompt(row, prompt_key, prefer_chat)
        if prompt is None:
            raise ValueError(
                f"{path_or_name}: row {idx} has no prompt column {prompt_key!r} "
                f"(nor {', '.join(TEXT_KEYS)}); columns found: {describe_columns(row)}"
            )
        if not (isinstance(prompt, str) or is_chat(prompt)):
            raise ValueError(
                f"{path_or_name}: row {idx}: unknown prompt layout in {prompt_key!r} "
                f"({type(prompt).__name__}); expected a string or a chat list of "
                f"{{'role', 'content'}}; columns found: {describe_columns(row)}"
            )
        if (prompt.strip() if isinstance(prompt, str) else "".join(str(m["content"]) for m in prompt).strip()) == "":
            out.dropped["empty_prompt"] += 1
            continue
        answer = extract_answer(row, answer_key)
        if answer is None:
            out.dropped["missing_answer"] += 1
            continue
        text = render_prompt(prompt, tokenizer, system_prompt)
        if dedupe:
            if text in seen:
                out.dropped["duplicate"] += 1
                continue
            seen.add(text)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            out.dropped["too_long"] += 1
            continue
        uid = next((str(v) for v in (get_path(row, k) for k in UID_KEYS) if v not in (None, "")), None)
        out.append(
            PromptItem(
                uid=uid if uid is not None else f"{default_source}-{idx}",
                prompt_text=text,
                prompt_ids=ids,
                answer=answer,
                data_source=str(row.get("data_source") or default_source),
            )
        )
    (logger.warning if out.dropped else logger.info)(out.summary())
    return out
