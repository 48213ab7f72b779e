#!/usr/bin/env bash
# Several nodes with the DeepSpeed launcher (pdsh/ssh to every host of the hostfile):
#   launch/multi_node.sh HOSTFILE CONFIG.yaml [section.key=value ...]
# HOSTFILE lists one node per line with its process count, e.g.
#   gpu01 slots=8
#   gpu02 slots=8
# The first host is the master (MASTER_PORT, default 29500). Every node must see the same
# repository, Python environment and data paths. Under SLURM use slurm/submit instead.
# Python: $MEGASEQPE_PYTHON, else this repository's .venv, else python from PATH (launch/python.sh);
# the launcher starts the same interpreter on every node.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: launch/multi_node.sh HOSTFILE CONFIG.yaml [section.key=value ...]" >&2; exit 2; fi
HOSTFILE=$1; CONFIG=$2; shift 2
[ -f "$HOSTFILE" ] || { echo "launch/multi_node.sh: hostfile not found: $HOSTFILE" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$REPO/launch/python.sh"
PYTHON=$(megaseqpe_python "$REPO")
MASTER=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")
# The `deepspeed` command is this module; run through $PYTHON, it starts $PYTHON on every node.
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$MASTER" \
  --master_port "${MASTER_PORT:-29500}" --module megaseqpe.training --config "$CONFIG" "$@"
