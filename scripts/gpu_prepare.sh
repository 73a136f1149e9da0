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
# The server and its client for bench/server_load.py (pure Python but pydantic-core), at versions tested together
# here (pydantic pins its core exactly; fastapi imports opentelemetry-api).
get .gpu/srv fastapi==0.165.0 starlette==1.10.0 pydantic==2.13.4 pydantic_core==2.46.4 typing_extensions==4.16.0 \
    typing_inspection==0.4.2 annotated_types==0.7.0 annotated_doc==0.0.7 opentelemetry-api==1.45.2 anyio==4.16.0 \
    sniffio==1.3.1 idna==3.20 uvicorn==0.54.0 h11==0.16.0 click==8.4.0 httpx==0.28.1 httpcore==1.0.9 \
    certifi==2026.5.20 python-multipart==0.0.34
mkdir -p .gpu/shared/data
cp -r ../shared/data/qwen-text-tokenizer .gpu/shared/data/
du -sh .gpu
