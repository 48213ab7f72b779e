#!/usr/bin/env bash
# Stop the local test cluster started by start.sh: daemons by their pid files, never by name.
set -u
DIR=${1:-/tmp/megaseqpe-slurm}
for pidfile in "$DIR"/slurmd-node1.pid "$DIR"/slurmd-node2.pid "$DIR"/slurmctld.pid; do
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  fi
done
echo "SLURM cluster in $DIR stopped"
