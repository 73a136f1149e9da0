"""qtts runs without transformers, accelerate, librosa or torchaudio (they are test-only references)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("transformers", "accelerate", "librosa", "torchaudio", "qwen_tts")


def test_runtime_imports_no_reference_packages(tiny_checkpoints):
    code = (
        "import sys, numpy as np, qtts\n"
        f"tts = qtts.TTS.from_pretrained({str(tiny_checkpoints['base'])!r}, device='cpu')\n"
        "t = np.arange(24000) / 24000\n"
        "ref = ((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 24000)\n"
        "opts = qtts.SynthesisOptions(max_new_tokens=4)\n"
        "tts.synthesize('Hi there.', voice=qtts.Clone(ref, 'Hello.'), options=opts)\n"
        "list(tts.stream('Hi there.', voice=qtts.Clone(ref, x_vector_only=True), options=opts))\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
