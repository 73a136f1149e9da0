"""GPU diagnosis: where do CUDA-graphed / static frame steps part from eager? (tiny model, float64 and float32)

Per dtype and mode, one greedy and one sampled single stream (tts.synthesize) and a 3-stream engine batch;
prints whether codes equal eager's and, if not, the first differing (frame, group), plus the audio's max diff.
float64 rules out rounding: a difference there is a logic bug, not numerics.
    python scripts/gpu_diag.py [--device cuda] [--modes static,graphs,graphs-sync]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtts import TTS, ChunkPolicy, Sampling, Speaker, SynthesisOptions  # noqa: E402
from qtts.checkpoint import make_checkpoint  # noqa: E402
from qtts.engine import Engine, EngineConfig  # noqa: E402

TEXTS = ["Static shapes give the same codes.", "A second stream, longer than the first one.", "Third."]
MODES = {"static": dict(compile=True, compile_backend="eager"), "graphs": dict(cuda_graphs=True),
         "graphs-sync": dict(cuda_graphs=True, pipelined=False),
         "static-sync": dict(compile=True, compile_backend="eager", pipelined=False)}


def runs(tts: TTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, sampling in (("greedy", Sampling.greedy()), ("sampled", Sampling())):
        s = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0,
                           options=SynthesisOptions(max_new_tokens=24, sampling=sampling))
        out[name] = (s.codes.cpu().numpy(), np.asarray(s.audio))
    prepared = [tts.prepare(t, voice=Speaker(v), seed=i, options=SynthesisOptions(max_new_tokens=b))
                for i, (t, v, b) in enumerate(zip(TEXTS, ["ryan", "serena", "eric"], [14, 20, 9], strict=True))]
    with Engine(tts, EngineConfig(max_batch=4)) as engine:
        handles = [engine.submit(p, ChunkPolicy(2, 4)) for p in prepared]
        for i, h in enumerate(handles):
            chunks = list(h)
            out[f"batch{i}"] = (np.concatenate([c.codes for c in chunks]), np.concatenate([c.audio for c in chunks]))
    return out


def compare(got, ref) -> str:
    lines = []
    for key, (codes, audio) in got.items():
        rc, ra = ref[key]
        if codes.shape == rc.shape and np.array_equal(codes, rc):
            n = min(len(audio), len(ra))
            lines.append(f"{key}: codes equal, audio max diff {np.abs(audio[:n] - ra[:n]).max():.2e}")
        else:
            n = min(len(codes), len(rc))
            diff = np.argwhere(codes[:n] != rc[:n])
            first = tuple(diff[0]) if len(diff) else ("len", codes.shape, rc.shape)
            lines.append(f"{key}: CODES DIFFER first (frame, group) {first}; {len(diff)} of {codes[:n].size}")
    return "\n  ".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default="static,graphs,graphs-sync")
    ap.add_argument("--dtypes", default="float64,float32")
    args = ap.parse_args()
    tok = Path(os.environ.get("QTTS_SHARED", "../shared")) / "data" / "qwen-text-tokenizer"
    folder = make_checkpoint("tiny", "custom_voice", Path(tempfile.mkdtemp()) / "tiny", seed=7,
                             tokenizer=tok if (tok / "vocab.json").is_file() else None)
    for dtype in args.dtypes.split(","):
        tts = TTS.from_pretrained(folder, device=args.device, dtype="float32")
        if dtype == "float64":  # not a load option: converted after loading
            tts.model.double()
            tts.codec.double()
            tts.dtype = torch.float64
        ref = runs(tts)
        print(f"[{dtype}] eager: greedy codes {ref['greedy'][0].shape}", flush=True)
        for mode in args.modes.split(","):
            t0 = time.perf_counter()
            try:
                tts.accelerate(**MODES[mode], max_frames=128)
                got = runs(tts)
                print(f"[{dtype}] {mode} ({time.perf_counter() - t0:.1f} s):\n  {compare(got, ref)}", flush=True)
            except Exception as e:  # noqa: BLE001 - a diagnosis reports and goes on
                print(f"[{dtype}] {mode}: {type(e).__name__}: {e}", flush=True)
        tts.accelerate()


if __name__ == "__main__":
    main()
