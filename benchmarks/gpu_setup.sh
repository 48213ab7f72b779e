#!/bin/sh
# `make bench-gpu`: benchmarks/gpu.py on a lent GPU machine, which has python3 with torch but no venv,
# no `make install` and no network. Wheels carried in .whl (`make gpu-wheels` here, then the device
# run's carry [".whl"]) go to /tmp/site; the repo itself is imported from the checkout. Arguments go to
# gpu.py. With $OUT set (the device machine), the results and the refreshed report are copied there.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
# Stopped in time for the copy below: a device command is killed at 600 s, and this script's output
# only comes back if it ends first. gpu.py rewrites its JSON after every part, so a stop keeps them.
timeout "${GPU_BENCH_TIMEOUT:-560}" "$PY" benchmarks/gpu.py "$@"
status=$?
# The report is refreshed even after a failed part: gpu.json holds what was measured.
"$PY" benchmarks/report.py || echo "benchmarks/report.py failed: the measurements are in the JSON gpu.py wrote" >&2
if [ -n "${OUT:-}" ]; then
    for file in benchmarks/results/gpu.json benchmarks/runs/gpu-smoke.json benchmarks/REPORT.md; do
        [ -f "$file" ] && cp "$file" "$OUT"/ && echo "copied $file to $OUT"
    done
fi
exit $status
