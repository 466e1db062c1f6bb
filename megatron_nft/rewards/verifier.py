"""Math answer verifier with a process pool and a hard, external wall-clock limit per answer.

    with MathVerifier(timeout_s=5.0, num_workers=2, mode="math") as v:
        rewards = v.verify_batch(responses, golds)        # list[bool]
        print(v.stats)                                     # total/correct/timeouts/errors/...

Design
------
* The parent extracts the answers (``extract.py``) and runs the pure-Python fast path
  (``equivalence.answers_equal`` without a backend: normalised string equality, exact
  rational comparison of plain numbers, words, base-b numerals, structure/length checks,
  refutation by 50-digit values at a probe point via ``fastparse.fast_values``)
  and the static size guard (``guard.py``). Most pairs are decided here without IPC.
* Undecided pairs go to worker processes that run the sympy backend (``symbolic.py``).
  Tasks are sent in chunks; a worker answers each task as it finishes, so the parent always
  knows which task a worker is on and when it started.
* Hard limit: the parent tracks a deadline for the task each worker is running. When it is
  exceeded the worker gets SIGKILL (``Process.kill``), the task counts as wrong and as a
  timeout, the rest of its chunk is re-queued, and a replacement worker is started. No
  signals are used inside the workers (math-verify's SIGALRM timeouts cannot interrupt a
  long big-integer operation in C); math-verify is called without its own timeouts.
* Start method: ``spawn`` (default; see ``worker.py`` for the worker side). The workers are fresh interpreters: nothing is inherited
  from a parent that may hold torch/CUDA threads or locks, and no server process lingers
  after ``close()`` (``forkserver`` can be chosen; it restarts faster but keeps a
  forkserver process alive for the life of the program). Workers start lazily, when a batch meets its
  first pair the fast path cannot decide (their imports overlap the rest of the fast path),
  and are reused across calls (imports of sympy/latex2sympy take
  1-2 s once per worker). Workers are started without re-importing the parent's
  ``__main__`` (see ``_main_module_hidden``): they only import this package, never the
  trainer's torch/megatron stack, and scripts without a ``__main__`` guard work too.
* Answers whose exact evaluation would explode (power towers such as
  ``5^{(5^{(5^{(5^5)})}-4)}``, huge factorials) are rejected by the static guard without
  spending the timeout; they count as wrong and in ``stats.timeouts`` (and ``stats.guarded``).

Modes: ``"math"`` (extraction + equivalence) and ``"strict_box"`` (exact match of the
normalised content of the last ``\\boxed{}``; for AIME/AMC). ``verify_batch(..., mode=...)``
overrides the default per call.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait as mp_wait

from .equivalence import MAX_ATOM_LEN, answers_equal
from .extract import extract_answer, extract_gold, last_boxed
from .guard import too_big
from .normalize import key, normalize, strict_normalize

__all__ = ["MathVerifier", "VerifierStats", "verify_answer", "strict_box_match", "prepare", "fast_decide",
           "MODES", "MAX_ANSWER_CHARS", "WorkerHandle", "worker_main"]

_STARTUP_TIMEOUT_S = 120.0
_CHUNK_CHARS = 16_000  # well below the 64 KiB pipe buffer


# --------------------------------------------------------------------------- single answers

MODES = ("math", "strict_box")
MAX_ANSWER_CHARS = 5000


def strict_box_match(response: str, gold) -> bool:
    """Exact match of the last ``\\boxed{}`` content (light normalisation) with the gold."""
    if not isinstance(response, str):
        return False
    b = last_boxed(response, join=False)
    if b is None:
        return False
    pred = strict_normalize(b[1])
    g = strict_normalize(extract_gold(gold))
    return bool(pred) and pred == g


def prepare(response, gold, mode: str) -> tuple[str | None, str]:
    pred = extract_answer(response if isinstance(response, str) else ("" if response is None else str(response)))
    return pred, extract_gold(gold)


def fast_decide(pred: str | None, gold: str, guard: bool) -> tuple[bool | None, str]:
    """Parent-side decision: (result or None, reason)."""
    if pred is None or not gold:
        return False, "empty"
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return pred.strip() == gold.strip(), "fast"  # no real answer is this long
    try:
        p, g = normalize(pred), normalize(gold)
        if p and g and key(p) == key(g):
            return True, "fast"
        if guard and (too_big(p) or too_big(g)):
            return False, "guard"
        if len(p) > 20 * MAX_ATOM_LEN or len(g) > 20 * MAX_ATOM_LEN:
            return False, "fast"
        r = answers_equal(pred, gold, backend=None)
    except RecursionError:
        return None, ""
    return r, "fast"


def verify_answer(response: str, gold, mode: str = "math", guard_huge: bool = True) -> bool:
    """Verify one answer in this process (no timeout protection -- use ``MathVerifier``
    for untrusted model outputs)."""
    if mode == "strict_box":
        return strict_box_match(response, gold)
    if mode != "math":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pred, g = prepare(response, gold, mode)
    r, _ = fast_decide(pred, g, guard_huge)
    if r is not None:
        return r
    from .symbolic import slow_decide

    return slow_decide(pred, g, guard_huge)


# --------------------------------------------------------------------------- worker processes

def worker_main(conn, memory_limit_mb: int | None) -> None:
    """Worker process: import the sympy backend once, then answer chunks of tasks."""
    from megatron_nft.orphans import die_with_parent

    die_with_parent()  # also while busy on a slow pair: never outlive the pool's owner
    if memory_limit_mb:
        try:
            import resource

            limit = int(memory_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except Exception:
            pass
    import logging

    logging.disable(logging.WARNING)
    from . import symbolic  # heavy imports happen here, once
    from .symbolic import slow_decide

    symbolic.warmup()
    try:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                chunk = conn.recv()
            except (EOFError, OSError):
                break
            if chunk is None:
                break
            for tid, pred, gold, guard in chunk:
                try:
                    ok, err = slow_decide(pred, gold, guard), None
                except BaseException as e:  # MemoryError, RecursionError, anything
                    ok, err = False, f"{type(e).__name__}: {str(e)[:200]}"
                conn.send((tid, ok, err))
    except (BrokenPipeError, EOFError, OSError, KeyboardInterrupt):
        pass


@contextlib.contextmanager
def _main_module_hidden():
    """Start a spawn child without re-importing the parent's ``__main__``.

    multiprocessing's spawn normally re-runs the main script/module in every child (as
    ``__mp_main__``). The worker function lives in this importable module, so that is not
    needed; skipping it keeps workers small (no torch/megatron imports from a trainer's main
    module) and makes the pool usable from scripts without an ``if __name__ == "__main__"``
    guard. ``get_preparation_data`` reads ``__main__.__spec__``/``__file__`` synchronously
    inside ``Process.start()``, so hiding them for that call is enough.
    """
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if main is not None and hasattr(main, k)}
    try:
        if main is not None:
            if "__spec__" in saved:
                main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class WorkerHandle:
    """Parent-side handle: process, pipe, readiness and the tasks sent to it, in order."""

    def __init__(self, ctx, memory_limit_mb: int | None):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=worker_main, args=(child_conn, memory_limit_mb), daemon=True, name="math-verifier"
        )
        with _main_module_hidden():
            self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.ready = False
        self.started_at = time.monotonic()
        self.assigned: deque = deque()  # (tid, pred, gold, guard) in execution order
        self.task_start: float | None = None

    def kill(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- the pool

@dataclass
class VerifierStats:
    total: int = 0  # answers verified
    correct: int = 0  # answers judged correct
    timeouts: int = 0  # killed at the wall-clock limit (+ rejected by the size guard)
    errors: int = 0  # worker exceptions or crashes (judged wrong)
    fast_path: int = 0  # decided in the parent without a worker
    cached: int = 0  # answered from the parent's result cache / batch de-duplication
    worker_tasks: int = 0  # comparisons run in worker processes
    guarded: int = 0  # rejected by the static size guard (included in timeouts)
    worker_restarts: int = 0

    # read-only mapping access as well: stats["timeouts"], dict(stats), stats.get("errors")
    def __getitem__(self, name: str) -> int:
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default=None):
        return getattr(self, name, default) if name in self.__dataclass_fields__ else default

    def keys(self):
        return list(self.__dataclass_fields__)

    def items(self):
        return [(k, getattr(self, k)) for k in self.__dataclass_fields__]

    def __iter__(self):
        return iter(self.keys())

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MathVerifier:
    """Batch verifier. See the module docstring for the design.

    Args:
        timeout_s: hard wall-clock limit per answer (enforced by SIGKILL from the parent).
        num_workers: worker processes (default ``min(4, os.cpu_count())``).
        mode: ``"math"`` or ``"strict_box"`` (default for ``verify_batch``).
        start_method: ``"spawn"`` (default) or ``"forkserver"``.
        memory_limit_mb: address-space limit of each worker (None: no limit).
        guard_huge: reject answers with astronomically large exact numbers up front.
        chunk_size: max tasks per message to a worker (default: adaptive).
    """

    def __init__(self, timeout_s: float = 5.0, num_workers: int | None = None, mode: str = "math",
                 start_method: str = "spawn", memory_limit_mb: int | None = 4096,
                 guard_huge: bool = True, chunk_size: int | None = None, cache_size: int = 100_000):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = float(timeout_s)
        self.num_workers = max(1, int(num_workers or min(4, os.cpu_count() or 1)))
        self.mode = mode
        self.start_method = start_method
        self.memory_limit_mb = memory_limit_mb
        self.guard_huge = guard_huge
        self.chunk_size = chunk_size
        self.cache_size = max(0, int(cache_size))
        self._cache: OrderedDict = OrderedDict()  # (pred, gold, guard) -> bool, worker results only
        self.stats = VerifierStats()
        self._ctx = mp.get_context(start_method)
        self._workers: list[WorkerHandle] = []
        self._lock = threading.Lock()
        self._closed = False
        self._startup_failures = 0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop all workers (idempotent)."""
        self._closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            try:
                w.conn.send(None)
            except Exception:
                pass
        deadline = time.monotonic() + 0.5  # idle workers exit at once; busy ones get SIGKILL
        for w in workers:
            try:
                w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
            w.kill()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def warmup(self, timeout: float = _STARTUP_TIMEOUT_S) -> None:
        """Start the workers now and wait until they have imported sympy."""
        with self._lock:
            self._ensure_workers()
            end = time.monotonic() + timeout
            while not all(w.ready for w in self._workers) and time.monotonic() < end:
                self._poll(0.1, results=None)

    def _ensure_workers(self) -> None:
        if self._closed:
            raise RuntimeError("MathVerifier is closed")
        while len(self._workers) < self.num_workers:
            self._workers.append(WorkerHandle(self._ctx, self.memory_limit_mb))

    # ------------------------------------------------------------------ batch API
    def verify(self, response: str, gold, mode: str | None = None) -> bool:
        return self.verify_batch([response], [gold], mode=mode)[0]

    def verify_batch(self, responses: list[str], golds: list, mode: str | None = None) -> list[bool]:
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            results: list[bool | None] = [None] * len(responses)
            groups: dict[tuple, list[int]] = {}  # identical (pred, gold) pairs run once
            for i, (resp, gold) in enumerate(zip(responses, golds)):
                if mode == "strict_box":
                    results[i] = strict_box_match(resp, gold)
                    self.stats.fast_path += 1
                    continue
                pred, g = prepare(resp, gold, mode)
                r, why = fast_decide(pred, g, self.guard_huge)
                if r is None:
                    k = (pred, g, self.guard_huge)
                    if k in self._cache:
                        self._cache.move_to_end(k)
                        results[i] = self._cache[k]
                        self.stats.cached += 1
                    else:
                        if not groups:
                            self._ensure_workers()  # start them now: their imports overlap the fast path
                        groups.setdefault(k, []).append(i)
                    continue
                results[i] = r
                self.stats.fast_path += 1
                if why == "guard":
                    self.stats.guarded += 1
                    self.stats.timeouts += 1
            if groups:
                pending = [(idx[0], k[0], k[1], k[2]) for k, idx in groups.items()]
                outcomes: dict[int, str] = {}
                self._run_pool(pending, results, outcomes)
                self.stats.worker_tasks += len(pending)
                for k, idx in groups.items():
                    value, outcome = bool(results[idx[0]]), outcomes.get(idx[0], "error")
                    for j in idx:
                        results[j] = value
                    self.stats.cached += len(idx) - 1
                    if outcome == "timeout":
                        self.stats.timeouts += len(idx)
                    elif outcome == "error":
                        self.stats.errors += len(idx)
                    elif self.cache_size:
                        self._cache[k] = value
                        if len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
            out = [bool(r) for r in results]
            self.stats.total += len(out)
            self.stats.correct += sum(out)
            return out

    # ------------------------------------------------------------------ pool engine
    def _run_pool(self, pending: list, results: list, outcomes: dict) -> None:
        for w in list(self._workers):
            if w.assigned:  # left over from an interrupted call: its answers would be misfiled
                self._replace(w)
        self._ensure_workers()
        queue = deque(pending)
        n_left = len(pending)
        size = self.chunk_size or max(1, min(16, -(-len(pending) // (4 * self.num_workers))))
        while n_left > 0:
            now = time.monotonic()
            for w in self._workers:
                if not w.assigned and queue:
                    chunk, nbytes = [], 0
                    while queue and len(chunk) < size and nbytes < _CHUNK_CHARS:
                        chunk.append(queue.popleft())  # small messages: send() never blocks long
                        nbytes += len(chunk[-1][1] or "") + len(chunk[-1][2] or "")
                    try:
                        w.conn.send(chunk)
                    except (OSError, ValueError):
                        queue.extendleft(reversed(chunk))
                        self._replace(w)
                        break
                    w.assigned.extend(chunk)
                    w.task_start = now if w.ready else None
            n_left -= self._poll(self._wait_time(), results, queue, outcomes)

    def _wait_time(self) -> float:
        now = time.monotonic()
        times = [1.0]
        for w in self._workers:
            if w.assigned and w.task_start is not None:
                times.append(w.task_start + self.timeout_s - now)
            elif not w.ready:
                times.append(w.started_at + _STARTUP_TIMEOUT_S - now)
        return max(0.0, min(times))

    def _poll(self, wait_s: float, results: list | None, queue: deque | None = None,
              outcomes: dict | None = None) -> int:
        """Wait for messages/deaths/deadlines; returns the number of tasks finished."""
        done = 0
        objs = {}
        for w in self._workers:
            objs[w.conn] = w
            objs[w.proc.sentinel] = w
        try:
            ready = mp_wait(list(objs), timeout=wait_s)
        except OSError:
            ready = []
        dead: list[WorkerHandle] = []
        for obj in ready:
            w = objs[obj]
            if obj is not w.conn:
                continue
            try:
                done += self._drain(w, results, outcomes)
            except (EOFError, OSError):
                dead.append(w)
        for obj in ready:
            w = objs[obj]
            if obj is w.proc.sentinel and w not in dead and not w.proc.is_alive():
                # drain anything sent just before exiting
                try:
                    done += self._drain(w, results, outcomes)
                except Exception:
                    pass
                dead.append(w)
        now = time.monotonic()
        for w in self._workers:
            if w in dead:
                continue
            if w.assigned and w.task_start is not None and now - w.task_start > self.timeout_s:
                tid = w.assigned.popleft()[0]
                if results is not None:
                    results[tid] = False
                    outcomes[tid] = "timeout"
                done += 1
                self._replace(w, queue)
            elif not w.ready and now - w.started_at > _STARTUP_TIMEOUT_S:
                dead.append(w)
        for w in dead:
            if w.ready and w.assigned:
                tid = w.assigned.popleft()[0]  # the task it died on
                if results is not None:
                    results[tid] = False
                    outcomes[tid] = "error"
                done += 1
            elif not w.ready:
                self._startup_failures += 1
                if self._startup_failures > 3:
                    self._replace(w, queue)
                    raise RuntimeError("math verifier workers fail to start (check imports)")
            self._replace(w, queue)
        return done

    def _drain(self, w: WorkerHandle, results: list | None, outcomes: dict | None) -> int:
        """Read every message waiting from ``w`` ("ready" or task results); tasks finished."""
        done = 0
        while w.conn.poll():
            msg = w.conn.recv()
            now = time.monotonic()
            if msg[0] == "ready":
                w.ready = True
                self._startup_failures = 0
                if w.assigned:
                    w.task_start = now
                continue
            tid, ok, err = msg
            if w.assigned and w.assigned[0][0] == tid:
                w.assigned.popleft()
                if results is not None:
                    results[tid] = bool(ok)
                    outcomes[tid] = "error" if err else "ok"
                done += 1
            w.task_start = now if w.assigned else None
        return done

    def _replace(self, w: WorkerHandle, queue: deque | None = None) -> None:
        leftover = list(w.assigned)
        w.assigned.clear()
        w.kill()
        if queue is not None and leftover:
            queue.extendleft(reversed(leftover))
        if w in self._workers:
            idx = self._workers.index(w)
            self.stats.worker_restarts += 1
            if self._closed:
                self._workers.pop(idx)
            else:
                self._workers[idx] = WorkerHandle(self._ctx, self.memory_limit_mb)
