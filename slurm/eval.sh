#!/usr/bin/env bash
#SBATCH --job-name=nft-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
# Benchmark evaluation (AIME24/25, AMC23 avg@32; MATH500, OlympiadBench, Minerva avg@1) of an
# HF checkpoint on one node, on ALL of its GPUs: one `python -m tools.eval` process that starts
# dp = GPUs / tp vLLM engines of tp GPUs each (vLLM's own multiprocessing executor; no torchrun).
# Arguments go to tools.eval; --tp defaults to 1 (NFT_EVAL_TP), --dp to GPUs / tp unless given:
#
#   sbatch slurm/eval.sh --model /models/nft-32b --recipe recipes/nft_qwen2.5_32b.yaml --tp 4 \
#       --save-responses evals/nft-32b.gens.jsonl --out evals/nft-32b.json --records evals/nft-32b.records.jsonl
#
# With --save-responses the generations are appended as they finish: a requeued or resubmitted
# job with the same arguments resumes where the last one stopped.
# NFT_EVAL_DRY=1 prints the srun command instead of running it.
# Partition/account: add `#SBATCH --partition=...` / `--account=...` or pass -p/-A to sbatch.
set -euo pipefail
NFT_ROOT=${NFT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$NFT_ROOT"
if [[ -z "${NFT_PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then NFT_PYTHON=.venv/bin/python; else NFT_PYTHON=python3; fi
fi

tp=${NFT_EVAL_TP:-1}
has_tp=0
has_dp=0
prev=""
for a in "$@"; do
    case "$a" in
        --tp=*) tp=${a#--tp=}; has_tp=1 ;;
        --dp|--dp=*) has_dp=1 ;;
    esac
    if [[ "$prev" == "--tp" ]]; then tp=$a; has_tp=1; fi
    prev=$a
done
# GPUs of this allocation: Slurm's count, else what the node shows
gpus=${SLURM_GPUS_ON_NODE:-}
if [[ -z "$gpus" ]]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
extra=()
if [[ "$has_tp" == 0 ]]; then extra+=(--tp "$tp"); fi
if [[ "$has_dp" == 0 ]]; then
    dp=$(( ${gpus:-0} / tp ))
    if (( dp < 1 )); then dp=1; fi
    extra+=(--dp "$dp")
fi
echo "[eval.sh] ${gpus:-0} GPUs: tp=$tp ${extra[*]}" >&2

container_args=()
if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
    container_args=(--container-image="$CONTAINER_IMAGE" --container-workdir="$NFT_ROOT"
                    --container-mounts="${CONTAINER_MOUNTS:-$NFT_ROOT:$NFT_ROOT}")
    NFT_PYTHON=python
fi
step_args=(--nodes=1 --ntasks=1)
if (( ${gpus:-0} > 0 )); then step_args+=(--gres="gpu:$gpus"); fi  # the step sees every GPU
cmd=(srun "${step_args[@]}" "${container_args[@]}" "$NFT_PYTHON" -m tools.eval "${extra[@]}" "$@")
if [[ -n "${NFT_EVAL_DRY:-}" ]]; then echo "[eval.sh] ${cmd[*]}"; exit 0; fi
"${cmd[@]}"
