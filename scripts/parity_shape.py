"""Run the end-to-end greedy parity check against the official package at a real shape (default 0.6b).

    python scripts/parity_shape.py --shape 0.6b --tokenizer ../shared/data/qwen-text-tokenizer

Writes random checkpoints under ``checkpoints/`` (git-ignored; 1.8-3.8 GB each) and prints, per mode,
whether the greedy codes are identical and the max audio difference. Needs the official ``qwen-tts``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtts import TTS, Clone, Design, Sampling, Speaker, SynthesisOptions  # noqa: E402
from qtts.checkpoint import make_checkpoint  # noqa: E402
from tests.reference import _install_stubs  # noqa: E402

TEXT = "Hello world, this is a parity test at the real shape."


REF_TEXT = "Good morning to all of you."


def _case(kind: str, ref):
    if kind == "custom_voice":
        return "speaker ryan, english", Speaker("ryan")
    if kind == "voice_design":
        return "design, english", Design("A calm voice.")
    return "ICL clone, english", Clone(ref, REF_TEXT)


def _run_official(theirs, kind: str, ref, common: dict):
    if kind == "custom_voice":
        return theirs.generate_custom_voice(text=TEXT, speaker="ryan", language="english", **common)
    if kind == "voice_design":
        return theirs.generate_voice_design(text=TEXT, instruct="A calm voice.", language="english", **common)
    return theirs.generate_voice_clone(text=TEXT, language="english", ref_audio=ref, ref_text=REF_TEXT, **common)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="0.6b")
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared/data/qwen-text-tokenizer"))
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--kinds", default="custom_voice,base")
    args = ap.parse_args()
    torch.set_num_threads(2)
    _install_stubs()
    from qwen_tts import Qwen3TTSModel

    t = np.arange(36000) / 24000
    ref = ((0.3 * np.sin(2 * np.pi * 180 * t)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32), 24000
    for kind in args.kinds.split(","):
        folder = Path("checkpoints") / f"{args.shape}-{kind}"
        if not (folder / "speech_tokenizer").is_dir():
            make_checkpoint(args.shape, kind, folder, seed=1, tokenizer=args.tokenizer, overwrite=True)
        ours = TTS.from_pretrained(folder, device="cpu")
        theirs = Qwen3TTSModel.from_pretrained(str(folder), dtype=torch.float32)
        captured = {}
        original = theirs.model.generate

        def spy(*a, _orig=original, _captured=captured, **k):
            codes, hidden = _orig(*a, **k)
            _captured["codes"] = codes[0]
            return codes, hidden

        theirs.model.generate = spy
        opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=args.frames)
        common = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": args.frames}
        name, voice = _case(kind, ref)
        t0 = time.perf_counter()
        r = ours.synthesize(TEXT, voice=voice, language="english", options=opts)
        t1 = time.perf_counter()
        wavs, _ = _run_official(theirs, kind, ref, common)
        t2 = time.perf_counter()
        same = r.codes.shape == captured["codes"].shape and torch.equal(r.codes, captured["codes"].cpu())
        n = min(len(r.audio), len(wavs[0]))
        diff = float(np.abs(r.audio[:n] - wavs[0][:n]).max())
        print(f"{args.shape} {kind} {name}: frames {len(r.codes)}, codes identical: {same}, "
              f"max |audio diff| {diff:.2e}, ours {t1 - t0:.1f} s, official {t2 - t1:.1f} s", flush=True)
        del ours, theirs


if __name__ == "__main__":
    main()
