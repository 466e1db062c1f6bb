"""``nft-train`` / ``python -m megatron_nft.train``: the NFT recipe entry point.

    torchrun --nproc-per-node N -m megatron_nft.train --recipe recipes/tiny_cpu.yaml --set parallel.tp=2
    nft-train --recipe R --dry-run --set cluster.nodes=16 --set cluster.gpus_per_node=8
    nft-train --check-env [--recipe R] [--cpu]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import warnings

from megatron_nft.config import ConfigError, load_config
from megatron_nft.orphans import die_with_launcher, die_with_parent, forked_children_die_with_me
from megatron_nft.stability import UserError

if multiprocessing.current_process().name != "MainProcess":  # a spawn child importing us as __mp_main__
    die_with_parent()  # (dist-checkpointing's writer Manager): it must not outlive nft-train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nft-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="recipe YAML (see recipes/); required except with --check-env")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe key, e.g. --set parallel.tp=2 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the recipe against cluster.* and print the plan; needs no GPU")
    p.add_argument("--check-env", action="store_true",
                   help="print the stack's versions and check this node (CUDA, GPUs, Transformer Engine, vLLM, "
                        "the recipe's model/data paths, disk); exit 2 naming each problem")
    p.add_argument("--time", metavar="LIMIT",
                   help="with --dry-run: one job's Slurm time limit ([D-]HH:MM[:SS] or minutes), for the requeue "
                        "count (sets plan.job_hours)")
    p.add_argument("--cpu", action="store_true",
                   help="with --check-env: the run is meant for CPU; skip the CUDA / GPU / extension checks")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check_env:
        return _check_env(args)
    if args.recipe is None:
        parser.error("--recipe is required (except with --check-env)")
    try:
        limit = [f"plan.job_hours={slurm_hours(args.time)}"] if args.time else []
        cfg = load_config(args.recipe, args.overrides + limit)
        if not args.dry_run:  # FP8 / Transformer Engine problems fail here, before vLLM or a model starts
            from megatron_nft.megatron.policy import resolve_transformer_impl
            from megatron_nft.megatron.precision import check_precision_supported

            try:
                check_precision_supported(cfg, resolve_transformer_impl(cfg.model.transformer_impl))
            except RuntimeError as e:  # PrecisionError: names the keys and what to install
                print(f"nft-train: {e}", file=sys.stderr)
                return 2
        if args.dry_run:
            from megatron_nft.plan import dry_run

            return dry_run(cfg)
    except ConfigError as e:
        print(f"nft-train: config error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # megatron-core warns at import that TE/apex are missing; the fallbacks are expected here.
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    from megatron_nft.trainer import run

    die_with_launcher()  # under torchrun: a rank never outlives its agent
    forked_children_die_with_me()

    try:
        run(cfg)
    except ConfigError as e:
        print(f"nft-train: config error: {e}", file=sys.stderr)
        return 2
    except UserError as e:  # every rank raises it; one line from rank 0, no traceback
        if os.environ.get("RANK", "0") == "0":
            print(f"nft-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        from megatron_nft.megatron.parallel import destroy

        destroy()
    return 0


def slurm_hours(limit: str) -> float:
    """Slurm's --time in hours: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    days, _, rest = limit.rpartition("-")
    parts = [float(x) for x in rest.split(":")]
    if days:
        h, m, sec = (parts + [0.0, 0.0])[:3]
    elif len(parts) == 3:
        h, m, sec = parts
    else:
        h, m, sec = 0.0, parts[0], (parts[1] if len(parts) > 1 else 0.0)
    return float(days or 0) * 24 + h + m / 60 + sec / 3600


def _check_env(args) -> int:
    from megatron_nft.envcheck import check_env

    try:
        cfg = load_config(args.recipe, args.overrides) if args.recipe else None
    except ConfigError as e:
        print(f"nft-train: config error: {e}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    return check_env(cfg, cpu=args.cpu)


if __name__ == "__main__":
    sys.exit(main())
