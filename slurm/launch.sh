#!/usr/bin/env bash
# The one megatron-nft launcher: run it from an sbatch script (or inside salloc).
#
#   bash slurm/launch.sh [ARGS...]          # ARGS go to `python -m $NFT_MODULE`
#
# It starts one `srun` task per node; each task runs slurm/node.sh, which execs
# `torchrun --nnodes N --node-rank $SLURM_NODEID --nproc-per-node G --master-addr A --master-port P`
# (static rendezvous). Node identity comes from SLURM_NODEID, never from `hostname` (several
# virtual nodes may share one host).
#
# Derived (override any by exporting it first):
#   NFT_ROOT        repo root on shared storage      [SLURM_SUBMIT_DIR, else $PWD]; submit from it
#   NFT_MODULE      python module to run             [megatron_nft.train]
#   NFT_PYTHON      interpreter on the nodes         [$NFT_ROOT/.venv/bin/python, else python3;
#                                                     python inside CONTAINER_IMAGE]
#   NNODES          number of nodes                  [SLURM_JOB_NUM_NODES / SLURM_NNODES]
#   NPROC_PER_NODE  ranks per node (GPUs)            [SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE, else 1]
#   MASTER_ADDR     rendezvous host                  [first host of SLURM_JOB_NODELIST]
#   MASTER_PORT     rendezvous port                  [29500 + SLURM_JOB_ID % 1000]
#   LOG_DIR         per-job logs (torchrun error files, launch env) [$NFT_ROOT/logs/$SLURM_JOB_ID]
# Other knobs:
#   NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME   passed through to every rank (srun --export=ALL)
#   CONTAINER_IMAGE, CONTAINER_MOUNTS         pyxis/enroot: run every node inside this image;
#                                             mounts default to NFT_ROOT at the same path
#   NFT_SRUN_ARGS    extra srun arguments (word-split), e.g. "--mpi=none --cpu-bind=none"
#   NFT_PREFLIGHT=0  skip the `--dry-run` layout check and `--check-env` done before srun
#                    (megatron_nft.train only; inside CONTAINER_IMAGE when set)
#   NFT_PREFLIGHT_CPU=1  the run is meant for CPU: `--check-env --cpu` (slurm/nft_tiny.sh sets it)
#   NFT_REQUEUE=0    on SIGUSR1 checkpoint and stop, but do not `scontrol requeue`
#   NFT_MAX_FAILURES requeue after a failed run (non-zero exit without "done") at most this many
#                    times per job [3]; counted in $LOG_DIR/failures
#   NFT_LAUNCH_DRY=1 print the derived settings and every node's torchrun command; run nothing
#
# Time limits and requeue: the trainer reads the job's end time (squeue %e) and, from its own
# measured step and checkpoint times, checkpoints and exits before it; it polls inside a step too
# (between refill rounds, old log-prob mini-batches, before eval) and then checkpoints the last
# completed step. It writes "requeue" or "done" to $NFT_STATUS_FILE ($LOG_DIR/status). As a
# backup the wrappers ask for `#SBATCH --requeue --signal=B:USR1@<lead>` (lead = the longest step
# plus a checkpoint, `--dry-run` prints it); the trap forwards SIGUSR1 to the srun step (srun
# passes it to every process of the step); torchrun ignores it (node.sh). After a stop
# ("requeue" or SIGUSR1), or a failure (up to NFT_MAX_FAILURES), this script runs
# `scontrol requeue $SLURM_JOB_ID`: the same job starts again and the trainer resumes from
# output.dir. SIGTERM (preemption, scancel) reaches every rank from Slurm itself: they checkpoint
# if the grace time allows (train.sigterm_grace_s), and this script does not requeue. (Partitions/accounts: add `#SBATCH --partition=...`/`--account=...` to the wrapper or
# pass them on the command line: `sbatch -p gpu -A myproj slurm/nft_32b.sh`.)
set -euo pipefail

