#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian's slurm-wlm + munge), for the Slurm
# tests and for trying `genre-train -m hydra/launcher=slurm` before using a real cluster.
#
#   scripts/slurm-local.sh up      install slurm-wlm and munge with apt if missing, write a minimal
#                                  slurm.conf, start munged, slurmctld and slurmd, wait for an idle node
#   scripts/slurm-local.sh down    stop the daemons that `up` started
#   scripts/slurm-local.sh status  sinfo and squeue
#
# Needs root (apt, daemons). It never overwrites a slurm.conf it did not write itself.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by genre-lightning scripts/slurm-local.sh"
SPOOL=/var/spool/slurm-local
LOGS=/var/log/slurm-local
PIDS=/run/slurm-local
NODE=localhost
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

say() { echo "slurm-local: $*"; }
die() {
    echo "slurm-local: error: $*" >&2
    exit 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
        command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "installing slurm-wlm and munge needs root (apt-get)"
    say "installing slurm-wlm and munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    local cpus mem_mb
    cpus=$(nproc)
    # 90% of the memory, so slurmd never finds less than configured and drains the node.
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$(dirname "$CONF")" "$SPOOL/ctld" "$SPOOL/d" "$LOGS" "$PIDS"
    cat >"$CONF" <<EOF
$MARK
ClusterName=genre-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups in a container: track processes by parent id, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd, so no sacct: submitit then learns that a job ended from its result file.
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
# Short waits, so requeued and finished jobs free the node quickly.
KillWait=5
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    say "wrote $CONF (node $NODE: $cpus CPUs, $mem_mb MB)"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -f /etc/munge/munge.key ]; then
        runuser -u munge -- mungekey --create
    fi
    runuser -u munge -- /usr/sbin/munged
    say "started munged"
}

start_slurm() {
    if ! running "$PIDS/slurmctld.pid"; then
        slurmctld
        say "started slurmctld"
    fi
    if ! running "$PIDS/slurmd.pid"; then
        slurmd -N "$NODE"
        say "started slurmd"
    fi
}

wait_idle() {
    local state=""
    for _ in $(seq "$WAIT_S"); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case "$state" in
        idle | mixed | allocated)
            say "node $NODE is $state"
            sinfo
            return
            ;;
        down* | drain*)
            # A node that was down when the controller started (e.g. after a restart) comes back.
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
            ;;
        esac
        sleep 1
    done
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    die "node $NODE not idle after ${WAIT_S}s (state: '${state:-no answer}'); logs in $LOGS"
}

stop_daemon() {
    local name=$1 pidfile=$2 pid
    running "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 60); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "stopped $name"
            return
        fi
        sleep 0.5
    done
    die "$name (pid $pid) still running 30s after SIGTERM"
}

case "${1:-}" in
up)
    install_packages
    write_conf
    start_munge
    start_slurm
    wait_idle
    ;;
down)
    stop_daemon slurmd "$PIDS/slurmd.pid"
    stop_daemon slurmctld "$PIDS/slurmctld.pid"
    stop_daemon munged /run/munge/munged.pid
    ;;
status)
    sinfo
    squeue
    ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
