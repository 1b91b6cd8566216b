#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests of profiles/slurm with real sbatch,
# squeue and srun. Needs root and either the SLURM and MUNGE packages or apt-get to install
# them (Debian/Ubuntu: munge slurmctld slurmd slurm-client).
#
#   tests/slurm_cluster.sh install      # installs the packages if a command is missing
#   tests/slurm_cluster.sh start        # (installs, then) prints its state folder on the last line
#   tests/slurm_cluster.sh stop DIR     # cancels its jobs, stops its daemons, removes its files
#
# `start` runs munged (as the munge user, on its own socket and key), slurmctld and slurmd in
# the foreground of their own sessions and records their PIDs under the state folder; `stop`
# ends exactly those PIDs. The SLURM configuration is written to /etc/slurm/slurm.conf, the
# location every SLURM command reads by default: snakemake-executor-plugin-slurm removes
# SLURM_CONF from the environment of the srun it runs inside each job, so a configuration
# elsewhere would not be found there. A slurm.conf that this script did not write is never
# touched: `start` refuses to run instead. Everything else lives in the state folder.
#
# Exit status: 0 done; 77 SLURM cannot be run here (the reason is on stderr); 1 failed.
set -euo pipefail
# Every SLURM command here talks to this cluster only, through the default configuration path.
unset SLURM_CONF SLURM_CLUSTERS

CONF=/etc/slurm/slurm.conf
MARK="# Written by hcsflow tests/slurm_cluster.sh"
PARTITION=hcsflow # tests/test_slurm_cluster.py submits to it
MIN_MEM_MB=16000 # the rules ask for up to 8000 MB; memory is not enforced here
MIN_CPUS=2       # several rules declare two threads

cannot() {
  echo "slurm_cluster.sh: $*" >&2
  exit 77
}

fail() {
  echo "slurm_cluster.sh: $*" >&2
  exit 1
}

need_commands() {
  local c
  for c in munged slurmctld slurmd sbatch squeue scontrol scancel sinfo setpriv; do
    command -v "$c" >/dev/null 2>&1 || return 1
  done
}

install_packages() {
  need_commands && return 0
  [ "$(id -u)" -eq 0 ] || cannot "SLURM is not installed and installing it needs root"
  command -v apt-get >/dev/null 2>&1 || cannot "SLURM is not installed and there is no apt-get"
  local pkgs=(munge slurmctld slurmd slurm-client)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
      cannot "apt-get could not install ${pkgs[*]}"
  fi
  need_commands || cannot "${pkgs[*]} installed, but a SLURM or MUNGE command is still missing"
}

# A PID recorded under the state folder that still runs the named program (not a zombie).
# Right after the start it may still be setsid or setpriv, which then exec the daemon.
alive() {
  local pid=$1 name=$2 comm state
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case $comm in
  "$name" | setsid | setpriv) ;;
  *) return 1 ;;
  esac
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

stop_daemon() {
  local state=$1 name=$2 pidfile="$1/pids/$2" pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
      alive "$pid" "$name" || break
      sleep 0.2
    done
    if alive "$pid" "$name"; then
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidfile"
}

