"""The NFT reference's boxed-prompt variant of DAPO-Math-17k (``nft-prepare-data --format reference``).

What the reference trains on (NVlabs/NFT ``download_data.sh`` / ``train_7B.sh``): not the hub's
DAPO-Math-17k but ``dapo-math-17k_10boxed.parquet`` from its own dataset repository, whose rows
have the ``math_dapo_boxed`` data source that its reward dispatch (``verifier.py``) grades with
verl's ``math_dapo`` strict box. The hub's DAPO prompt asks for an ``Answer: $Answer`` last line;
a strict-box reward needs a ``\\boxed{}`` answer, so the boxed variant replaces that instruction.
The parquet itself is not readable from here; what this module produces, per row:

* the bare problem: DAPO's instruction prefix ("Solve the following math problem step by step.
  The last line of your response should be of the form Answer: $Answer ...") and its reminder
  suffix ("Remember to put your answer on its own line after "Answer:".") removed;
* followed by ONE boxed instruction, :data:`BOXED_INSTRUCTION` (the Qwen2.5-Math wording the
  paper's evaluation uses), in the user message; no system prompt is needed (recipes set
  ``data.system_prompt: ""``);
* ``data_source: math_dapo_boxed`` and the integer answer string as gold (``reward_model.ground_truth``).
"""
from __future__ import annotations

import re

__all__ = ["BOXED_INSTRUCTION", "REFERENCE_DATA_SOURCE", "bare_problem", "boxed_user_prompt",
           "answer_format_instructions"]

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
REFERENCE_DATA_SOURCE = "math_dapo_boxed"

_DAPO_PREFIX = re.compile(
    r"^\s*Solve the following math problem step by step\.\s*The last line of your response should be of the "
    r"form Answer: \$Answer \(without quotes\) where \$Answer is the answer to the problem\.\s*", re.S)
_DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$", re.S)
# Phrases that tell the model how to format its final answer (one per prompt is allowed).
_FORMAT_INSTRUCTIONS = (
    re.compile(r"of the form Answer:", re.I),
    re.compile(r"after \"Answer:\"", re.I),
    re.compile(r"within \\boxed\{\}", re.I),
)


def bare_problem(text: str) -> str:
    """The problem of a DAPO-Math-17k user prompt, its answer-format prefix/suffix removed
    (text without them is returned stripped, unchanged)."""
    return _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text)).strip()


def boxed_user_prompt(problem: str) -> str:
    """``problem`` + blank line + :data:`BOXED_INSTRUCTION` (the reference's boxed format)."""
    return f"{bare_problem(problem)}\n\n{BOXED_INSTRUCTION}"


def answer_format_instructions(text: str) -> int:
    """How many answer-format instructions ``text`` carries ("Answer: $Answer" line, its
    reminder, "within \\boxed{}")."""
    return sum(len(rx.findall(text)) for rx in _FORMAT_INSTRUCTIONS)
