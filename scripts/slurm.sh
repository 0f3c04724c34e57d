#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the Slurm tests and CI (Debian/Ubuntu, root).
#
#   scripts/slurm.sh start               install (apt, if missing), start munged, slurmctld,
#                                        slurmd; wait until the node is idle; print the env
#   scripts/slurm.sh stop                stop what this script started (pid files only)
#   scripts/slurm.sh status              exit 0 only when the controller answers and the
#                                        node is up
#   scripts/slurm.sh env                 the environment a test needs (KEY=value lines)
#   scripts/slurm.sh stop-controller     stop slurmctld only (running jobs go on)
#   scripts/slurm.sh start-controller    start slurmctld again, keeping its job state
#   scripts/slurm.sh restart-controller  both
#
# Idempotent: `start` on a running cluster only prints the env; `stop` on a stopped one
# does nothing. No systemd and no cgroups: proctrack/linuxproc, task/none, accounting off.
# Everything (slurm.conf, state, logs, pid files) lives in one folder, $SLEAP_RTC_SLURM_DIR
# (default /tmp/sleap-rtc-slurm); the cluster listens on loopback only.
# A failure prints one line on stderr saying why, and exits 1.
set -euo pipefail

DIR="${SLEAP_RTC_SLURM_DIR:-/tmp/sleap-rtc-slurm}"
CONF="$DIR/slurm.conf"
PARTITION=debug
PACKAGES=(slurmctld slurmd slurm-client munge)
# Seconds each wait may take (node idle after start, a daemon's exit after SIGTERM).
START_WAIT_S="${SLEAP_RTC_SLURM_START_WAIT_S:-60}"
STOP_WAIT_S=20

die() { echo "slurm.sh: $*" >&2; exit 1; }
log() { echo "slurm.sh: $*" >&2; }

export SLURM_CONF="$CONF"

have_commands() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null
}

