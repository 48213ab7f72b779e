#!/usr/bin/env bash
# One node, N processes (GPUs, or CPU processes with gloo):
#   launch/single_node.sh NPROC CONFIG.yaml [section.key=value ...]
# Python: $MEGASEQPE_PYTHON, else this repository's .venv, else python from PATH (launch/python.sh).
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: launch/single_node.sh NPROC CONFIG.yaml [section.key=value ...]" >&2; exit 2; fi
NPROC=$1; CONFIG=$2; shift 2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$REPO/launch/python.sh"
PYTHON=$(megaseqpe_python "$REPO")
# exec keeps this shell's pid for torchrun, the ranks' parent: they check it is still there when
# they arm their exit-with-the-launcher signal (megaseqpe/training/lifecycle.py).
export MEGASEQPE_LAUNCHER_PID=$$
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  -m megaseqpe.training --config "$CONFIG" "$@"
