#!/usr/bin/env bash
# The device check for a session lent a GPU: one call, at most ~9.5 minutes, everything written under $OUT.
#
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=600)
#
# The device image has torch / numpy / tokenizers / safetensors but not soundfile, cffi, soxr, and no network.
# Prepare `.gpu/` here first (git-ignored through .git/info/exclude; `bash scripts/gpu_prepare.sh`):
#   .gpu/whl/    wheels our package needs there (soundfile, cffi, pycparser, soxr; CPython 3.12),
#   .gpu/off/    the official package and the versions it pins (qwen-tts 0.1.1, transformers 4.57.3, ...),
#                used only by the last step, in its own PYTHONPATH,
#   .gpu/shared/data/qwen-text-tokenizer/   the real tokenizer (the tests read it through QTTS_SHARED).
# Steps, most important first, each with a time cap inside one overall deadline (a step cut short keeps what
# it wrote):
#   0. smoke: import qtts, one tiny synthesis on CUDA (stops the run early if this fails);
#   1. bench/frame_speed.py at the 0.6b shape, bfloat16: eager and CUDA graphs, B = 1 and 8, TTFA, x real time;
#   2. the GPU tests (CUDA graphs / compile + graphs == eager, graphed codec chunk decode == eager);
#   3. bench/frame_speed.py with compile + CUDA graphs;
#   4. bench/suite.py on the 0.6b shape against the official package in the same process (bfloat16).
set -uo pipefail
OUT=${OUT:-/tmp/qtts-gpu}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-560}))
left() { echo $((DEADLINE - $(date +%s))); }
step() {  # step NAME CAP command...: runs with min(CAP, time left), appends to the log
    local name=$1 cap=$2; shift 2
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

step frame_speed 130 python3 bench/frame_speed.py --shape 0.6b --dtype bfloat16 --modes eager,graphs \
    --batches 1,8 --frames 48 --out "$OUT/frame_speed.json"
step gpu_tests 150 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_accel.py tests/test_codec_decoder.py
step frame_speed_compiled 150 python3 bench/frame_speed.py --shape 0.6b --dtype bfloat16 --modes eager,compile+graphs \
    --batches 1,8 --frames 48 --out "$OUT/frame_speed_compiled.json"
step checkpoint 40 python3 -m qtts.cli make-checkpoint --shape 0.6b --kind custom_voice --seed 1 \
    --out checkpoints/0.6b-custom_voice --tokenizer .gpu/shared/data/qwen-text-tokenizer --overwrite \
  && PYTHONPATH="$PWD:/tmp/off:/tmp/site" step suite 400 python3 bench/suite.py --device cuda --shapes 0.6b \
    --dtypes bfloat16 --accels eager,cuda-graphs --batches 1,8 --frames 24 --copy-gib 2 --out-dir "$OUT" --label gpu
echo "done at +$(( $(date +%s) - START ))s" | tee -a "$LOG"
grep -E "^== |ms/frame|passed|failed|error|Error|x_realtime|official" "$LOG" | tail -n 60
