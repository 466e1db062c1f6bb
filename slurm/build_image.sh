#!/usr/bin/env bash
# Build the megatron-nft container image as an enroot squashfs (.sqsh) for pyxis
# (`srun --container-image=FILE.sqsh`, CONTAINER_IMAGE in slurm/launch.sh). Run it on a LOGIN
# node (internet, enroot, no GPU needed), from the repo root, on shared storage:
#
#   bash slurm/build_image.sh [OUT.sqsh]          # default: $NFT_IMAGE_DIR/megatron-nft-vllm0.33.0.sqsh
#
# Steps (what docker/Dockerfile does, with enroot instead of a Docker engine):
#   1. enroot import docker://vllm/vllm-openai:v0.33.0  -> base .sqsh (torch, CUDA, vLLM agree)
#   2. enroot create + enroot start --rw: pip install -r requirements-gpu.txt, then Transformer
#      Engine with --no-build-isolation against the image's torch, then this project (-e, from
#      the checkout mounted at the same path), then `nft-train --check-env --cpu`
#   3. enroot export -> OUT.sqsh; the temporary container is removed
# Where Docker is available instead: docker build -f docker/Dockerfile -t megatron-nft . and
# `enroot import dockerd://megatron-nft`. Never run on the project's CPU CI machines (no enroot,
# no Docker engine there); only linted (shellcheck) and dry-run (NFT_BUILD_DRY=1 prints the steps).
set -euo pipefail

NFT_ROOT=${NFT_ROOT:-$PWD}
cd "$NFT_ROOT"
VLLM_VERSION=$(sed -n 's/^vllm==\([0-9.]*\).*/\1/p' requirements-gpu.txt)
BASE=${NFT_BASE_IMAGE:-docker://vllm/vllm-openai:v$VLLM_VERSION}
NFT_IMAGE_DIR=${NFT_IMAGE_DIR:-$NFT_ROOT/images}
OUT=${1:-$NFT_IMAGE_DIR/megatron-nft-vllm$VLLM_VERSION.sqsh}
NAME=nft-build-$$
BASE_SQSH=$NFT_IMAGE_DIR/vllm-openai-v$VLLM_VERSION.sqsh
MAX_JOBS=${MAX_JOBS:-8}   # TE's compile: ~2-4 GB RAM per job

run() {
    echo "[build_image] $*"
    if [[ "${NFT_BUILD_DRY:-0}" != 1 ]]; then "$@"; fi
}

if [[ -z "$VLLM_VERSION" ]]; then
    echo "build_image.sh: no vllm==X pin in requirements-gpu.txt" >&2
    exit 2
fi
if [[ "${NFT_BUILD_DRY:-0}" != 1 ]] && ! command -v enroot > /dev/null 2>&1; then
    echo "build_image.sh: enroot is not installed here; run on a login node with enroot/pyxis," \
         "or build docker/Dockerfile with Docker" >&2
    exit 2
fi
run mkdir -p "$NFT_IMAGE_DIR"
if [[ ! -f "$BASE_SQSH" ]]; then
    run enroot import --output "$BASE_SQSH" "$BASE"
fi
trap 'if [[ "${NFT_BUILD_DRY:-0}" != 1 ]]; then enroot remove --force "$NAME" > /dev/null 2>&1 || true; fi' EXIT
run enroot create --name "$NAME" "$BASE_SQSH"
install="set -euo pipefail; cd '$NFT_ROOT'; export MAX_JOBS=$MAX_JOBS NVTE_FRAMEWORK=pytorch PIP_NO_CACHE_DIR=1
python3 -m pip install -r requirements-gpu.txt
python3 -m pip install --no-build-isolation -r requirements-gpu-te.txt
python3 -m pip install --no-deps -e .
nft-train --check-env --cpu"
run enroot start --rw --mount "$NFT_ROOT:$NFT_ROOT" "$NAME" bash -c "$install"
run rm -f "$OUT"
run enroot export --output "$OUT" "$NAME"
echo "[build_image] done: $OUT  (use: export CONTAINER_IMAGE=$OUT; sbatch slurm/nft_7b.sh)"