stop() {
  local state=${1:?usage: slurm_cluster.sh stop DIR}
  [ -d "$state/pids" ] || fail "$state is not a state folder of slurm_cluster.sh"
  local i
  # Cancel the cluster's jobs first, so that no job step outlives slurmd (only while the
  # configuration is this cluster's, so that no other cluster's jobs can be touched).
  if [ -f "$state/pids/slurmctld" ] && alive "$(cat "$state/pids/slurmctld")" slurmctld &&
    head -1 "$CONF" 2>/dev/null | grep -qF "(state in $state)"; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for i in $(seq 50); do
        [ -z "$(squeue -h -t PD,R,CG,S -o %A 2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
  fi
  stop_daemon "$state" slurmd
  stop_daemon "$state" slurmctld
  stop_daemon "$state" munged
  if [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK"; then
    rm -f "$CONF"
  fi
  if [ -f "$state/created_etc_slurm" ]; then
    rmdir /etc/slurm 2>/dev/null || true
  fi
  rm -rf "$state"
}

node_line() {
  # The node as slurmd sees it, with at least MIN_CPUS CPUs and MIN_MEM_MB of memory declared;
  # SlurmdParameters=config_overrides keeps a node that has less in service.
  local host=$1 line cpus mem
  line=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$line")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
  [ -n "$cpus" ] && [ -n "$mem" ] || fail "cannot read the node from 'slurmd -C': $line"
  if [ "$cpus" -lt "$MIN_CPUS" ]; then
    line="NodeName=$host CPUs=$MIN_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$MIN_CPUS"
    line+=" ThreadsPerCore=1 RealMemory=$mem"
  fi
  [ "$mem" -ge "$MIN_MEM_MB" ] || line=${line/RealMemory=$mem/RealMemory=$MIN_MEM_MB}
  line=${line/NodeName=* CPUs=/NodeName=$host CPUs=}
  echo "$line NodeAddr=127.0.0.1 State=UNKNOWN"
}

write_conf() {
  local state=$1 host=$2
  cat >"$CONF" <<EOF
$MARK (state in $state); its stop command removes it.
ClusterName=hcsflowtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
# squeue reports finished jobs for MinJobAge seconds: keep it well above the status interval.
MinJobAge=600
$(node_line "$host")
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  [ "$(id -u)" -eq 0 ] || cannot "a test SLURM cluster needs root (munged, slurmd and /etc/slurm)"
  install_packages
  id munge >/dev/null 2>&1 || cannot "there is no munge user (is the munge package installed?)"
  if [ -e "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    cannot "$CONF exists and was not written by this script; it is left alone"
  fi
  if [ -e "$CONF" ]; then
    # A cluster started earlier and never stopped: stop it first.
    local old
    old=$(head -1 "$CONF" | sed -n 's/.*(state in \(.*\)); .*/\1/p')
    if [ -n "$old" ] && [ -d "$old/pids" ]; then
      echo "slurm_cluster.sh: stopping the cluster left running in $old" >&2
      stop "$old"
    fi
    rm -f "$CONF"
  fi
  local state host i
  state=$(mktemp -d "${TMPDIR:-/tmp}/hcsflow-slurm.XXXXXX")
  STARTING=$state
  chmod 755 "$state"
  mkdir -p "$state/pids" "$state/ctld" "$state/spool" "$state/log" "$state/munge"
  # Undo whatever was started if a later step fails.
  trap 'rc=$?; [ $rc -eq 0 ] || stop "$STARTING"; exit $rc' EXIT
  [ -d /etc/slurm ] || { mkdir -p /etc/slurm && touch "$state/created_etc_slurm"; }
  chown munge:munge "$state/munge"
  local as_munge=(setpriv --reuid=munge --regid=munge --init-groups)
  if command -v mungekey >/dev/null 2>&1; then
    "${as_munge[@]}" mungekey --create --keyfile="$state/munge/munge.key"
  else
    "${as_munge[@]}" dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$state/munge/munge.key"
  fi
  # munged refuses to run as root; it runs as the munge user on this cluster's own socket.
  setsid "${as_munge[@]}" munged --foreground --socket="$state/munge/munge.socket" \
    --key-file="$state/munge/munge.key" --pid-file="$state/munge/munged.pid" \
    --seed-file="$state/munge/munged.seed" --log-file="$state/log/munged.log" \
    </dev/null >"$state/log/munged.out" 2>&1 &
  echo $! >"$state/pids/munged"
  for i in $(seq 100); do
    [ -S "$state/munge/munge.socket" ] && break
    alive "$(cat "$state/pids/munged")" munged || fail "munged stopped: $(tail -3 "$state/log/munged.out")"
    sleep 0.1
  done
  [ -S "$state/munge/munge.socket" ] || fail "munged did not create its socket"
  host=$(hostname -s)
  write_conf "$state" "$host"
  setsid slurmctld -D -c -i </dev/null >"$state/log/slurmctld.out" 2>&1 &
  echo $! >"$state/pids/slurmctld"
  setsid slurmd -D -c </dev/null >"$state/log/slurmd.out" 2>&1 &
  echo $! >"$state/pids/slurmd"
  for i in $(seq 300); do
    if [ "$(sinfo -h -p "$PARTITION" -o %T 2>/dev/null)" = idle ]; then
      trap - EXIT
      echo "$state"
      return 0
    fi
    alive "$(cat "$state/pids/slurmctld")" slurmctld ||
      fail "slurmctld stopped: $(tail -5 "$state/log/slurmctld.out" "$state/log/slurmctld.log" 2>&1)"
    alive "$(cat "$state/pids/slurmd")" slurmd ||
      fail "slurmd stopped: $(tail -5 "$state/log/slurmd.out" "$state/log/slurmd.log" 2>&1)"
    sleep 0.2
  done
  fail "the node did not become idle within 60 s: $(sinfo -N -l 2>&1 | tail -2)"
}

case "${1:-}" in
install) install_packages ;;
start) start ;;
stop) stop "${2:-}" ;;
*)
  echo "usage: $0 install | start | stop DIR" >&2
  exit 2
  ;;
esac
