#!/usr/bin/env bash
# Second, shorter device call: why graphed codes part from eager (scripts/gpu_diag.py), then the GPU tests with
# full tracebacks. run(command="bash scripts/gpu_diag.sh", carry=[".gpu"], timeout_s=300)
set -uo pipefail
OUT=${OUT:-/tmp/qtts-gpu}; mkdir -p "$OUT"; LOG="$OUT/diag.txt"; START=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    >> "$LOG" 2>&1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 QTTS_SHARED="$PWD/.gpu/shared"
timeout 110 python3 scripts/gpu_diag.py --modes static,graphs,graphs-sync 2>&1 | grep -v Warning >> "$LOG"
echo "== diag done at +$(( $(date +%s) - START ))s" >> "$LOG"
timeout 70 python3 -m pytest -q -rs -p no:cacheprovider --tb=long -m gpu tests/test_codec_decoder.py \
    "tests/test_accel.py::test_cuda_graphs_equal_eager" >> "$LOG" 2>&1
echo "== tests done at +$(( $(date +%s) - START ))s" >> "$LOG"
t=$(( 270 - ($(date +%s) - START) ))
(( t > 20 )) && timeout $t python3 -m pytest -q -rs -p no:cacheprovider --tb=short -m gpu --durations=5 \
    "tests/test_accel.py::test_compiled_cuda_graphs_equal_eager" >> "$LOG" 2>&1
echo "== all done at +$(( $(date +%s) - START ))s" >> "$LOG"
grep -v "^\s*$" "$LOG" | tail -n 120
