"""One run per ``output.dir``: ``output.dir/.nft-run.lock`` holds the host, pid and Slurm job id
of the run that owns the directory.

A second run exits at once naming the holder. A lock whose holder is gone (same host, pid no
longer alive) is taken over; a requeued Slurm job (same ``SLURM_JOB_ID``) gets its own
directory back. The global rank 0 takes the lock; every rank learns the outcome
(:func:`hold_run_dir`), so one message is printed, not one per rank.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from typing import Optional

from megatron_nft.stability import UserError

LOCK_NAME = ".nft-run.lock"


class RunDirBusy(UserError):
    """``output.dir`` belongs to another live run."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _read(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}  # torn or garbage: judged by its age below


def _may_take(holder: dict, path: str) -> bool:
    """A lock we may take over: our own Slurm job (requeued), or a dead process on this host."""
    me = _me()
    if not holder:  # unreadable: a writer dies between create and write, or the file is garbage
        return time.time() - os.path.getmtime(path) > 10.0
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"]:
        return True
    pid = int(holder.get("pid", -1))  # this very process: an earlier run in it that did not release
    return holder.get("host") == me["host"] and (pid == me["pid"] or not _alive(pid))


def _describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


class RunLock:
    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunDirBusy` naming the holder and the fix."""
        try:
            return self._acquire()
        except PermissionError as e:
            raise UserError(self._unwritable(e)) from None
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC):
                raise UserError(self._unwritable(e)) from None
            raise

    def _unwritable(self, e: OSError) -> str:
        return (f"output.dir {os.path.dirname(self.path)} is not writable ({e.strerror}: {e.filename}): "
                "choose a writable output.dir (--set output.dir=...) or fix its permissions / free space")

    def _acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is None:
                    continue  # released meanwhile
                if not _may_take(holder, self.path):
                    raise RunDirBusy(self._busy(holder)) from None
                try:  # atomic: of two runs taking over the same stale lock only one wins the rename
                    os.rename(self.path, f"{self.path}.stale.{os.getpid()}")
                    os.remove(f"{self.path}.stale.{os.getpid()}")
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
            self.held = True
            return self
        raise RunDirBusy(self._busy(_read(self.path) or {}))

    def _busy(self, holder: dict) -> str:
        return (f"output.dir {os.path.dirname(self.path)} is in use by another run ({_describe(holder)}): "
                f"wait for it or stop it, or set output.dir to another directory; if that run is gone "
                f"(another host), delete {self.path}")

    def release(self) -> None:
        if self.held:
            holder = _read(self.path) or {}
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                os.remove(self.path)
            self.held = False


def hold_run_dir(out_dir: str, rank: int) -> Optional[RunLock]:
    """Collective (after ``init_distributed``): rank 0 takes the lock and shares the outcome;
    every rank raises the same :class:`RunDirBusy` when it is held elsewhere."""
    import torch.distributed as dist

    lock, error = None, None
    if rank == 0:
        try:
            lock = RunLock(out_dir).acquire()
        except RunDirBusy as e:
            error = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise RunDirBusy(error)
    return lock
