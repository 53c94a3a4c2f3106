#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the project's SLURM test and for trying the
# `snakemake --profile slurm` path without a cluster. Debian packages; needs root.
#
#   tools/local-slurm.sh install   apt-get install slurmctld slurmd slurm-client munge
#   tools/local-slurm.sh start     write /etc/slurm/{slurm,gres}.conf, start munged, slurmd, slurmctld
#   tools/local-slurm.sh stop      stop the daemons this script started (by their pid files)
#   tools/local-slurm.sh status    exit 0 when the node accepts jobs
#
# The node has one fake GPU (GRES gpu:1 backed by /dev/fakegpu0), so jobs asking --gpus=1 are
# scheduled and counted. No slurmdbd: Snakemake's plugin must use `--slurm-status-command squeue`,
# and MinJobAge is large so finished jobs stay visible to squeue.
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/var/tmp/heatedasc-slurm}
MARK="# written by heatedasc tools/local-slurm.sh"
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf

die() { echo "local-slurm: $*" >&2; exit 1; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing SLURM needs root (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to overwrite a real cluster config"
  fi
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$STATE/log"
  [ -e /dev/fakegpu0 ] || mknod /dev/fakegpu0 c 1 3
  cat > "$CONF" <<CONF
$MARK
ClusterName=local
SlurmctldHost=localhost
NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
CONF
  cat > "$GRES" <<CONF
$MARK
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/fakegpu0
CONF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || die "starting SLURM daemons needs root"
  install
  write_config
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
  mkdir -p "$STATE/munge" && chown munge:munge "$STATE/munge"
  if ! alive "$STATE/munge/munged.pid"; then
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --force
  fi
  alive "$STATE/slurmd.pid" || slurmd -N localhost
  alive "$STATE/slurmctld.pid" || slurmctld
  for _ in $(seq 60); do
    if status; then echo "local-slurm: node localhost is up (state in $STATE)"; return 0; fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  die "SLURM did not come up; logs in $STATE/log"
}

status() {
  sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

stop() {
  local f
  for f in slurmctld.pid slurmd.pid munge/munged.pid; do
    if alive "$STATE/$f"; then
      kill "$(cat "$STATE/$f")" 2>/dev/null || true
    fi
  done
  for _ in $(seq 20); do
    alive "$STATE/slurmctld.pid" || alive "$STATE/slurmd.pid" || break
    sleep 0.5
  done
  rm -f "$STATE"/*.pid "$STATE"/munge/*.pid
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