install_packages() {
    have_commands && return 0
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root (apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get here"
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # `apt-get update` only when the package lists do not know the packages yet.
    if ! apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1; then
        apt-get update -qq >&2 || die "apt-get update failed"
    fi
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2 ||
        die "apt-get install ${PACKAGES[*]} failed"
    have_commands || die "the packages were installed but slurmctld/slurmd/sbatch/munged are not on PATH"
}

# The pid in pid file $1 if that process is alive and its command is $2, else nothing.
live_pid() {
    local file="$1" name="$2" pid
    [ -s "$file" ] || return 1
    pid="$(tr -dc 0-9 <"$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    echo "$pid"
}

# Stop the process in pid file $1 (command $2): SIGTERM, then SIGKILL after STOP_WAIT_S.
stop_pid() {
    local file="$1" name="$2" pid i
    pid="$(live_pid "$file" "$name")" || { rm -f "$file"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        log "$name (pid $pid) did not stop in ${STOP_WAIT_S} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0
    [ -s /etc/munge/munge.key ] || {
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    runuser -u munge -- munged >&2 || die "munged did not start (see /var/log/munge/munged.log)"
    # munged writes its own pid file; remember that this script started it.
    cp /run/munge/munged.pid "$DIR/munged.pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do munge_works && return 0; sleep 0.1; done
    die "munged started but munge -n | unmunge fails"
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    # `slurmd -C` prints "NodeName=h CPUs=2 ... RealMemory=24105".
    local measured
    measured="$(slurmd -C 2>/dev/null | head -n 1)" || die "slurmd -C failed"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$measured")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$measured")"
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs and RealMemory from: slurmd -C: $measured"
    mem=$((mem * 95 / 100))
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm.sh: a single-node test cluster on loopback.
ClusterName=sleaprtc
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Finished jobs stay visible to squeue/scontrol this long (s), then "Invalid job id".
MinJobAge=300
# Short timeouts: commands give up on an unreachable controller sooner (tests of it).
MessageTimeout=5
SlurmctldTimeout=10
SlurmdTimeout=60
# Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of time.
KillWait=5
ReturnToService=2
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

controller_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# The node's state as sinfo prints it ("idle", "mixed", "down*", ...), or nothing.
node_state() { sinfo -h -N -o %T 2>/dev/null | head -n 1; }

node_up() {
    case "$(node_state)" in
        idle* | mix* | alloc* | completing*) return 0 ;;
        *) return 1 ;;
    esac
}

start_controller() {
    if ! live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        slurmctld -f "$CONF" >&2 || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
    fi
    local i
    for ((i = 0; i < START_WAIT_S * 10; i++)); do
        controller_answers && return 0
        sleep 0.1
    done
    die "slurmctld does not answer after ${START_WAIT_S} s (see $DIR/log/slurmctld.log)"
}

stop_controller() { stop_pid "$DIR/slurmctld.pid" slurmctld; }

print_env() {
    echo "SLEAP_RTC_SLURM=1"
    echo "SLURM_CONF=$CONF"
    echo "SLEAP_RTC_SLURM_DIR=$DIR"
    echo "SLEAP_RTC_SLURM_BIN=$(dirname "$(command -v sbatch)")"
    echo "SLEAP_RTC_SLURM_PARTITION=$PARTITION"
}

cmd_start() {
    if [ -s "$CONF" ] && controller_answers && node_up &&
        live_pid "$DIR/slurmd.pid" slurmd >/dev/null; then
        print_env
        return 0
    fi
    [ "$(uname -s)" = Linux ] || die "needs Linux (got $(uname -s))"
    install_packages
    mkdir -p "$DIR"
    chmod 0755 "$DIR"
    start_munge
    local fresh=0
    if ! live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null &&
        ! live_pid "$DIR/slurmd.pid" slurmd >/dev/null; then
        # A fresh cluster: no jobs left over from an earlier one. (With slurmd still
        # running only the controller was stopped: it comes back with its job state.)
        rm -rf "$DIR/state" "$DIR/spool"
        write_conf
        fresh=1
    fi
    [ -s "$CONF" ] || write_conf
    start_controller
    if ! live_pid "$DIR/slurmd.pid" slurmd >/dev/null; then
        slurmd -f "$CONF" >&2 || die "slurmd did not start (see $DIR/log/slurmd.log)"
    fi
    local i
    for ((i = 0; i < START_WAIT_S * 10; i++)); do
        if node_up; then
            print_env
            return 0
        fi
        # A node marked down by an earlier run (ReturnToService covers most cases).
        if [ "$fresh" = 0 ] && [ "$((i % 20))" = 19 ] && node_state | grep -q -E '^(down|drain)'; then
            scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.1
    done
    die "the node is not idle after ${START_WAIT_S} s (state: $(node_state); see $DIR/log/)"
}

cmd_stop() {
    # slurmd first (it tells the controller), both at once to save time.
    stop_pid "$DIR/slurmd.pid" slurmd &
    stop_pid "$DIR/slurmctld.pid" slurmctld &
    wait
    # munged only if this script started it (its pid is the one recorded then).
    if [ -s "$DIR/munged.pid" ]; then
        stop_pid "$DIR/munged.pid" munged
        rm -f /run/munge/munged.pid
    fi
}

cmd_status() {
    [ -s "$CONF" ] || { echo "slurm.sh: not started (no $CONF)" >&2; return 1; }
    controller_answers || { echo "slurm.sh: slurmctld does not answer" >&2; return 1; }
    node_up || { echo "slurm.sh: the node is not up (state: $(node_state))" >&2; return 1; }
    echo "up: $(sinfo -h -N -o '%N %T cpus=%c')"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) [ -s "$CONF" ] || die "not started (no $CONF)"; print_env ;;
    stop-controller) stop_controller ;;
    start-controller) [ -s "$CONF" ] || die "not started (no $CONF)"; start_controller ;;
    restart-controller) [ -s "$CONF" ] || die "not started (no $CONF)"; stop_controller; start_controller ;;
    *) die "usage: scripts/slurm.sh start|stop|status|env|stop-controller|start-controller|restart-controller" ;;
esac
