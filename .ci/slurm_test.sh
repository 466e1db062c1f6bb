#!/usr/bin/env bash
# Slurm integration test on one machine: start a real 2-node Slurm (.ci/slurm_up.sh), then
#   1. rendezvous: slurm/nft_tiny.sh with NFT_MODULE=megatron_nft.dist_smoke; the log must show
#      node_rank 0 and 1 from SLURM_NODEID, world 2 and a correct all-reduce on both ranks;
#   2. time limit: SIGUSR1 to the batch shell (what --signal=B:USR1@N does) must reach the
#      ranks on both nodes, which "checkpoint" and exit 0, and the job must requeue itself and
#      finish on the restart;
#   3. trainer: slurm/nft_tiny.sh --set train.max_steps=2 ... (the real NFT trainer, 2 ranks);
#      NFT_SLURM_TRAINER=0 skips it; extra args for it come from NFT_SLURM_TRAINER_ARGS.
# Always tears Slurm down (trap EXIT); exits non-zero on any failure. Logs: logs/ci-slurm-*.
set -euo pipefail
cd "$(dirname "$0")/.."
export NFT_SLURM_DIR=${NFT_SLURM_DIR:-/tmp/nft-slurm}
trap 'bash .ci/slurm_down.sh' EXIT
t_start=$(date +%s)
bash .ci/slurm_up.sh
# shellcheck source=/dev/null
source "$NFT_SLURM_DIR/env.sh"
mkdir -p logs
export OMP_NUM_THREADS=1

fail() {
    echo "[slurm_test] FAIL: $*" >&2
    for f in "${log:-}" "$NFT_SLURM_DIR"/log/slurmctld.log; do
        if [[ -n "$f" && -e "$f" ]]; then echo "----- $f (tail)" >&2; tail -n 60 "$f" >&2; fi
    done
    exit 1
}
need() {  # need COUNT PATTERN: the job log has at least COUNT lines matching PATTERN
    local n
    n=$(grep -c -E -- "$2" "$log" || true)
    [[ $n -ge $1 ]] || fail "expected >= $1 line(s) matching '$2' in $log, found $n"
}
job_state() {
    scontrol show job "$1" -o 2> /dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true
}
wait_job() {  # wait_job ID TIMEOUT: until the job leaves the queue; prints its last state
    local last="" s
    for _ in $(seq "$2"); do
        s=$(job_state "$1")
        [[ -z "$s" ]] && break
        last=$s
        sleep 1
    done
    echo "$last"
}

# 1. rendezvous ------------------------------------------------------------------------------
log=logs/ci-slurm-smoke.out
rm -f "$log"
t0=$(date +%s)
NFT_MODULE=megatron_nft.dist_smoke sbatch --wait --output="$log" slurm/nft_tiny.sh \
    || fail "rendezvous job failed (sbatch --wait exit $?)"
need 1 '^0: \[launch\] node_rank=0 nnodes=2'
need 1 '^1: \[launch\] node_rank=1 nnodes=2'
need 1 '\[dist_smoke\] world 2 '
need 2 '\[dist_smoke\] rank [01]/2 .* all_reduce 3 \(expect 3\) OK'
need 1 'rank 0/2 .*node_id 0 '
need 1 'rank 1/2 .*node_id 1 '
echo "[slurm_test] 1/3 rendezvous OK ($(($(date +%s) - t0)) s):"
grep -E '\[launch\] node_rank=|\[dist_smoke\]' "$log" | sed 's/^/    /'

# 2. SIGUSR1 -> checkpoint -> requeue -> resume ------------------------------------------------
log=logs/ci-slurm-requeue.out
rm -f "$log"
t0=$(date +%s)
jid=$(NFT_MODULE=megatron_nft.dist_smoke sbatch --parsable --output="$log" slurm/nft_tiny.sh \
      --wait-for-signal 180)
for _ in $(seq 180); do
    [[ $(grep -c 'waiting for SIGUSR1' "$log" 2> /dev/null || true) -ge 2 ]] && break
    [[ -z "$(job_state "$jid")" ]] && fail "job $jid ended before both ranks were up"
    sleep 1
done
need 2 'waiting for SIGUSR1'
scancel --batch --signal=USR1 "$jid"   # what `#SBATCH --signal=B:USR1@300` does near the limit
for _ in $(seq 120); do
    grep -q 'requeueing job' "$log" && break
    sleep 1
done
need 1 'requeueing job'
# Skip Slurm's requeue hold (BeginTime = now + 120 s) in CI. Not at once: slurmd revokes the old
# run's credential and a relaunch within the same second is refused ("Job credential revoked").
for _ in $(seq 30); do
    if [[ "$(job_state "$jid")" == PENDING ]]; then
        sleep 3
        scontrol update JobId="$jid" StartTime=now
        break
    fi
    sleep 1
done
state=$(wait_job "$jid" 240)
[[ "$state" == COMPLETED ]] || fail "requeued job $jid ended in state '${state:-unknown}'"
need 2 'got SIGUSR1 \(local True\)'
need 2 'resumed after requeue \(restart 1\)'
echo "[slurm_test] 2/3 SIGUSR1 -> checkpoint -> requeue -> resume OK ($(($(date +%s) - t0)) s):"
grep -E 'SIGUSR1|requeue|restart 1' "$log" | sed 's/^/    /'

# 3. the real trainer on 2 nodes ---------------------------------------------------------------
if [[ "${NFT_SLURM_TRAINER:-1}" != 0 ]]; then
    log=logs/ci-slurm-train.out
    rm -f "$log"
    out=$(mktemp -d /tmp/nft-slurm-train.XXXXXX)
    t0=$(date +%s)
    # small eval set and one refill round keep this CPU run short; override with NFT_SLURM_TRAINER_ARGS
    read -r -a extra <<< "${NFT_SLURM_TRAINER_ARGS:---set data.eval_size=16 --set rollout.max_refill_rounds=1}"
    sbatch --wait --output="$log" slurm/nft_tiny.sh --set train.max_steps=2 \
        --set "output.dir=$out" "${extra[@]}" || fail "trainer job failed (sbatch --wait exit $?)"
    need 1 '^0: \[launch\] node_rank=0 nnodes=2'
    need 1 '^1: \[launch\] node_rank=1 nnodes=2'
    need 1 '\[nft\] world 2 '
    echo "[slurm_test] 3/3 trainer on 2 nodes OK ($(($(date +%s) - t0)) s):"
    grep -E '\[launch\] node_rank=|\[nft\] world' "$log" | sed 's/^/    /'
    rm -rf "$out"
else
    echo "[slurm_test] 3/3 trainer skipped (NFT_SLURM_TRAINER=0)"
fi
echo "[slurm_test] PASS in $(($(date +%s) - t_start)) s"
