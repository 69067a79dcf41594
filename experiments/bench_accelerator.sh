#!/usr/bin/env bash
# The accelerator benchmark from a checkout: installs ssd_jax with its `gpu` extra (jax[cuda13])
# into the active Python environment, then runs experiments/bench_accelerator.py with the given
# flags. SSD_JAX_BENCH_INSTALL=0 skips the install (JAX already sees the accelerator, or CI's
# `--small` run on a CPU).
#   python3 -m venv /tmp/ssd_gpu && . /tmp/ssd_gpu/bin/activate && experiments/bench_accelerator.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [[ "${SSD_JAX_BENCH_INSTALL:-1}" != 0 ]]; then
  "$python" -m pip install --quiet -e ".[gpu]"
fi
exec "$python" experiments/bench_accelerator.py "$@"
