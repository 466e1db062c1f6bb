"""Math answer verification: extraction, equivalence and a process pool with hard timeouts.

Public API::

    from megatron_nft.rewards import MathVerifier
    with MathVerifier(timeout_s=5.0, mode="math") as v:          # or mode="strict_box"
        rewards = v.verify_batch(responses, golds)               # list[bool]

Modules (parent side, pure Python): ``extract`` (final answer / gold), ``normalize`` (string
rules, exact numeric literals), ``equivalence`` (structure + our comparison rules), ``guard``
(static size guard), ``verifier`` (single answers, strict-box mode, ``MathVerifier``: fast path,
de-duplication, worker processes with hard timeouts). Worker side: ``symbolic`` (math-verify as
the first judge, then the sympy backend of our rules), ``fastparse`` (LaTeX subset parser).
LaTeX scanning (braces, boxes, top-level splits, ``\\pm``) is ``megatron_nft.latex``.
Importing this package does not import sympy (the parent's fast path uses mpmath values only).
"""

from .equivalence import answers_equal
from .extract import extract_answer, extract_gold, last_boxed
from .verifier import MODES, MathVerifier, VerifierStats, strict_box_match, verify_answer

__all__ = [
    "MathVerifier",
    "VerifierStats",
    "MODES",
    "answers_equal",
    "extract_answer",
    "extract_gold",
    "last_boxed",
    "strict_box_match",
    "verify_answer",
]
