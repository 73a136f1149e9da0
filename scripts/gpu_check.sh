#!/usr/bin/env bash
# The device check for a session lent a GPU: two calls on one warm machine, everything written under $OUT.
# (A session has 15 minutes of device time in all; a machine starts in ~30 s. Give it back right after.)
#
#   run(command="GPU_CHECK_SECONDS=575 bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=600)
#   run(command="GPU_CHECK_SECONDS=<what is left, less ~20 s> GPU_CHECK_ONLY='...' bash scripts/gpu_check.sh", ...)
#
# The device image has torch / numpy / tokenizers / safetensors but not soundfile, cffi, soxr, and no network.
# Prepare `.gpu/` here first (git-ignored through .git/info/exclude; `bash scripts/gpu_prepare.sh`):
#   .gpu/whl/    wheels our package needs there (soundfile, cffi, pycparser, soxr; CPython 3.12),
#   .gpu/srv/    the server's and bench/server_load.py's (fastapi, uvicorn, httpx, ...), installed to /tmp/srv,
#   .gpu/off/    the official package and the versions it pins (qwen-tts 0.1.1, transformers 4.57.3, ...),
#                installed to /tmp/off for the suite against it (below), in its own PYTHONPATH,
#   .gpu/shared/data/qwen-text-tokenizer/   the real tokenizer (the tests read it through QTTS_SHARED).
# Steps, most important first, each with a time cap inside one overall deadline (a step cut short keeps what
# it wrote). The first call takes steps 0-2 (~9.5 min); the second, on the same warm machine, has ~4-5 minutes:
# GPU_CHECK_ONLY="server_load profile frame_speed_deep frame_speed_int8 frame_speed_1.7b gpu_tests
# gpu_test_compiled frame_speed_autotune attention" (whatever the first left; the order below decides what runs).
# The machine is given back 30 s after a call ends: start the second call at once.
#   0. smoke: import qtts, one tiny synthesis on CUDA (stops the run early if this fails);
#   1. the compiled GPU tests of the row products, the default since session 17 (`accel.CUDA_PRODUCTS = "rows"`:
#      products of one or two rows as Triton reductions inside compiled regions): compiled + graphed float32 and
#      int8 runs against eager (~90 s each; session 17 measured the speed but its call ran out before these;
#      if they fail, set `CUDA_PRODUCTS` back to "linear");
#   2. bench/frame_speed.py at the 0.6b shape, bfloat16, 2048 cache slots per stream: `C` (compile + CUDA graphs +
#      fused + codec stream with the library's defaults: graphs per attention span and row products since session
#      17, 4.51 ms per frame, 16.6x real time over 19 s of audio) against `C` with the talker's attention as plain
#      products (`talker-matmul`: over the 256-512 slots of a span bucket Triton's fused products may beat
#      cuDNN's call), and against `C` with row products up to 8 rows (`rows-to-8`, `gemv.CUDA_MAX_ROWS = 8`: 8
#      streams' talker products too; session 17's 8 streams kept cuBLAS and gained nothing); B = 1 and 8, TTFA
#      and x real time over 48 frames (medians of 3 streams) and 240. In bfloat16 on random weights any kernel
#      change flips near-tie greedy picks, so `codes_match_first` says nothing there; the tests check float32. A
#      variant that wins becomes the default;
#   3. the server on the GPU for the first time: bench/server_load.py on a 0.6b random checkpoint (made there,
#      ~20 s), `--accel auto` (graphs without compilation: a warm-up of seconds), bfloat16, 1, 8 and 32 concurrent
#      streaming requests of 48 frames against the same requests one at a time: audio seconds per wall second,
#      TTFA p50 / p95 under load, and every request's PCM against its sequential run (server wheels: .gpu/srv);
#   4. scripts/gpu_profile.py: the kernels of one compiled, graphed frame by kind, and the idle time between (with
#      the row products for the first time);
#   5. the same frame at the `tiny-deep` shape (tiny widths, the 0.6b's layer counts: the 0.6b's kernels with
#      almost no arithmetic), compiled + graphed and graphed only: how much of the 0.6b's graphed frame is the
#      kernels' count rather than their work; then with the talker's blocks 7 to a compiled call
#      (`seven-block-regions`, `accel.TALKER_REGION_BLOCKS`; the CPU default since session 15): fewer kernels if
#      inductor fuses across the block boundaries; and with the frame regions compiled for static shapes
#      (`static-regions`, `accel.STATIC_REGIONS`). Session 17's run of it timed empty steps (its sampled streams
#      ended early; bench/frame_speed.py now retries other seeds and reports `streams_ended`);
#   6. int8 weights with the row products, 1 and 8 streams (session 17: 4.37 ms for one stream, 16.9x real time);
#   7. `C` at the 1.7b shape (talker 2048 wide; never measured on a GPU), 1 and 8 streams;
#   8. the GPU tests but the compiled ones (CUDA graphs == eager, graphed codec chunk decode == eager, `auto` ==
#      eager, the sort-free filter == the sort, graphs per attention span == eager; 10 passed in session 17);
#   9. the other compiled GPU tests (compile + graphs == eager with the defaults, graphs per span compiled; both
#      passed in session 17, ~90 s each);
#  10. inductor's GEMM autotuning (`autotune`, `accel.CUDA_COMPILE_OPTIONS`): slow to build, so last but one;
#  11. which SDPA kernel serves masked grouped-head attention (scripts/gpu_attention.py, a few seconds; session
#      17: the GQA call, as in session 10).
# Sessions 9-10 measured the rest (BENCHMARKS.md): eager ~150 ms per frame; `auto` (graphs, fused, codec stream,
# GQA call) 8.8 ms for 1 stream, 10.4 for 8, 11.5 for 32; the attention and filter variants.
# The suite against the official package on a GPU (session 6's run, BENCHMARKS.md):
#   make the checkpoint (python3 -m qtts.cli make-checkpoint --shape 0.6b --kind custom_voice --seed 1 --out
#   checkpoints/0.6b-custom_voice), then PYTHONPATH="$PWD:/tmp/off:/tmp/site" python3 bench/suite.py --device cuda
#   --shapes 0.6b --dtypes bfloat16 --accels eager,cuda-graphs --batches 1,8 --frames 24 --out-dir "$OUT".
# A rerun can take some steps only: GPU_CHECK_ONLY="smoke frame_speed_compiled" (step names, below),
# GPU_TESTS_K (pytest -k of the gpu_tests step), GPU_SPEED_MODES (step 2's modes), GPU_PROFILE_MODE (step 4's).
set -uo pipefail
OUT=${OUT:-/tmp/qtts-gpu}
export OUT
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-585}))
left() { echo $((DEADLINE - $(date +%s))); }
step() {  # step NAME CAP command...: runs with min(CAP, time left), appends to the log
    local name=$1 cap=$2; shift 2
    if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY " != *" $name "* ]]; then return 0; fi
    local t=$(left); (( t > cap )) && t=$cap
    if (( t < 20 )); then echo "== $name: skipped (${t}s left)" | tee -a "$LOG"; return 1; fi
    echo "== $name (cap ${t}s) at +$(( $(date +%s) - START ))s" | tee -a "$LOG"
    timeout "$t" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "== $name rc=$rc at +$(( $(date +%s) - START ))s" | tee -a "$LOG"
    return $rc
}
{ nvidia-smi; python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.is_available())"; } \
    >> "$LOG" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    >> "$LOG" 2>&1 || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/srv .gpu/srv/*.whl \
    >> "$LOG" 2>&1 || echo "server wheels failed to install" | tee -a "$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/off .gpu/off/*.whl \
    >> "$LOG" 2>&1 || echo "official wheels failed to install" | tee -a "$LOG"
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 QTTS_SHARED="$PWD/.gpu/shared"

step smoke 90 python3 - <<'EOF' || { tail -n 30 "$LOG"; exit 1; }
import tempfile, time, torch
from qtts import TTS, Speaker, SynthesisOptions
from qtts.checkpoint import make_checkpoint
folder = make_checkpoint("tiny", "custom_voice", tempfile.mkdtemp() + "/tiny", seed=1)
tts = TTS.from_pretrained(folder, device="cuda")
t0 = time.perf_counter()
out = tts.synthesize("Hello there.", voice=Speaker(tts.speakers[0]), seed=0, options=SynthesisOptions(max_new_tokens=8))
print("smoke ok", tuple(out.codes.shape), round(time.perf_counter() - t0, 2), "s")
EOF

C=compile+graphs+fused+codec-stream  # the fastest set (the library's defaults inside); then the variants
step gpu_test_rows 220 python3 -m pytest -q -rs -p no:cacheprovider --tb=short --durations=4 -m gpu \
    tests/test_accel.py -k row_products
step frame_speed_compiled 300 python3 bench/frame_speed.py --shape 0.6b --dtype bfloat16 --batches 1,8 --frames 48 \
    --max-frames 2048 --modes "${GPU_SPEED_MODES:-$C,$C+talker-matmul,$C+rows-to-8}" --long 240 \
    --out "$OUT/frame_speed_compiled.json"
step server_load 170 bash -c 'python3 -m qtts.cli make-checkpoint --shape 0.6b --kind custom_voice --seed 1 \
    --out /tmp/ck-0.6b --tokenizer .gpu/shared/data/qwen-text-tokenizer && PYTHONPATH="/tmp/srv:$PYTHONPATH" \
    python3 bench/server_load.py --checkpoint /tmp/ck-0.6b --device cuda --dtype bfloat16 --accel auto \
    --concurrency 1 8 32 --frames 48 --repeats 1 --out "$OUT/server_load.json"'
step profile 80 python3 scripts/gpu_profile.py --shape 0.6b --max-frames 2048 --mode "${GPU_PROFILE_MODE:-$C}"
step frame_speed_deep 150 python3 bench/frame_speed.py --shape tiny-deep --dtype bfloat16 --batches 1,8 --frames 48 \
    --max-frames 2048 --modes "$C,graphs+fused+codec-stream,$C+seven-block-regions,$C+static-regions" \
    --out "$OUT/frame_speed_deep.json"
step frame_speed_int8 100 python3 bench/frame_speed.py --shape 0.6b --dtype bfloat16 --quantize int8 --batches 1,8 \
    --frames 48 --max-frames 2048 --modes "$C" --long 240 --out "$OUT/frame_speed_int8.json"
step frame_speed_1.7b 120 python3 bench/frame_speed.py --shape 1.7b --dtype bfloat16 --batches 1,8 --frames 48 \
    --max-frames 2048 --modes "$C" --long 240 --out "$OUT/frame_speed_1.7b.json"
step gpu_tests 110 python3 -m pytest -q -rs -p no:cacheprovider --tb=short -m gpu tests/test_codec_decoder.py \
    tests/test_accel.py tests/test_fuse.py -k "${GPU_TESTS_K:-not compiled}"
step gpu_test_compiled 180 python3 -m pytest -q -rs -p no:cacheprovider --tb=short --durations=4 -m gpu \
    tests/test_accel.py -k "compiled and not row_products"
step frame_speed_autotune 120 python3 bench/frame_speed.py --shape 0.6b --dtype bfloat16 --batches 1 --frames 48 \
    --max-frames 2048 --modes "$C+autotune" --long 240 --out "$OUT/frame_speed_autotune.json"
step attention 30 python3 scripts/gpu_attention.py
echo "done at +$(( $(date +%s) - START ))s" | tee -a "$LOG"
grep -E "^== |ms/frame|passed|failed|error|Error|x_realtime" "$LOG" | tail -n 60
