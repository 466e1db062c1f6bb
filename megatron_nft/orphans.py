"""No orphans: processes of a run die with the process that started them.

* A rank started by ``torchrun`` watches its launcher (:func:`die_with_launcher`): when the
  agent is gone (SIGKILL), the rank kills itself instead of training on unsupervised.
* A ``multiprocessing`` spawn child of ``nft-train`` (megatron dist-checkpointing's writer
  ``Manager``) re-imports ``megatron_nft.train`` as ``__mp_main__``; there
  :func:`die_with_parent` watches the parent and exits when it is gone; ``fork`` children (the
  checkpoint writer workers) restart that watch after the fork (:func:`forked_children_die_with_me`).
  (``resource_tracker`` exits by itself once no live process holds its pipe.)

Polling ``getppid`` (twice a second) rather than ``PR_SET_PDEATHSIG``: that signal
fires when the parent *thread* that started the child exits, which would kill healthy children
started from short-lived threads.
"""
from __future__ import annotations

import os
import signal
import threading
import time


def _watch(name: str, dead, act) -> None:
    def loop():
        while not dead():
            time.sleep(0.5)
        act()

    threading.Thread(target=loop, name=name, daemon=True).start()


def die_with_launcher() -> bool:
    """In a torchrun rank: SIGKILL this rank (its own children follow) once the agent that
    started it is gone. Returns whether the watch was installed."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return False
    launcher = os.getppid()
    _watch("nft-launcher-watch", lambda: os.getppid() != launcher, lambda: os.kill(os.getpid(), signal.SIGKILL))
    return True


def die_with_parent() -> None:
    """In a spawn child (call it while ``__mp_main__`` is imported, before multiprocessing has
    set ``parent_process()``): exit as soon as the parent process is gone."""
    parent = os.getppid()
    _watch("nft-parent-watch", lambda: os.getppid() != parent, lambda: os._exit(1))


def forked_children_die_with_me() -> None:
    """Every ``fork`` child of this process (dist-checkpointing's writer workers) watches its
    parent too: a fork copies only the calling thread, so the watch is restarted in the child."""
    global _FORK_HOOK
    if not _FORK_HOOK:  # once per process (main() may run more than once in one interpreter)
        os.register_at_fork(after_in_child=die_with_parent)
        _FORK_HOOK = True


_FORK_HOOK = False
