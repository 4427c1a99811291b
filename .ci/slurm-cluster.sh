#!/usr/bin/env bash
# A real two-node SLURM cluster on localhost, for `make test-cluster`:
#
#   .ci/slurm-cluster.sh start    # install slurm-wlm + munge if missing, start munged, slurmctld, slurmd n1 and n2
#   .ci/slurm-cluster.sh status   # the daemons and `sinfo`; exit 1 unless everything runs
#   .ci/slurm-cluster.sh stop     # cancel the cluster's jobs, stop exactly the daemons `start` started
#
# Everything (slurm.conf, state, spool, logs, pid files) lives in $SLURM_CLUSTER_DIR (default /tmp/gptframe-slurm);
# nothing is written to /etc/slurm and nothing is exported globally. `start` prints `export SLURM_CONF=...` on stdout
# and writes it to $SLURM_CLUSTER_DIR/env: callers `source` that file (or eval the output) before sbatch/squeue.
#
# Nodes n1 and n2 both run on 127.0.0.1 (slurmd ports $SLURM_CLUSTER_PORT+1, +2; slurmctld on $SLURM_CLUSTER_PORT,
# default 17000), 2 CPUs each: a job gets `--nodes=2 --ntasks-per-node=1 --cpus-per-task=1` on two "nodes" and two
# one-node jobs run side by side. Needs root (slurmd runs as root; munged and slurmctld drop to their users).
set -euo pipefail

DIR=${SLURM_CLUSTER_DIR:-/tmp/gptframe-slurm}
PORT=${SLURM_CLUSTER_PORT:-17000}
CPUS_PER_NODE=${SLURM_CLUSTER_CPUS:-2}
NODES=(n1 n2)
CONF=$DIR/slurm.conf
RUN=$DIR/run
MUNGE_PID=$DIR/munge/munged.pid  # present only when `start` started munged

log() { echo "[slurm-cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive PIDFILE NAME: the pid in PIDFILE is a live process (not a zombie) whose command is NAME (guards against
# reused pids).
pid_alive() {
  local pidfile=$1 name=$2 pid stat
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat == "$pid ($name) "* && ${stat#* ) } != Z* ]]
}

install_packages() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  for bin in slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || { missing+=(slurm-wlm); break; }
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $(id -u) -eq 0 ]] || die "slurm-wlm/munge are missing and installing them needs root"
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get -y -qq install "${missing[@]}" >"$DIR/apt.log" 2>&1; then
    apt-get -qq update >>"$DIR/apt.log" 2>&1
    apt-get -y -qq install "${missing[@]}" >>"$DIR/apt.log" 2>&1 || die "apt-get install failed, see $DIR/apt.log"
  fi
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    log "munged: already running (not ours; left alone by stop)"
    return
  fi
  local key=/etc/munge/munge.key
  if [[ ! -s $key ]]; then
    log "creating $key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$key"; else
      dd if=/dev/urandom bs=1 count=1024 of="$key" status=none; fi
    chown munge:munge /etc/munge "$key"
    chmod 700 /etc/munge
    chmod 400 "$key"
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  mkdir -p "$DIR/munge"
  chown munge:munge "$DIR/munge"
  chmod 700 "$DIR/munge"
  runuser -u munge -- munged --pid-file="$MUNGE_PID" --log-file="$DIR/munge/munged.log"
  for _ in $(seq 50); do munge_works && break; sleep 0.1; done
  munge_works || die "munged did not come up, see $DIR/munge/munged.log"
  log "munged: started (pid $(<"$MUNGE_PID"))"
}

write_conf() {
  cat >"$CONF" <<EOF
# Written by .ci/slurm-cluster.sh: two nodes on localhost.
ClusterName=gptframe
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s): 10 keeps preemption tests short.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Quick turnaround for tests: a scheduling pass right after submit/requeue, short kill waits.
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + 1)) CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

ctld_running() { pid_alive "$RUN/slurmctld.pid" slurmctld; }
slurmd_running() { pid_alive "$RUN/slurmd-$1.pid" slurmd; }

all_running() {
  ctld_running || return 1
  for node in "${NODES[@]}"; do slurmd_running "$node" || return 1; done
}

nodes_idle() {
  local states
  states=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
  [[ $(grep -cE '^n[12] (idle|mix|alloc)$' <<<"$states") -eq ${#NODES[@]} ]]
}

start() {
  mkdir -p "$DIR"/{state,log,run} "${NODES[@]/#/$DIR/spool/}"
  install_packages
  if all_running && nodes_idle; then
    log "already running ($CONF)"
  else
    start_munge
    write_conf
    chown -R slurm:slurm "$DIR/state" "$DIR/log"
    export SLURM_CONF=$CONF
    if ! ctld_running; then
      # -c: a fresh cluster, no jobs left over from an earlier start in this dir
      slurmctld -c -i
      log "slurmctld: started on port $PORT"
    fi
    for node in "${NODES[@]}"; do
      if ! slurmd_running "$node"; then
        slurmd -N "$node"
        log "slurmd $node: started on port $((PORT + ${node#n}))"
      fi
    done
    local waited=0
    until nodes_idle; do
      ((waited++ < 60)) || { tail -n 20 "$DIR"/log/*.log >&2; die "nodes not idle after 30 s (logs above, $DIR/log)"; }
      sleep 0.5
    done
    SLURM_CONF=$CONF sinfo -N >&2
  fi
  echo "export SLURM_CONF=$CONF" >"$DIR/env"
  echo "export SLURM_CONF=$CONF"
}

# stop_daemon PIDFILE NAME: SIGTERM, then SIGKILL after 15 s.
stop_daemon() {
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
  pid=$(<"$pidfile")
  kill "$pid"
  for _ in $(seq 150); do pid_alive "$pidfile" "$name" || break; sleep 0.1; done
  if pid_alive "$pidfile" "$name"; then log "$name ($pid) ignored SIGTERM, killing"; kill -KILL "$pid"; fi
  rm -f "$pidfile"
  log "stopped $name ($pid)"
}

stop() {
  [[ -d $DIR ]] || { log "nothing to stop ($DIR does not exist)"; return; }
  export SLURM_CONF=$CONF
  if ctld_running; then
    # Jobs first: their processes belong to slurmstepd, which outlives slurmd.
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      log "cancelling jobs: $(echo $jobs)"
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 60); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.5; done
    fi
  fi
  for node in "${NODES[@]}"; do stop_daemon "$RUN/slurmd-$node.pid" slurmd; done
  stop_daemon "$RUN/slurmctld.pid" slurmctld
  stop_daemon "$MUNGE_PID" munged
}

status() {
  local ok=0
  if ctld_running; then log "slurmctld: running (pid $(<"$RUN/slurmctld.pid"))"; else log "slurmctld: not running"; ok=1; fi
  for node in "${NODES[@]}"; do
    if slurmd_running "$node"; then log "slurmd $node: running (pid $(<"$RUN/slurmd-$node.pid"))"
    else log "slurmd $node: not running"; ok=1; fi
  done
  if munge_works; then log "munged: running"; else log "munged: not running"; ok=1; fi
  if [[ $ok -eq 0 ]]; then SLURM_CONF=$CONF sinfo -N >&2; fi
  return $ok
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status   (state in \$SLURM_CLUSTER_DIR, default /tmp/gptframe-slurm)" >&2; exit 2 ;;
esac
