#!/usr/bin/env bash
#SBATCH --job-name=nft-tiny
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
# The tiny CPU recipe on 2 nodes, one rank per node (gloo), through the same launcher as the
# 7B/32B jobs: a Slurm smoke test that needs no GPU. Submit from the repo root (mkdir -p logs):
#
#   sbatch slurm/nft_tiny.sh --set train.max_steps=2          # extra args go to the trainer
#   NFT_MODULE=megatron_nft.dist_smoke sbatch slurm/nft_tiny.sh   # rendezvous only, no model
#
# Partition/account: add `#SBATCH --partition=...` / `#SBATCH --account=...` or pass -p/-A to sbatch.
set -euo pipefail
export NPROC_PER_NODE=${NPROC_PER_NODE:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export NFT_PREFLIGHT_CPU=${NFT_PREFLIGHT_CPU:-1}   # a CPU run: the launcher's --check-env skips CUDA
NFT_ROOT=${NFT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
exec bash "$NFT_ROOT/slurm/launch.sh" --recipe "${NFT_RECIPE:-recipes/tiny_cpu.yaml}" "$@"
