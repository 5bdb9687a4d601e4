#!/usr/bin/env bash
# One-call GPU check for a lent machine (see DEVELOPERS.md): build the CUDA op, run the CUDA
# tests, run the op benchmark, and print a short table last. Meant to finish within 10 minutes.
#
#   bash tools/gpu_check.sh            # output also lands in $OUT (or ./gpu_check_out)
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

log "build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:=9.0})"
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-16}
start=$(date +%s)
if ! timeout 420 $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -50 "$OUT/build.log"; log "BUILD FAILED"; exit 1
fi
log "built in $(( $(date +%s) - start )) s"

log "CUDA tests"
timeout 300 $PY -m pytest tests/test_ops.py tests/test_relu_moments.py -q -k cuda \
  -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt" | tail -15

# The issue's three shapes in float32 (torch.compile only for the first, the slowest to set up),
# then the other dtypes and channels_last. A step that hangs loses only itself.
log "op benchmark"
: > "$OUT/bench.md"
bench() {
  timeout "$1" $PY tools/bench_op.py --device cuda --repeat 50 --warmup 10 --no-reference \
    "${@:2}" 2>&1 | tee -a "$OUT/bench.md"
  echo | tee -a "$OUT/bench.md"
}
bench 240 --dtype float32
bench 60 --dtype float32 --no-compile --shape 64 1024
bench 60 --dtype float32 --no-compile --shape 2 64 200 304
bench 60 --dtype float32 --no-compile --channels-last
bench 60 --dtype bfloat16 --no-compile
bench 60 --dtype float16 --no-compile

log "summary"
grep -E "passed|failed" "$OUT/tests.txt" | tail -1
grep -E "^shape|^\| (ReLU|PWLU op|copy)" "$OUT/bench.md"
