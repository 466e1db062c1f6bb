"""Non-finite and exploding updates, seen from the loop (the check itself is in
``megatron/optim_step.guarded_step``: a non-finite loss or grad norm is never applied).

:class:`UpdateGuard` counts consecutive skipped updates and stops the run after
``train.max_nonfinite_steps`` of them; it warns when the grad norm jumps past
``train.spike_factor`` x its recent median.
"""
from __future__ import annotations

import json

import math
import statistics
from collections import deque


class UserError(RuntimeError):
    """A problem the user fixes (bad input, bad settings, a full disk): ``nft-train`` prints
    its one-line message once (rank 0) and exits 2, without a traceback."""


class NonFiniteError(UserError):
    """Too many consecutive non-finite updates: the weights would only get worse."""


_CAUSES = ("likely causes: a too-high train.lr (try 10x lower), non-finite or out-of-range rewards "
           "or log-probs in the input, or train.bf16 overflow; the newest checkpoint holds the last good weights")


class UpdateGuard:
    """Per-run bookkeeping of skipped (non-finite) updates and spikes; same decisions on every rank
    (the loss and grad norm it sees are already reduced over all ranks)."""

    def __init__(self, max_consecutive: int = 3, spike_factor: float = 10.0, window: int = 10, log=print):
        self.max_consecutive, self.spike_factor, self.log = max_consecutive, spike_factor, log
        self.consecutive = 0
        # spikes are judged on the grad norm only: the NFT / PPO-clip losses sit near 0 at
        # on-policy ratios and change sign, so |loss| against its median flags every healthy step
        self.history = {"train/grad_norm": deque(maxlen=window)}

    @property
    def weights_suspect(self) -> bool:
        """True while the newest update was skipped: the weights produced a non-finite loss or
        gradient, so they are not written as a checkpoint or an HF export."""
        return self.consecutive > 0

    def stop_if_exhausted(self, step: int) -> None:
        """After the step's metrics are logged: raise once ``max_consecutive`` updates in a row were skipped."""
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(f"step {step}: {self.consecutive} consecutive updates had a non-finite loss "
                                 f"or grad norm and were skipped; stopping. {_CAUSES}")

    def observe(self, step: int, part: dict) -> None:
        """One optimizer update's metrics (``train/loss``, ``train/grad_norm``, ``train/nonfinite``)."""
        if part.get("train/nonfinite"):
            self.consecutive += 1
            self.log(f"[nft] WARNING step {step}: non-finite loss {part.get('train/loss')} / grad norm "
                     f"{part.get('train/grad_norm')}; update skipped ({self.consecutive} in a row, "
                     f"the run stops at train.max_nonfinite_steps={self.max_consecutive})")
            return
        self.consecutive = 0
        for key, values in self.history.items():
            v = abs(float(part.get(key, 0.0)))
            if self.spike_factor and len(values) >= 3:
                med = statistics.median(values)
                if med > 0 and v > self.spike_factor * med:
                    self.log(f"[nft] WARNING step {step}: {key} {v:.4g} is {v / med:.1f}x its recent median "
                             f"{med:.4g} (train.spike_factor={self.spike_factor}); check train.lr and the rewards")
            if math.isfinite(v):
                values.append(v)


class InputError(UserError, ValueError):
    """A bad input file or row: the message names the file, line and key, and the fix."""


def utf8_lines(path: str):
    """``(line number, text)`` of a UTF-8 text file; a non-UTF-8 line is an :class:`InputError` naming it."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start}): "
                                 "write the file as UTF-8 JSON lines") from None


def json_lines(path: str):
    """``(line number, JSON object)`` of a JSON-lines file (blank lines skipped); a non-UTF-8
    line, broken JSON or a non-object is an :class:`InputError` naming ``file:line``."""
    for n, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: invalid JSON ({e.msg}, column {e.colno}): one JSON object per line") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row
