#!/usr/bin/env bash
#SBATCH --job-name=nft-convert
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%j.out
# HF <-> megatron checkpoint conversion on one node (one process; the dist checkpoint it writes
# loads at any TP/PP). Arguments go to `python -m megatron_nft.checkpoint.convert`:
#
#   sbatch slurm/convert.sh hf-to-mcore --hf /models/Qwen2.5-32B --out /ckpt/qwen2.5-32b-mcore --tp 8 --pp 2
#   sbatch slurm/convert.sh mcore-to-hf --mcore outputs/nft_qwen2.5_32b --out /models/nft-32b
#
# --mcore takes a run directory (output.dir: its checkpoints/latest), a step directory
# (outputs/nft_qwen2.5_32b/checkpoints/step_00000100) or a converted checkpoint.
#
# NPROC_PER_NODE=8 saves from a TP x PP layout under torchrun instead (multiple of tp*pp).
# Partition/account: add `#SBATCH --partition=...` / `--account=...` or pass -p/-A to sbatch.
set -euo pipefail
export NPROC_PER_NODE=${NPROC_PER_NODE:-1}
export NFT_MODULE=megatron_nft.checkpoint.convert
NFT_ROOT=${NFT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
exec bash "$NFT_ROOT/slurm/launch.sh" "$@"
