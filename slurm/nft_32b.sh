#!/usr/bin/env bash
#SBATCH --job-name=nft-32b
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@2580
#SBATCH --cpus-per-task=32
#SBATCH --mem=240G
# NFT on Qwen2.5-32B, 16 nodes x 8 GPUs (recipes/nft_qwen2.5_32b.yaml). Submit from the repo root
# on shared storage (mkdir -p logs once):
#
#   sbatch slurm/nft_32b.sh                                    # the paper's NFT run
#   NFT_RECIPE=recipes/dapo_qwen2.5_32b.yaml sbatch slurm/nft_32b.sh   # a baseline (rft_/grpo_/drgrpo_/dapo_): its own output.dir
#   sbatch slurm/nft_32b.sh --set train.max_steps=10           # extra args go to the trainer
#
# Adapt to your cluster: add `#SBATCH --partition=<gpu partition>` and `#SBATCH --account=<account>`
# (or `sbatch -p ... -A ...`); CONTAINER_IMAGE=<image.sqsh> runs every node in a pyxis container;
# NCCL_SOCKET_IFNAME / NCCL_IB_HCA are passed through. --time may be shorter than the run: before
# the limit (squeue's end time) the job checkpoints, requeues itself and resumes (see slurm/launch.sh).
# The signal lead, --cpus-per-task and --mem are what `--dry-run` prints in its [slurm] line.
# Check the layout first: python -m megatron_nft.train --recipe recipes/nft_qwen2.5_32b.yaml --dry-run
set -euo pipefail
export NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NFT_ROOT=${NFT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
exec bash "$NFT_ROOT/slurm/launch.sh" --recipe "${NFT_RECIPE:-recipes/nft_qwen2.5_32b.yaml}" "$@"
