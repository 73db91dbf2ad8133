#!/usr/bin/env bash
# Every GPU check of fixres in one prepared run (about 5-7 minutes on one H100/H200 with 16
# cores; generates its own data under /tmp, needs no network):
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#
# 1. the tests that need a CUDA GPU (nvJPEG path) and the fast-pipeline tests on that machine;
# 2. benchmarks/pipeline_gpu.py: training and sweep throughput (fast pipeline / on-device
#    synthetic tensors / the usual torchvision DataLoader) and pixel + top-1 parity;
# 3. the CLI end to end on the GPU: sweep, adapt (FixRes), eval of the adapted checkpoint;
# 4. `fixres train --compile` for one epoch.
# Each step runs even if an earlier one failed; the exit status says whether all passed.
# Figures go to $OUT/gpu_check.json and logs to $OUT/*.log when OUT is set (the device
# tool's output folder), else to /tmp. Record them, with the card and the date it prints,
# in benchmarks/RESULTS.md. Extra arguments go to pipeline_gpu.py (e.g. --skip parity).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"    # fixres from this working tree, not installed
PY="${PYTHON:-python3}"
O="${OUT:-/tmp}"
W="${BENCH_DIR:-/tmp/fixres-bench-gpu}"
DEV="${DEVICE:-cuda}"    # DEVICE=cpu with --smoke: a rehearsal of every step on a CPU
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, time, remember a failure, go on
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name ($(date -u +%H:%M:%S))"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$O/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" = 0 ] || status=1
}
"$PY" -c "import fixres, timm, torch, torchvision; print('fixres', fixres.__version__, '| torch', torch.__version__, '| timm', timm.__version__, '| torchvision', torchvision.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
echo "cores: $(nproc)  date: $(date -u +%Y-%m-%dT%H:%MZ)"

step tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_pipeline.py tests/test_pack.py
step bench 280 "$PY" benchmarks/pipeline_gpu.py --device "$DEV" --data "$W" --json "$O/gpu_check.json" "$@"
# 3. on the checkpoint that step 2's parity trained on the embedded dataset (resnet18 at 64 px)
rm -rf "$W/sweep" "$W/adapted"
step sweep 45 "$PY" -m fixres sweep --checkpoint "$W/run" --data "$W/synth" --test-res 64:128:16 --device "$DEV" --quiet --out "$W/sweep"
step adapt 60 "$PY" -m fixres adapt --checkpoint "$W/run" --data "$W/synth" --test-res 96 --epochs 3 --device "$DEV" --quiet --json \
    --out "$W/adapted"
step eval 30 "$PY" -m fixres eval --checkpoint "$W/adapted" --data "$W/synth" --device "$DEV" --json
step compile 75 "$PY" -m fixres train --data "$W/synth" --out "$W/compiled" --overwrite --model resnet18 --train-res 64 \
    --epochs 1 --batch-size 64 --pipeline fast --channels-last --compile --device "$DEV" --quiet
echo; echo "figures: $O/gpu_check.json   all steps passed: $([ $status = 0 ] && echo yes || echo NO)"
exit $status
