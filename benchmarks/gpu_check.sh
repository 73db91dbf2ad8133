#!/usr/bin/env bash
# Every GPU measurement and check of fixres' fast data path in one prepared run, within ~7
# minutes on one H200 with 16 cores (generates its own data under /tmp, needs no network):
#
#   bash benchmarks/gpu_check.sh                      # from the repository root, on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu_check.sh --smoke   # a rehearsal of every step at toy size, on a CPU
#
# Steps, each with its own timeout; one failing or timing out does not stop the others, and
# the exit status says whether all passed. Estimated seconds on an H200 + 16 cores (run A on
# an H100 took 272 s for the earlier version of this script; the figures below are
# estimates from its parts and the CPU rehearsal, not measured on the H200):
#   tests       ~35 s  tests/test_fast_pipeline.py (its GPU test, test_nvjpeg_path_on_the_gpu,
#                      included) and tests/test_pack.py on that machine's torch
#   profile     ~25 s  benchmarks/profile_crop.py: the crop stage, per-image fill against the
#                      batched gather (one batch of 256, 128 px; chunk 64 and 256; eval at 224-384)
#   bench      ~200 s  benchmarks/pipeline_gpu.py sections 1-3: data (~20 s: 3,000 JPEGs rendered
#                      at ~20 ms each on 16 cores, 11,000 copies, one 1.3 GB store), ResNet-50
#                      training at 128 and 224 px (synthetic / fast nvJPEG / fast workers decoder /
#                      torchvision with the same workers; ~40 s per resolution), the sweep at
#                      224-384 (~35 s), pixel parity (~10 s), top-1 parity through every path (~50 s)
#   stages      ~30 s  benchmarks/gpu_stages.py: loader alone, nvJPEG alone, finisher (decode +
#                      crops) alone, whole feed, at 128 px (the table that located the crop stage)
#   compile    ~100 s  pipeline_gpu.py section 4: the synthetic step eager and
#                      torch.compile(mode="reduce-overhead") at batch 256 and 512; the compiled
#                      512 runs only if the section is under 60 s when its turn comes
#   sweep       ~20 s  `fixres sweep` end to end on the GPU (checkpoint of the top-1 parity)
#   recipes     ~40 s  `fixres train --pipeline fast` with mixup/CutMix, random erasing and EMA on the
#                      device batch (2 epochs, resnet18 at 64 px), then a sweep of its EMA weights
#   targets      ~1 s  benchmarks/gpu_targets.py: every target ratio, met or not, from the JSON
# Total ~455 s; give the device call a timeout_s of about 560. CLI=1 adds the other CLI
# checks of earlier versions (`fixres adapt`, `fixres eval`, `fixres train --compile`: ~100 s
# more; they passed on an H100 in run A and do not touch the fast path's crop stage).
#
# Output (the device tool brings back at most 8 files): $OUT/gpu_check.log (every step's
# log, one after the other), $OUT/bench.json, $OUT/compile.json, $OUT/profile.json; $OUT
# defaults to /tmp. Record the figures, with the card and the date printed, in
# benchmarks/RESULTS.md. Extra arguments go to pipeline_gpu.py (e.g. --skip parity).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"    # fixres from this working tree, not installed
PY="${PYTHON:-python3}"
O="${OUT:-/tmp}"
W="${BENCH_DIR:-/tmp/fixres-bench-gpu}"
DEV="${DEVICE:-cuda}"    # DEVICE=cpu with --smoke: a rehearsal of every step on a CPU
LOG="$O/gpu_check.log"
SMOKE=0
case " $* " in *" --smoke "*) SMOKE=1 ;; esac
status=0
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, time, remember a failure, go on
    local name=$1 limit=$2; shift 2
    say; say "=== $name ($(date -u +%H:%M:%S), timeout ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "=== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (timed out)')"
    [ "$rc" = 0 ] || status=1
}
"$PY" -c "import fixres, timm, torch, torchvision; print('fixres', fixres.__version__, '| torch', torch.__version__, '| timm', timm.__version__, '| torchvision', torchvision.__version__)" 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$LOG" || true
say "cores: $(nproc)  date: $(date -u +%Y-%m-%dT%H:%MZ)  smoke: $SMOKE"
T0=$SECONDS

if [ $SMOKE = 1 ]; then PROFILE=(--batch 16 --repeat 1 --chunk 8 16 --sweep 48); STAGES=(--batch 16 --batches 2); RB=16
else PROFILE=(--chunk 64 256 --sweep 224 288 320 384); STAGES=(); RB=128; fi
rm -f "$O/bench.json" "$O/compile.json" "$O/profile.json"
step tests 120 "$PY" -m pytest -q -o addopts=-ra -p no:cacheprovider tests/test_fast_pipeline.py tests/test_pack.py
step profile 90 "$PY" benchmarks/profile_crop.py --device "$DEV" "${PROFILE[@]}" --json "$O/profile.json"
step bench 300 "$PY" benchmarks/pipeline_gpu.py --device "$DEV" --data "$W" --max-size 0 --skip compile \
    --json "$O/bench.json" "$@"
step stages 90 "$PY" benchmarks/gpu_stages.py --device "$DEV" --data "$W" ${STAGES[@]+"${STAGES[@]}"}
step compile 180 "$PY" benchmarks/pipeline_gpu.py --device "$DEV" --data "$W" --skip train sweep parity \
    --compile-budget 60 --json "$O/compile.json" "$@"
# the CLI on the checkpoint that bench's top-1 parity trained on the embedded dataset (resnet18 at 64 px)
rm -rf "$W/sweep" "$W/adapted"
step sweep 45 "$PY" -m fixres sweep --checkpoint "$W/run" --data "$W/synth" --test-res 64:128:16 --device "$DEV" --quiet --out "$W/sweep"
rm -rf "$W/recipes"
step recipes 90 bash -c "'$PY' -m fixres train --data '$W/synth' --out '$W/recipes' --overwrite --model resnet18 \
    --train-res 64 --epochs 2 --batch-size $RB --pipeline fast --mixup 0.2 --cutmix 1.0 --random-erasing 0.25 --ema-decay 0.99 \
    --device '$DEV' --quiet && '$PY' -m fixres sweep --checkpoint '$W/recipes' --ema --data '$W/synth' \
    --test-res 64:112:16 --device '$DEV' --quiet"
if [ "${CLI:-0}" = 1 ]; then
    step adapt 60 "$PY" -m fixres adapt --checkpoint "$W/run" --data "$W/synth" --test-res 96 --epochs 3 --device "$DEV" \
        --quiet --json --out "$W/adapted"
    step eval 30 "$PY" -m fixres eval --checkpoint "$W/adapted" --data "$W/synth" --device "$DEV" --json
    step train-compile 75 "$PY" -m fixres train --data "$W/synth" --out "$W/compiled" --overwrite --model resnet18 \
        --train-res 64 --epochs 1 --batch-size 64 --pipeline fast --channels-last --compile --device "$DEV" --quiet
fi
step targets 30 "$PY" benchmarks/gpu_targets.py "$O"
say; say "total $((SECONDS - T0)) s; log and figures in $O (gpu_check.log, bench.json, compile.json, profile.json)"
say "all steps passed: $([ $status = 0 ] && echo yes || echo NO)"
exit $status
