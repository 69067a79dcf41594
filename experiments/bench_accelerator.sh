#!/usr/bin/env bash
# The accelerator benchmark on the lent GPU image, which has jax but no TensorFlow and reaches no
# package registry: installs the wheels carried in .whl/ (experiments/README.md says how to
# download them here) into a folder of its own with pip --no-index, then runs
# experiments/bench_accelerator.py against the reference made here, its log (log.txt) beside its
# results.json in $OUT (else runs/bench_accelerator), and stops it after 470 s at the latest.
#   On the device: bash experiments/bench_accelerator.sh
#     (carrying .whl and runs/accelerator_reference)
#   On a CPU (CI): OUT=DIR2 bash experiments/bench_accelerator.sh --small --reference DIR
# PYTHON picks the interpreter (default python3); SSD_JAX_WHEELS the wheel folder (default .whl;
# an empty one installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=${SSD_JAX_WHEELS:-.whl}
output=${OUT:-runs/bench_accelerator}
if compgen -G "$wheels/*.whl" > /dev/null; then
  site=$(mktemp -d /tmp/ssd_jax_site.XXXXXX)
  trap 'rm -rf "$site"' EXIT
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The device's memory for XLA: 90% rather than JAX's default 75% (the train section sizes its batch
# from it).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
mkdir -p "$output"
timeout 470 "$python" experiments/bench_accelerator.py --output "$output" "$@" 2>&1 |
  tee "$output/log.txt"
