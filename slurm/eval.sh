#!/usr/bin/env bash
#SBATCH --job-name=nft-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
# Benchmark evaluation (AIME24/25, AMC23 avg@32; MATH500, OlympiadBench, Minerva avg@1) of an
# HF checkpoint on one node. Arguments go to `python -m tools.eval` (vLLM spreads over the GPUs
# itself, so this runs one process, not torchrun):
#
#   sbatch slurm/eval.sh --model /models/nft-32b --temperature 0.6 --top-p 0.7
#
# Partition/account: add `#SBATCH --partition=...` / `--account=...` or pass -p/-A to sbatch.
set -euo pipefail
NFT_ROOT=${NFT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$NFT_ROOT"
if [[ -z "${NFT_PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then NFT_PYTHON=.venv/bin/python; else NFT_PYTHON=python3; fi
fi
container_args=()
if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
    container_args=(--container-image="$CONTAINER_IMAGE" --container-workdir="$NFT_ROOT"
                    --container-mounts="${CONTAINER_MOUNTS:-$NFT_ROOT:$NFT_ROOT}")
    NFT_PYTHON=python
fi
srun --nodes=1 --ntasks=1 "${container_args[@]}" "$NFT_PYTHON" -m tools.eval "$@"
