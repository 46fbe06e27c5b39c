#!/usr/bin/env bash
# One prepared run of every GPU measurement, for a machine with a CUDA GPU (about 10 minutes):
#   bash tools/gpu_check.sh [OUT_DIR]        (default runs/gpu_check; the README's table: result/gpu)
# Appends benchmark rows to OUT_DIR/benchmark.csv and logs to OUT_DIR/gpu_check.log; the README's
# GPU table is copied from that CSV, with the GPU, torch version and date it records.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
LOG="$OUT/gpu_check.log"
CSV="$OUT/benchmark.csv"
run() { echo "+ $*" | tee -a "$LOG"; timeout 900 "$@" 2>&1 | tail -n 30 | tee -a "$LOG"; }

run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
# training throughput, device-resident batches (bf16, channels_last, compiled)
for spec in "mobilefacenet 512" "ir50 512" "ir100 512"; do
  set -- $spec
  run $PY tools/benchmark.py --backbone "$1" --batch-size "$2" --num-classes 10575 --device cuda --dtype bf16 \
      --compile --steps 30 --warmup 10 --csv "$CSV" --json
done
run $PY tools/benchmark.py --backbone ir50 --batch-size 512 --num-classes 10575 --device cuda --dtype bf16 --steps 30 --warmup 10 --csv "$CSV" --json
# ViT training throughput (compiled), then gradient checkpointing against none: peak CUDA memory
# (max_memory_gb, torch.cuda.max_memory_allocated) and images/s, each in its own process
for spec in "vit_t 512" "vit_b 256"; do
  set -- $spec
  run $PY tools/benchmark.py --backbone "$1" --batch-size "$2" --num-classes 10575 --device cuda --dtype bf16 \
      --compile --steps 30 --warmup 10 --csv "$CSV" --json
done
for backbone in ir100 vit_b; do
  for checkpointing in "" --grad-checkpoint; do
    run $PY tools/benchmark.py --backbone "$backbone" --batch-size 256 --num-classes 10575 --device cuda \
        --dtype bf16 $checkpointing --steps 20 --warmup 5 --csv "$CSV" --json
  done
done
# 1,000,000 classes with the sharded/sampled head (Partial FC) against 10,575
run $PY tools/benchmark.py --backbone ir50 --batch-size 512 --num-classes 1000000 --device cuda --dtype bf16 \
    --compile --sharded-head --sample-rate 0.1 --steps 30 --warmup 10 --csv "$CSV" --json
# the real loader from a .rec pack of synthetic faces
[ -f data/synthetic/train.rec ] || run $PY tools/make_synthetic.py data/synthetic --lfw-pairs 0 --agedb-pairs 0 --cfp-pairs 0 --workers 16
run $PY tools/benchmark.py --backbone ir50 --batch-size 512 --num-classes 10575 --device cuda --dtype bf16 \
    --compile --loader rec:data/synthetic --workers 12 --steps 30 --warmup 10 --csv "$CSV" --json
# evaluation: feature extraction, both protocols, MegaFace search at 1,000,000 distractors
run $PY tools/benchmark.py --backbone ir50 --batch-size 64 --device cuda --dtype bf16 --steps 2 --warmup 1 \
    --eval --megaface-distractors 1000000 --json
# the test suite on the GPU machine (the CUDA paths run where a test selects the default device)
run $PY -m pytest -q -x tests/test_train.py tests/test_margin.py tests/test_verification.py
# the demo, end to end
run make demo
