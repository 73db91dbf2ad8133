#!/usr/bin/env bash
# The GPU check of the fast data pipeline, in one prepared run (about 3-5 minutes on one
# H100/H200 with 16 cores; generates its own data under /tmp, needs no network).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#
# Prints every figure; writes them as JSON to $OUT/gpu_check.json when OUT is set (the
# device tool's output folder), else to /tmp/gpu_check.json. Record them, with the card and
# the date it prints, in benchmarks/RESULTS.md. Extra arguments go to pipeline_gpu.py
# (e.g. --skip parity, --res 128).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"    # fixres from this working tree, not installed
PY="${PYTHON:-python3}"
"$PY" -c "import fixres, timm, torchvision; print('fixres', fixres.__version__, '| timm', timm.__version__, '| torchvision', torchvision.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
echo "cores: $(nproc)  date: $(date -u +%Y-%m-%dT%H:%MZ)"
OUT_JSON="${OUT:-/tmp}/gpu_check.json"
set -o pipefail
"$PY" benchmarks/pipeline_gpu.py --json "$OUT_JSON" "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
echo "figures: $OUT_JSON"
