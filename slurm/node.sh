#!/usr/bin/env bash
# One srun task per node (started by slurm/launch.sh): one torchrun agent for this node.
# Expects NNODES, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, NFT_PYTHON, NFT_MODULE, LOG_DIR
# from the launcher and SLURM_NODEID from srun.
set -euo pipefail
# Ignore SIGUSR1 here and (inherited through exec) in torchrun, which would otherwise die on it;
# the trainer installs its own SIGUSR1 handler (checkpoint at the next step boundary, exit 0).
trap '' USR1
node_rank=${SLURM_NODEID:?SLURM_NODEID is not set: run under srun (slurm/launch.sh)}
cmd=("$NFT_PYTHON" -m torch.distributed.run
     --nnodes "$NNODES" --node-rank "$node_rank" --nproc-per-node "$NPROC_PER_NODE"
     --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
     --log-dir "$LOG_DIR/torchrun/node$node_rank"
     -m "$NFT_MODULE" "$@")
echo "[launch] node_rank=$node_rank nnodes=$NNODES host=$(hostname) nproc_per_node=$NPROC_PER_NODE" \
     "master=$MASTER_ADDR:$MASTER_PORT"
if [[ -n "${NFT_LAUNCH_DRY:-}" ]]; then
    printf '[launch] node %s:' "$node_rank"; printf ' %q' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
