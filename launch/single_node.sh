#!/usr/bin/env bash
# One node, N processes (GPUs, or CPU processes with gloo):
#   launch/single_node.sh NPROC CONFIG.yaml [section.key=value ...]
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: launch/single_node.sh NPROC CONFIG.yaml [section.key=value ...]" >&2; exit 2; fi
NPROC=$1; CONFIG=$2; shift 2
PYTHON=${MEGASEQPE_PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  -m megaseqpe.training --config "$CONFIG" "$@"
