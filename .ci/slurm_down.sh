#!/usr/bin/env bash
# Tear down what .ci/slurm_up.sh started (only that): slurmctld + slurmds, munged if it was
# started by slurm_up, the /etc/hosts line. Safe to run twice or after a failed start.
set -uo pipefail
DIR=${NFT_SLURM_DIR:-/tmp/nft-slurm}
MARK="# nft-slurm-ci"
[[ -d "$DIR" ]] || exit 0
export SLURM_CONF=$DIR/slurm.conf

if [[ -e "$SLURM_CONF" ]]; then
    scancel --quiet --user=root > /dev/null 2>&1 || true
    scontrol shutdown > /dev/null 2>&1 || true
fi
pidfiles=("$DIR/slurmctld.pid" "$DIR/slurmd.n1.pid" "$DIR/slurmd.n2.pid")
for _ in $(seq 50); do
    alive=0
    for f in "${pidfiles[@]}"; do
        if [[ -s "$f" ]] && kill -0 "$(cat "$f")" 2> /dev/null; then alive=1; fi
    done
    [[ $alive -eq 0 ]] && break
    sleep 0.2
done
for f in "${pidfiles[@]}"; do  # still there after 10 s: end them by their pid
    if [[ -s "$f" ]] && kill -0 "$(cat "$f")" 2> /dev/null; then kill -9 "$(cat "$f")" 2> /dev/null || true; fi
done

if [[ -e "$DIR/munged.started" ]]; then
    /usr/sbin/munged --stop > /dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged --stop > /dev/null 2>&1 || true
fi
if [[ -e "$DIR/hosts.added" ]]; then
    grep -v -- "$MARK" /etc/hosts > "$DIR/hosts.restored" || true
    cp "$DIR/hosts.restored" /etc/hosts
fi
if [[ -z "${NFT_SLURM_KEEP:-}" ]]; then
    rm -rf "$DIR"
fi
echo "[slurm_down] done"
