#!/usr/bin/env bash
# Start a real Slurm on this one machine, without systemd: munged + slurmctld + two slurmd
# daemons for the virtual nodes n1, n2 (both 127.0.0.1, ports 17001-17002). Everything lives in
# $NFT_SLURM_DIR (default /tmp/nft-slurm); clients need `source $NFT_SLURM_DIR/env.sh`
# (exports SLURM_CONF). Undo with .ci/slurm_down.sh. Needs root and apt (Debian).
set -euo pipefail
DIR=${NFT_SLURM_DIR:-/tmp/nft-slurm}
HOST=$(hostname -s)
MARK="# nft-slurm-ci"

if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v sbatch > /dev/null \
        || ! command -v munged > /dev/null; then
    echo "[slurm_up] installing slurmctld slurmd slurm-client munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge > /dev/null
fi

if [[ -e "$DIR/slurm.conf" ]] && pgrep -F "$DIR/slurmctld.pid" > /dev/null 2>&1; then
    echo "[slurm_up] a cluster from $DIR is already running; run .ci/slurm_down.sh first" >&2
    exit 1
fi
rm -rf "$DIR"
mkdir -p "$DIR"/{state,log,spool/n1,spool/n2}

# munge: key (the Debian package normally creates one), socket dir, daemon as the munge user.
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
    echo "[slurm_up] munged already running"
else
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/munged.started"
    for _ in $(seq 50); do
        munge -n 2> /dev/null | unmunge > /dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge > /dev/null
fi

# node names must resolve: append to /etc/hosts in place (it may be a bind mount: no rename).
if ! getent hosts n1 > /dev/null || ! getent hosts n2 > /dev/null; then
    cp /etc/hosts "$DIR/hosts.orig"
    { cat "$DIR/hosts.orig"; echo "127.0.0.1 n1 n2 $MARK"; } > "$DIR/hosts.new"
    cp "$DIR/hosts.new" /etc/hosts
    touch "$DIR/hosts.added"
fi

cat > "$DIR/slurm.conf" <<CONF
ClusterName=nftci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=4
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[17001-17002] CPUs=2 State=UNKNOWN
PartitionName=ci Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
printf 'export SLURM_CONF=%q\n' "$DIR/slurm.conf" > "$DIR/env.sh"
export SLURM_CONF=$DIR/slurm.conf

/usr/sbin/slurmctld -i
/usr/sbin/slurmd -N n1
/usr/sbin/slurmd -N n2

for _ in $(seq 100); do
    if [[ $(sinfo -h -o '%t' 2> /dev/null | grep -c idle) -ge 1 ]] \
            && [[ $(sinfo -h -N -o '%N %t' 2> /dev/null | grep -c idle) -eq 2 ]]; then
        echo "[slurm_up] up: $(sinfo -h -N -o '%N=%t' | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"
        exit 0
    fi
    sleep 0.2
done
echo "[slurm_up] nodes did not become idle:" >&2
sinfo -N >&2 || true
tail -n 20 "$DIR"/log/*.log >&2 || true
exit 1
