#!/usr/bin/env bash
# Start a real SLURM cluster of two emulated nodes (node1, node2) on this machine.
#
#   sudo slurm/local-cluster/start.sh [STATE_DIR]     # default /tmp/megaseqpe-slurm
#   export SLURM_CONF=/tmp/megaseqpe-slurm/slurm.conf
#   sbatch --nodes=2 slurm/train.sbatch configs/demo.yaml
#   sudo slurm/local-cluster/stop.sh [STATE_DIR]
#
# Needs root and Debian's packages (installed when missing): slurmd slurmctld slurm-client munge.
# Both slurmd daemons run here with their own names and ports; srun -N2 puts one task on each.
set -euo pipefail
DIR=${1:-/tmp/megaseqpe-slurm}
HOST=$(hostname)

if [ "$(id -u)" != 0 ]; then echo "start.sh: must run as root (slurmd, munge)" >&2; exit 2; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmd slurmctld slurm-client munge >/dev/null
fi

mkdir -p "$DIR/state" "$DIR/spool"
chmod 755 "$DIR"
cat > "$DIR/slurm.conf" <<CONF
ClusterName=megaseqpe
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
SlurmdTimeout=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
NodeName=node1 NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17001 CPUs=2 State=UNKNOWN
NodeName=node2 NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17002 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$DIR/slurm.conf

grep -qE '^127\.0\.0\.1.*\bnode1\b' /etc/hosts || echo "127.0.0.1 node1 node2" >> /etc/hosts

# munge: one key, the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n >/dev/null 2>&1; then runuser -u munge -- munged --force; fi

pidalive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
pidalive "$DIR/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
for node in node1 node2; do pidalive "$DIR/slurmd-$node.pid" || slurmd -f "$SLURM_CONF" -N "$node"; done

for _ in $(seq 60); do
  if [ "$(sinfo -h -o '%T' -n node1,node2 2>/dev/null | grep -cE '^idle')" = 2 ] \
     || [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -c idle)" = 2 ]; then
    echo "SLURM cluster up: node1 node2 (export SLURM_CONF=$SLURM_CONF)"; exit 0
  fi
  sleep 1
done
echo "start.sh: nodes did not become idle; see $DIR/*.log" >&2
sinfo -N >&2 || true
exit 1
