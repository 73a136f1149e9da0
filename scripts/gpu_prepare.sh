#!/usr/bin/env bash
# Fills the git-ignored `.gpu/` folder that scripts/gpu_check.sh carries to a lent GPU machine (no network there;
# CPython 3.12 with torch, numpy, tokenizers, safetensors already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF /.gpu/ .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLAT[@]}" -d "$@"; }
get .gpu/whl soundfile cffi pycparser soxr
get .gpu/off transformers==4.57.3 tokenizers==0.22.2 huggingface_hub==0.36.2 qwen-tts==0.1.1 librosa==0.11.0 \
    audioread decorator pooch platformdirs
mkdir -p .gpu/shared/data
cp -r ../shared/data/qwen-text-tokenizer .gpu/shared/data/
du -sh .gpu
