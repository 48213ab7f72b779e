# Sourced by launch/*.sh and slurm/train.sbatch: which Python runs megaseqpe.
#
#   PYTHON=$(megaseqpe_python REPO)
#
# $MEGASEQPE_PYTHON if set, else REPO/.venv/bin/python (the environment `make install` builds),
# else `python` from PATH. The choice and its reason go to stderr, so a job's log shows the
# environment that ran it.
megaseqpe_python() {
  local venv=${1:+$1/.venv/bin/python}
  if [ -n "${MEGASEQPE_PYTHON:-}" ]; then
    echo "megaseqpe: python $MEGASEQPE_PYTHON (MEGASEQPE_PYTHON)" >&2
    echo "$MEGASEQPE_PYTHON"
  elif [ -n "$venv" ] && [ -x "$venv" ]; then
    echo "megaseqpe: python $venv (the repository's environment)" >&2
    echo "$venv"
  else
    echo "megaseqpe: no ${venv:-repository .venv} here: python from PATH ($(command -v python || echo 'not found'))" >&2
    echo python
  fi
}
