#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py) on a bare GPU machine that has torch, Lightning, timm, torchmetrics and
# TensorBoard but not Hydra: here, once, `make gpu-wheels` puts Hydra's wheels (Python 3.12) into .whl/; there,
# with .whl carried along: bash scripts/gpu_check.sh [gpu_check.py options]. Results go to $OUT (the device
# tool's return folder) when it is set, else outputs/gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: Hydra is not installed and .whl/ has no wheels: run 'make gpu-wheels' and carry .whl" >&2
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# the data and the runs (gigabytes) stay on the machine: only the results come back in $OUT
exec python3 scripts/gpu_check.py --out "${OUT:-outputs/gpu_check}" --work "${TMPDIR:-/tmp}/vitlab_gpu_check" "$@"
