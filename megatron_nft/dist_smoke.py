"""Multi-node rendezvous smoke test for slurm/launch.sh (no model, CPU/gloo).

    NFT_MODULE=megatron_nft.dist_smoke sbatch slurm/nft_tiny.sh [--wait-for-signal SECONDS]

Every rank joins the torchrun world (env://), all-reduces its rank, checks the sum and prints
``[dist_smoke] rank R/W node_id N ...``; rank 0 also prints ``world W``. Unknown arguments
(``--recipe``, ``--set``) are accepted and ignored, so it is a drop-in for the trainer.

``--wait-for-signal S`` mimics the trainer's time-limit protocol: loop over "steps" (0.5 s each,
all ranks agreeing through an all-reduce) until SIGUSR1 arrives on any rank, then "checkpoint"
and exit 0; after a requeue (SLURM_RESTART_COUNT >= 1) it finishes at once. Exits 1 if no signal
came within S seconds.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dist_smoke")
    p.add_argument("--wait-for-signal", type=float, default=0.0, metavar="SECONDS")
    args, _ignored = p.parse_known_args(argv)

    import torch
    import torch.distributed as dist

    got = {"usr1": False}
    signal.signal(signal.SIGUSR1, lambda *_: got.__setitem__("usr1", True))

    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    node = os.environ.get("SLURM_NODEID", "?")
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    expect = world * (world + 1) / 2
    ok = float(t.item()) == expect
    print(f"[dist_smoke] rank {rank}/{world} local_rank {os.environ.get('LOCAL_RANK')} node_id {node} "
          f"host {socket.gethostname()} restart {restart} all_reduce {t.item():g} (expect {expect:g}) "
          f"{'OK' if ok else 'MISMATCH'}", flush=True)
    if rank == 0:
        print(f"[dist_smoke] world {world} master {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
              flush=True)
    rc = 0 if ok else 1
    if rc == 0 and args.wait_for_signal > 0 and restart == 0:
        print(f"[dist_smoke] rank {rank} waiting for SIGUSR1 (pid {os.getpid()})", flush=True)
        deadline = time.time() + args.wait_for_signal
        step = 0
        while True:
            time.sleep(0.5)
            step += 1
            flag = torch.tensor([1.0 if got["usr1"] else 0.0])
            dist.all_reduce(flag)  # a step boundary: every rank learns that some rank was signalled
            if flag.item() > 0:
                print(f"[dist_smoke] rank {rank} got SIGUSR1 (local {got['usr1']}): checkpoint at step {step}, "
                      f"exit 0", flush=True)
                break
            if time.time() > deadline:
                print(f"[dist_smoke] rank {rank}: no SIGUSR1 within {args.wait_for_signal:g}s", flush=True)
                rc = 1
                break
    elif rc == 0 and args.wait_for_signal > 0:
        print(f"[dist_smoke] rank {rank} resumed after requeue (restart {restart}); done", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return rc


if __name__ == "__main__":
    sys.exit(main())