NFT_ROOT=${NFT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$NFT_ROOT"
NFT_MODULE=${NFT_MODULE:-megatron_nft.train}
if [[ -z "${NFT_PYTHON:-}" ]]; then
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        NFT_PYTHON=python
    elif [[ -x "$NFT_ROOT/.venv/bin/python" ]]; then
        NFT_PYTHON=$NFT_ROOT/.venv/bin/python
    else
        NFT_PYTHON=python3
    fi
fi
JOB_ID=${SLURM_JOB_ID:-}
if [[ -z "$JOB_ID" && -z "${NFT_LAUNCH_DRY:-}" ]]; then
    echo "launch.sh: SLURM_JOB_ID is not set: submit with sbatch (or run inside salloc)" >&2
    exit 2
fi
NNODES=${NNODES:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    gpn=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
    NPROC_PER_NODE=${gpn##*:}   # "h100:8" -> 8
fi
if [[ -z "${MASTER_ADDR:-}" ]]; then
    nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
    if [[ -z "$nodelist" ]]; then
        echo "launch.sh: SLURM_JOB_NODELIST is not set and MASTER_ADDR not given" >&2
        exit 2
    fi
    mapfile -t hosts < <(scontrol show hostnames "$nodelist")
    if [[ ${#hosts[@]} -eq 0 ]]; then
        echo "launch.sh: 'scontrol show hostnames $nodelist' returned nothing" >&2
        exit 2
    fi
    MASTER_ADDR=${hosts[0]}
fi
if [[ -z "${MASTER_PORT:-}" ]]; then
    if [[ "$JOB_ID" =~ ^[0-9]+$ ]]; then
        MASTER_PORT=$((29500 + JOB_ID % 1000))
    else
        MASTER_PORT=29500
    fi
fi
LOG_DIR=${LOG_DIR:-$NFT_ROOT/logs/${JOB_ID:-local}}
export NFT_ROOT NFT_MODULE NFT_PYTHON NNODES NPROC_PER_NODE MASTER_ADDR MASTER_PORT LOG_DIR

srun_args=(--nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1
           --label --export=ALL)
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
    srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")  # newer srun no longer inherits it
fi
if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
    srun_args+=(--container-image="$CONTAINER_IMAGE"
                --container-mounts="${CONTAINER_MOUNTS:-$NFT_ROOT:$NFT_ROOT}"
                --container-workdir="$NFT_ROOT")
fi
if [[ -n "${NFT_SRUN_ARGS:-}" ]]; then
    read -r -a extra <<< "$NFT_SRUN_ARGS"
    srun_args+=("${extra[@]}")
fi
node_cmd=(bash "$NFT_ROOT/slurm/node.sh")

# Preflight (megatron_nft.train only), before any rank starts: the `--dry-run` layout check, then
# `--check-env` (CUDA, GPUs per node, Transformer Engine / vllm._C imports, model/data paths, disk).
# With CONTAINER_IMAGE both run inside the image on the first node (one srun task), since its
# python only exists there. NFT_PREFLIGHT_CPU=1 (slurm/nft_tiny.sh) passes --cpu: a CPU run.
preflight_cmds() {
    local sets=(--set "cluster.nodes=$NNODES" --set "cluster.gpus_per_node=$NPROC_PER_NODE")
    local cpu=()
    if [[ "${NFT_PREFLIGHT_CPU:-0}" == 1 ]]; then cpu=(--cpu); fi
    local py
    py=$(printf '%q' "$NFT_PYTHON")
    printf '%s -m megatron_nft.train' "$py"; printf ' %q' "$@" --dry-run "${sets[@]}"; echo
    printf '%s -m megatron_nft.train' "$py"; printf ' %q' "$@" --check-env "${cpu[@]}" "${sets[@]}"; echo
}
preflight_runner() {  # the command prefix that runs one preflight command
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        printf '%q ' srun --nodes=1 --ntasks=1 --container-image="$CONTAINER_IMAGE" \
            --container-mounts="${CONTAINER_MOUNTS:-$NFT_ROOT:$NFT_ROOT}" --container-workdir="$NFT_ROOT"
    fi
}
preflight() {
    local runner cmds pf=0
    runner=$(preflight_runner)
    mapfile -t cmds < <(preflight_cmds "$@")
    # exit 2 = invalid layout; other codes (3 = does not fit) are warnings
    bash -c "$runner${cmds[0]}" > "$LOG_DIR/preflight.txt" 2>&1 || pf=$?
    if [[ $pf -eq 2 ]]; then
        cat "$LOG_DIR/preflight.txt" >&2
        echo "[launch] preflight failed: fix the recipe (or NFT_PREFLIGHT=0 to skip)" >&2
        exit 2
    elif [[ $pf -ne 0 ]]; then
        grep -E 'peak|DOES NOT FIT|error' "$LOG_DIR/preflight.txt" >&2 || true
        echo "[launch] preflight warning (exit $pf), starting anyway" >&2
    fi
    pf=0
    bash -c "$runner${cmds[1]}" > "$LOG_DIR/check_env.txt" 2>&1 || pf=$?
    grep -E '^\[env\] python' "$LOG_DIR/check_env.txt" || true
    if [[ $pf -ne 0 ]]; then
        cat "$LOG_DIR/check_env.txt" >&2
        echo "[launch] --check-env found problems (each line names the fix; NFT_PREFLIGHT=0 skips)" >&2
        exit 2
    fi
}

echo "[launch] job ${JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0}: nnodes=$NNODES nproc_per_node=$NPROC_PER_NODE" \
     "master=$MASTER_ADDR:$MASTER_PORT module=$NFT_MODULE python=$NFT_PYTHON log_dir=$LOG_DIR"
echo "[launch] NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-}" \
     "CONTAINER_IMAGE=${CONTAINER_IMAGE:-}"
if [[ -n "${NFT_LAUNCH_DRY:-}" ]]; then
    printf '[launch] srun'; printf ' %q' "${srun_args[@]}" "${node_cmd[@]}" "$@"; echo
    if [[ "$NFT_MODULE" == megatron_nft.train && "${NFT_PREFLIGHT:-1}" != 0 ]]; then
        runner=$(preflight_runner)
        preflight_cmds "$@" | sed "s|^|[launch] preflight: $runner|"
    fi
    for ((i = 0; i < NNODES; i++)); do
        SLURM_NODEID=$i "${node_cmd[@]}" "$@"
    done
    exit 0
fi
mkdir -p "$LOG_DIR"
env | grep -E '^(SLURM_|NFT_|MASTER_|NNODES|NPROC_PER_NODE|NCCL_|GLOO_)' | sort > "$LOG_DIR/launch.env" || true

if [[ "$NFT_MODULE" == megatron_nft.train && "${NFT_PREFLIGHT:-1}" != 0 ]]; then
    preflight "$@"
fi

stop_requested=0
terminated=0
srun_pid=
export NFT_STATUS_FILE=${NFT_STATUS_FILE:-$LOG_DIR/status}
rm -f "$NFT_STATUS_FILE"
# shellcheck disable=SC2317  # called through `trap`
on_usr1() {
    stop_requested=1
    echo "[launch] SIGUSR1: time limit near; asking every rank to checkpoint and exit"
    if [[ -n "$srun_pid" ]]; then
        kill -USR1 "$srun_pid" 2> /dev/null || true
    fi
}
trap on_usr1 USR1
# shellcheck disable=SC2317  # called through `trap`
on_term() {
    terminated=1
    echo "[launch] SIGTERM: the ranks checkpoint if the grace time allows; no requeue from here"
}
trap on_term TERM

srun "${srun_args[@]}" "${node_cmd[@]}" "$@" &
srun_pid=$!
rc=0
while true; do
    # `wait` returns early (>128) when a trapped signal arrives; keep waiting for srun itself.
    if wait "$srun_pid"; then rc=0; else rc=$?; fi
    if ! kill -0 "$srun_pid" 2> /dev/null; then
        break
    fi
done
status=$(cat "$NFT_STATUS_FILE" 2> /dev/null || true)
echo "[launch] srun exited with $rc (trainer status: ${status:-none})"
requeue=0
if [[ $stop_requested -eq 1 || "$status" == requeue ]]; then
    requeue=1
elif [[ $rc -ne 0 && "$status" != "done" ]]; then
    failures=$(($(cat "$LOG_DIR/failures" 2> /dev/null || echo 0) + 1))
    echo "$failures" > "$LOG_DIR/failures"
    if [[ $failures -le ${NFT_MAX_FAILURES:-3} ]]; then
        echo "[launch] failure $failures of at most ${NFT_MAX_FAILURES:-3} requeued (NFT_MAX_FAILURES)"
        requeue=1
    else
        echo "[launch] $failures failures: not requeueing (NFT_MAX_FAILURES=${NFT_MAX_FAILURES:-3}); see $LOG_DIR" >&2
    fi
fi
if [[ $requeue -eq 1 && $terminated -eq 0 && "${NFT_REQUEUE:-1}" != 0 && -n "$JOB_ID" ]]; then
    echo "[launch] requeueing job $JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1))); the trainer resumes from its last checkpoint"
    scontrol requeue "$JOB_ID"
fi
exit "$rc"
