"""Worker processes of the verifier pool (spawned; the parent SIGKILLs them on timeout)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque

__all__ = ["WorkerHandle", "worker_main"]


def worker_main(conn, memory_limit_mb: int | None) -> None:
    """Worker process: import the sympy backend once, then answer chunks of tasks."""
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
    from .grading import slow_decide

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
