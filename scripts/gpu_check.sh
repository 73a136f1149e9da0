#!/usr/bin/env bash
# The device check for a session lent a GPU: one call, ~6-8 minutes, everything written under $OUT.
#   run(command="bash scripts/gpu_check.sh", timeout_s=560)
# 1. the GPU tests (CUDA graphs / compile + graphs == eager, graphed codec chunk decode == eager);
# 2. the frame step at the 0.6b shape: eager, CUDA graphs, compile + CUDA graphs; B = 1 and 8; TTFA and the
#    real-time factor of one stream (bench/frame_speed.py), bfloat16.
set -uo pipefail
OUT=${OUT:-/tmp/qtts-gpu}
mkdir -p "$OUT"
{ nvidia-smi; python -c "import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.is_available())"; } \
    > "$OUT/machine.txt" 2>&1
pip install --no-deps -e . -q > "$OUT/install.txt" 2>&1
timeout 200 python -m pytest -q -rs -m gpu tests > "$OUT/gpu-tests.txt" 2>&1
echo "pytest rc=$?" >> "$OUT/gpu-tests.txt"
timeout 300 python bench/frame_speed.py --shape 0.6b --dtype bfloat16 --modes eager,graphs,compile+graphs \
    --batches 1,8 --frames 48 --out "$OUT/frame_speed.json" > "$OUT/frame_speed.txt" 2>&1
echo "frame_speed rc=$?" >> "$OUT/frame_speed.txt"
tail -n 5 "$OUT/gpu-tests.txt" "$OUT/frame_speed.txt"
