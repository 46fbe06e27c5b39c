#!/usr/bin/env bash
# One prepared GPU check that fits 10 minutes on one H100: every figure is one line
# ("figure <name>: <value> <unit>"), the log keeps each command's output, and a wall-clock budget skips
# what no longer fits (printed as "skipped <name>"), so the whole never runs long.
#   bash tools/bench/gpu_check.sh [OUT_DIR]          (default runs/gpu_check)
# PY defaults to .venv/bin/python, else python3 (a GPU image with torch, as the lent machines have).
# What it measures, in order (seconds budgeted):
#   the GPU and torch                                                        (5)
#   training step, MobileFaceNet b512 bf16: reading results every step, and at log points only (60)
#   training step, IR-50 b512: bf16, then fp16 with its GradScaler           (60)
#   training step, ViT-B b256 bf16, and with gradient checkpointing: images/s and peak memory (90)
#   training step, IR-50 b512 with 1,000,000 classes, Partial FC sampling 0.1 (45)
#   evaluation: extraction, both verification protocols, MegaFace at 1,000,000 distractors (60)
#   DeepGlint Trillion-Pairs at its real size (1,862,120 x 512): seconds and peak memory (150)
#   the fast test tier on the CPU (CUDA hidden: the logic of every CUDA path runs there)  (120)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; fi
LOG="$OUT/gpu_check.log"
CSV="$OUT/benchmark.csv"
BUDGET=${BUDGET:-600}
START=$(date +%s)
: > "$LOG"

# figure NAME SECONDS FIELDS -- COMMAND...: runs COMMAND (its output to the log) unless fewer than
# SECONDS remain of the budget, then prints one line with FIELDS (comma-separated keys) of the last
# JSON line the command printed.
figure() {
  local name=$1 seconds=$2 fields=$3; shift 4
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt "$seconds" ]; then echo "skipped $name (${left}s of the budget left, ${seconds}s needed)"; return; fi
  echo "+ $*" >> "$LOG"
  local output
  output=$(timeout "$seconds" "$@" 2>>"$LOG"); local status=$?
  echo "$output" >> "$LOG"
  if [ $status -ne 0 ]; then echo "failed $name (exit $status; $LOG)"; return; fi
  printf '%s\n' "$output" | tail -n 1 | $PY -c "
import json, sys
values = json.loads(sys.stdin.read())
print('figure $name: ' + ', '.join(f'{key} {values[key]}' for key in '$fields'.split(',') if key in values))"
}
BENCH="$PY tools/bench/benchmark.py --device cuda --num-classes 10575 --csv $CSV --json"  # split into words on use

echo "figure gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1); torch $($PY -c 'import torch; print(torch.__version__)')"
figure "step mobilefacenet b512 bf16, results read every step" 60 images_per_second,step_ms -- \
    $BENCH --backbone mobilefacenet --batch-size 512 --dtype bf16 --steps 30 --warmup 10 --sync-each-step
figure "step mobilefacenet b512 bf16, results read at log points" 60 images_per_second,step_ms -- \
    $BENCH --backbone mobilefacenet --batch-size 512 --dtype bf16 --steps 30 --warmup 10
figure "step ir50 b512 bf16" 60 images_per_second,tflops,peak_fraction,max_memory_gb -- \
    $BENCH --backbone ir50 --batch-size 512 --dtype bf16 --steps 20 --warmup 5
figure "step ir50 b512 fp16 (GradScaler)" 60 images_per_second,tflops,max_memory_gb -- \
    $BENCH --backbone ir50 --batch-size 512 --dtype fp16 --steps 20 --warmup 5
figure "step vit_b b256 bf16" 45 images_per_second,max_memory_gb -- \
    $BENCH --backbone vit_b --batch-size 256 --dtype bf16 --steps 10 --warmup 3
figure "step vit_b b256 bf16, gradient checkpointing" 45 images_per_second,max_memory_gb -- \
    $BENCH --backbone vit_b --batch-size 256 --dtype bf16 --steps 10 --warmup 3 --grad-checkpoint
figure "step ir50 b512 bf16, 1,000,000 classes, Partial FC 0.1" 45 images_per_second,max_memory_gb -- \
    $BENCH --backbone ir50 --batch-size 512 --dtype bf16 --num-classes 1000000 --sharded-head --sample-rate 0.1 \
    --steps 20 --warmup 5
figure "evaluation ir50 (extraction, protocols, MegaFace 1,000,000)" 60 \
    extraction_images_per_second,verification_insightface_ms,verification_seed_ms,megaface_1000000_seconds -- \
    $BENCH --backbone ir50 --batch-size 64 --dtype bf16 --steps 2 --warmup 1 --eval --megaface-distractors 1000000
figure "deepglint real size" 150 seconds,peak_rss_gb,cuda_peak_gb -- \
    $PY tools/bench/benchmark_deepglint.py --device cuda --json
left=$((BUDGET - ($(date +%s) - START)))
if [ "$left" -ge 120 ]; then
  started=$(date +%s)
  CUDA_VISIBLE_DEVICES= timeout "$left" $PY -m pytest -q -m "not slow" tests >> "$LOG" 2>&1; status=$?
  echo "figure tests (fast tier, CPU): exit $status in $(( $(date +%s) - started )) s ($(grep -Eo '[0-9]+ passed' "$LOG" | tail -n 1))"
else
  echo "skipped tests (fast tier, CPU) (${left}s of the budget left, 120s needed)"
fi
echo "total: $(( $(date +%s) - START )) s; log $LOG"
