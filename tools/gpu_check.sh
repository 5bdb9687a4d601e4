#!/usr/bin/env bash
# One-call check on a GPU machine: build the CUDA op, run the CUDA tests, benchmark the op
# (bench_op.py --suite gpu: time, ratio to ReLU, % of the copy bandwidth; then --profile: the
# time of each kernel), and print a summary last. Made to finish within about 6 minutes on a
# machine with 16 cores.
#
#   bash tools/gpu_check.sh                  # logs also land in $OUT (default: gpu_check_out)
#   MODELS=1 bash tools/gpu_check.sh         # also whole-model numbers: Table 4 (ResNet-18,
#                                            # torch only) and, where mmdet imports, bench_model
#                                            # for the quick-start model and Mask R-CNN R50 at 800 px
#   MODELS=1 STOCK=1 bash tools/gpu_check.sh # also stock Cascade Mask R-CNN, FCOS and YOLOX-s,
#                                            # converted by model.act_cfg (a few minutes more)
#   BASELINE=path/to/other/tree bash tools/gpu_check.sh
#                                            # also builds and benchmarks a second source tree
#                                            # (e.g. `git archive` of an earlier commit): before /
#                                            # after numbers from one machine
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BASELINE=${BASELINE:-}
# Packages installed outside site-packages (e.g. wheels put in with pip --target) stay visible.
SITE=${PYTHONPATH:+:$PYTHONPATH}
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv | tee "$OUT/machine.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/machine.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/machine.txt"

# In-place builds (no install): each tree's pwlu_mmdet is used through PYTHONPATH.
build() {  # tree jobs log
  (cd "$1" && MAX_JOBS=$2 timeout 420 $PY setup.py build_ext --inplace) > "$3" 2>&1
}
log "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
if [ -n "$BASELINE" ]; then
  build "$BASELINE" 8 "$OUT/build_baseline.log" &
  baseline_build=$!
fi
build "$ROOT" "${MAX_JOBS:-$(nproc)}" "$OUT/build.log"
status=$?
[ -n "$BASELINE" ] && { wait $baseline_build || log "BASELINE BUILD FAILED"; }
if [ $status -ne 0 ]; then tail -40 "$OUT/build.log"; log "BUILD FAILED"; exit 1; fi
log "built in $(( $(date +%s) - start )) s"

log "CUDA tests"
# PYTEST_ARGS: e.g. "-n 4" (pytest-xdist) to share the tests' CPU-side references among cores.
PYTHONPATH=$ROOT$SITE timeout 300 $PY -m pytest tests/ops -q -k cuda -p no:cacheprovider -rfE \
  ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.txt" | tail -25

log "op benchmark"
PYTHONPATH=$ROOT$SITE timeout 240 $PY benchmarks/bench_op.py --device cuda --suite gpu --repeat 50 \
  --warmup 10 --no-compile --no-reference 2>&1 | tee "$OUT/bench.md" | tail -3
log "op profile (kernel by kernel)"
PYTHONPATH=$ROOT$SITE timeout 120 $PY benchmarks/bench_op.py --device cuda --suite gpu --profile \
  --no-compile --no-reference > "$OUT/profile.md" 2> "$OUT/profile.log"
grep -A 6 "PWLU op, forward+backward" "$OUT/profile.md" | head -8
if [ -n "$BASELINE" ]; then
  log "op benchmark of $BASELINE"
  PYTHONPATH=$BASELINE$SITE timeout 240 $PY benchmarks/bench_op.py --device cuda --suite gpu --repeat 50 \
    --warmup 10 --no-compile --no-reference 2>&1 | tee "$OUT/bench_baseline.md" | tail -3
fi

if [ "${MODELS:-0}" = 1 ]; then
  # Without mmcv's compiled ops (mmcv-lite), mmdet's imports of mmcv.ops need a stand-in, and
  # Mask R-CNN's RoIAlign and NMS come from torchvision.
  with_ops=()
  PYTHONPATH=$ROOT$SITE $PY -c "import mmdet; import mmcv._ext" 2>/dev/null \
    || with_ops=(tools/misc/mmcv_ops_from_torchvision.py)
  # The tables go to the .md files, the libraries' warnings and any traceback to the .log files.
  log "Table 4: ResNet-18, 224 x 224"
  PYTHONPATH=$ROOT$SITE timeout 300 $PY "${with_ops[@]}" benchmarks/bench_table4.py --device cuda \
    --batch-size 64 --repeat 50 2> "$OUT/table4.log" | tee "$OUT/table4.md" | tail -12 \
    || { log "TABLE 4 FAILED"; tail -5 "$OUT/table4.log"; }
  if PYTHONPATH=$ROOT$SITE $PY -c "import mmdet" 2>/dev/null; then
    : > "$OUT/models.md"
    # Ours with ReLU, Swish and PWLU; with STOCK=1 also stock mmdet detectors converted by
    # model.act_cfg, ReLU against PWLU (YOLOX without its random multi-scale resize).
    specs=("configs/synthetic/mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py 128 128 8"
      "configs/mask_rcnn/mask-rcnn_r50-scratch_fpn_gn-all-pwlu_3x_coco.py 800 1216 2")
    if [ "${STOCK:-0}" = 1 ]; then
      no_resize=model.data_preprocessor.batch_augments=None
      specs+=("mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py 800 1216 2 --activations ReLU PWLU"
        "mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py 800 1216 2 --activations ReLU PWLU --no-mask"
        "mmdet::yolox/yolox_s_8xb8-300e_coco.py 640 640 8 --activations ReLU PWLU --no-mask --cfg-options $no_resize")
    fi
    for spec in "${specs[@]}"; do
      read -r config h w batch extra <<< "$spec"
      log "bench_model $config"
      # shellcheck disable=SC2086  # $extra: options, split on purpose
      PYTHONPATH=$ROOT$SITE timeout 300 $PY "${with_ops[@]}" benchmarks/bench_model.py "$config" \
        --device cuda --interleaved --image-size "$h" "$w" --batch-size "$batch" --repeat 20 \
        --warmup 5 $extra 2>> "$OUT/models.log" | tee -a "$OUT/models.md" | tail -8 \
        || { log "BENCH_MODEL FAILED"; tail -5 "$OUT/models.log"; }
    done
  else
    log "mmdet not importable: no bench_model numbers"
  fi
fi

log "summary: tests"
grep -E "passed|failed" "$OUT/tests.txt" | tail -1
summarise() {  # PWLU forward and forward+backward per case: ms, x ReLU, % of copy bandwidth
  awk -F'|' '/^shape/ {print} $2 ~ /PWLU op/ && $3 ~ /^ (forward|forward\+backward) $/ {
    printf "   %-18s %8s ms %6s x ReLU %5s %% of copy\n", $3, $4, $5, $7}' "$1"
}
log "summary: this tree"
summarise "$OUT/bench.md"
if [ -n "$BASELINE" ]; then
  log "summary: $BASELINE"
  summarise "$OUT/bench_baseline.md"
fi
