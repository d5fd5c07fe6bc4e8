#!/usr/bin/env bash
# Start and stop a single-node SLURM cluster on this machine (Debian/Ubuntu, as root,
# no systemd needed), for trying runner.py before using a real cluster and for the
# end-to-end test in tests/test_slurm_e2e.py.
#
#   scripts/slurm-dev.sh up       install the packages if missing, start the daemons, wait for the node
#   scripts/slurm-dev.sh down     cancel the jobs, stop the daemons this script started
#   scripts/slurm-dev.sh status   which daemons run, and the node state
#
# Both are idempotent. The cluster differs from a production one only in being small and quick:
# a requeued job may start again after some 10 s (AuthInfo=cred_expire, sched_interval) instead
# of 2 minutes. Daemons are tracked by pid files in the state folder: `down` stops
# only those, so a munged or MariaDB that was already running is left alone.
#
# Environment:
#   SLURM_DEV_STATE  state folder: pid files, logs, spool (default /tmp/slurm-dev)
#   WITH_SACCT       1 (default): also run slurmdbd + MariaDB so that `sacct` works;
#                    0: no accounting. A failure setting accounting up is only a warning.
set -euo pipefail

STATE=${SLURM_DEV_STATE:-/tmp/slurm-dev}
WITH_SACCT=${WITH_SACCT:-1}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# Written by scripts/slurm-dev.sh; it will overwrite this file."
DB_PASS=slurm-dev
HOST=$(hostname -s)

log() { echo "slurm-dev: $*" >&2; }
die() { log "error: $*"; exit 1; }

# True when the pid file names a live process.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Wait up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
    local seconds=$1; shift
    for _ in $(seq "$((seconds * 4))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    return 1
}

# Refuse to overwrite a configuration this script did not write.
write_conf() {
    local path=$1 text=$2
    if [ -e "$path" ] && ! grep -qF "$MARK" "$path"; then
        die "$path exists and was not written by this script; move it away first"
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n%s\n' "$MARK" "$text" >"$path.tmp"
    mv "$path.tmp" "$path"
}

install_packages() {
    local packages=(slurmctld slurmd slurm-client munge)
    [ "$WITH_SACCT" = 1 ] && packages+=(slurmdbd mariadb-server)
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
    if munge -n </dev/null >/dev/null 2>&1; then return 0; fi  # already running, ours or not
    mkdir -p /run/munge "$STATE/munge"
    chown munge:munge /run/munge "$STATE/munge"
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid"
    wait_for 10 munge -n </dev/null || die "munged did not start"
}

start_mariadb() {
    if mysqladmin ping >/dev/null 2>&1; then return 0; fi  # already running, ours or not
    mkdir -p /run/mysqld "$STATE/mariadb"
    chown mysql:mysql /run/mysqld "$STATE/mariadb"
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    setsid mariadbd --user=mysql --pid-file="$STATE/mariadb/mariadbd.pid" \
        >"$STATE/mariadb.log" 2>&1 </dev/null &
    wait_for 30 mysqladmin ping || { log "MariaDB did not start, see $STATE/mariadb.log"; return 1; }
}

# slurmdbd on top of MariaDB, so that sacct works. Returns non-zero on failure.
start_accounting() {
    start_mariadb || return 1
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || return 1
    write_conf "$DBD_CONF" "AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db"
    chmod 600 "$DBD_CONF"
    alive "$STATE/slurmdbd.pid" || slurmdbd || return 1
    wait_for 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' || { log "slurmdbd is not listening, see $STATE/slurmdbd.log"; return 1; }
}

write_slurm_conf() {
    local accounting=$1 memory
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    local text="ClusterName=dev
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/linux
MinJobAge=300
KillWait=10
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log"
    if [ "$accounting" = 1 ]; then
        text+="
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
    fi
    text+="
NodeName=$HOST CPUs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    write_conf "$CONF" "$text"
}

node_ready() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

up() {
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons)"
    install_packages
    getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts
    mkdir -p "$STATE/ctld" "$STATE/d"
    start_munge
    local accounting=0
    if [ "$WITH_SACCT" = 1 ]; then
        if start_accounting; then accounting=1; else log "warning: accounting (sacct) is not available"; fi
    fi
    if ! alive "$STATE/slurmctld.pid"; then
        write_slurm_conf "$accounting"
        slurmctld
    fi
    alive "$STATE/slurmd.pid" || slurmd
    wait_for 60 node_ready || die "node $HOST did not become ready; see $STATE/slurmctld.log and $STATE/slurmd.log"
    log "up: $(sinfo -h -o '%P %D %T' | head -1); logs in $STATE"
}

# Stop the daemon whose pid file is $1, if it runs; wait for it to exit.
stop() {
    local pidfile=$1
    alive "$pidfile" || return 0
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    wait_for 20 bash -c "! kill -0 $pid" || { log "pid $pid ignored TERM, killing it"; kill -9 "$pid" 2>/dev/null || true; }
}

down() {
    if alive "$STATE/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086  # one id per word
            scancel $jobs || true
            # shellcheck disable=SC2016  # expanded by the inner bash, at each try
            wait_for 30 bash -c '[ -z "$(squeue -h -o %i)" ]' || log "warning: jobs still in the queue"
        fi
    fi
    stop "$STATE/slurmd.pid"
    stop "$STATE/slurmctld.pid"
    stop "$STATE/slurmdbd.pid"
    stop "$STATE/mariadb/mariadbd.pid"
    stop "$STATE/munge/munged.pid"
    log "down"
}

status() {
    for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid mariadb/mariadbd.pid munge/munged.pid; do
        if alive "$STATE/$pidfile"; then echo "running  $(basename "$pidfile" .pid)"; else echo "stopped  $(basename "$pidfile" .pid)"; fi
    done
    sinfo 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
