"""Command line: ``qtts speak``, ``qtts clone-prompt``, ``qtts make-checkpoint``, ``qtts serve``,
``qtts profile``.

Without ``--model`` the commands use the offline demo checkpoint: a tiny, seeded, *untrained* random model
generated on first use — it runs anywhere in seconds but sounds like noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from .accel import ACCEL_HELP
from .errors import QttsError
from .shapes import SHAPES


def _atomic_write_wav(path: Path, audio, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".wav", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Progress:
    """A one-line frame counter on stderr (only when stderr is a terminal, or when forced)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.frames, self.start = enabled, 0, time.perf_counter()

    def __call__(self, _row: int) -> None:
        self.frames += 1
        if self.enabled and self.frames % 5 == 0:
            secs = self.frames * 0.08
            rate = secs / max(time.perf_counter() - self.start, 1e-9)
            print(f"\r  {self.frames} frames, {secs:.1f} s of audio ({rate:.2f}x real time)", end="",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.frames:
            print(file=sys.stderr)


def _load(args: argparse.Namespace):
    from .accel import parse_accel
    from .api import TTS
    from .checkpoint import default_checkpoint

    model = args.model
    if model is None:
        kind = args.kind or ("base" if getattr(args, "ref_audio", None) else "custom_voice")
        model = default_checkpoint(kind)
        print(f"note: no --model given; using the offline demo checkpoint {model} "
              "(tiny, random, untrained: it sounds like noise)", file=sys.stderr)
    tts = TTS.from_pretrained(model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    tts.set_accel(parse_accel(getattr(args, "accel", None), tts.device))
    return tts


def _voice(tts, args: argparse.Namespace):
    from .voices import Clone, Design, Speaker

    if args.ref_audio:
        return Clone(args.ref_audio, args.ref_text, x_vector_only=args.x_vector_only)
    if args.voice is None:
        return None
    if tts.kind == "base":
        return Clone.load(args.voice)
    if tts.kind == "voice_design":
        return Design(args.voice)
    return Speaker(args.voice)


def cmd_speak(args: argparse.Namespace) -> int:
    from .api import SynthesisOptions
    from .request import Sampling

    tts = _load(args)
    progress = _Progress(args.progress or sys.stderr.isatty())
    options = SynthesisOptions(
        sampling=Sampling.greedy() if args.greedy else None, max_new_tokens=args.max_frames, on_frame=progress,
    )
    if args.stream:
        from .cli_stream import speak_stream

        return speak_stream(tts, args, _voice(tts, args), options, progress)
    args.output = args.output or "out.wav"
    start = time.perf_counter()
    result = tts.synthesize(args.text, voice=_voice(tts, args), language=args.language, instruct=args.instruct,
                            seed=args.seed, options=options)
    progress.close()
    elapsed = time.perf_counter() - start
    _atomic_write_wav(Path(args.output), result.audio, result.sample_rate)
    speed = result.duration / max(elapsed, 1e-9)
    print(f"wrote {args.output}: {result.duration:.2f} s of audio, {len(result.codes)} frames, "
          f"finish={result.finish_reason}, {elapsed:.2f} s wall ({speed:.2f}x real time)", file=sys.stderr)
    return 0


def cmd_clone_prompt(args: argparse.Namespace) -> int:
    tts = _load(args)
    prompt = tts.create_clone_prompt(args.ref_audio, args.ref_text, args.x_vector_only)
    prompt.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import make_checkpoint

    out = make_checkpoint(args.shape, args.kind, args.out, seed=args.seed, tokenizer=args.tokenizer,
                          overwrite=args.overwrite)
    print(f"wrote random {args.shape} {args.kind} checkpoint (untrained) to {out}", file=sys.stderr)
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder or Hugging Face repo id (default: offline tiny demo)")
    p.add_argument("--kind", choices=["base", "custom_voice", "voice_design"],
                   help="kind of the offline demo checkpoint when --model is not given")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="float32 / bfloat16 / float16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: weight-only int8 talker/predictor linear layers (opt-in; see BENCHMARKS.md)")
    p.add_argument("--accel", default="auto", help=ACCEL_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("speak", help="synthesize text to a WAV file")
    sp.add_argument("text")
    sp.add_argument("-o", "--output", help="WAV file to write (default out.wav; with --stream and no -o, audio "
                    "plays on the sound device when there is one)")
    sp.add_argument("--voice", help="speaker name (CustomVoice), description (VoiceDesign) or clone prompt file")
    sp.add_argument("--language", default="auto")
    sp.add_argument("--instruct", help="instruction (CustomVoice 1.7B) or voice description (VoiceDesign)")
    sp.add_argument("--ref-audio", help="reference audio to clone (Base)")
    sp.add_argument("--ref-text", help="transcript of the reference audio")
    sp.add_argument("--x-vector-only", action="store_true", help="clone from the speaker embedding only")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--greedy", action="store_true", help="deterministic decoding")
    sp.add_argument("--max-frames", type=int, help="frame budget (80 ms each)")
    sp.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    sp.add_argument("--stream", action="store_true",
                    help="stream: play as audio is generated (or write -o progressively); prints TTFA and RTF")
    sp.add_argument("--chunk-frames", type=int, default=1, help="frames in the first streamed chunk (default 1; "
                    "later chunks double up to max(8, N))")
    _model_args(sp)
    sp.set_defaults(func=cmd_speak)

    cp = sub.add_parser("clone-prompt", help="compute a reusable voice-clone prompt file")
    cp.add_argument("--ref-audio", required=True)
    cp.add_argument("--ref-text")
    cp.add_argument("--x-vector-only", action="store_true")
    cp.add_argument("-o", "--output", required=True)
    _model_args(cp)
    cp.set_defaults(func=cmd_clone_prompt)

    mk = sub.add_parser("make-checkpoint", help="write a seeded random-weight checkpoint (untrained)")
    mk.add_argument("--shape", choices=list(SHAPES), required=True)
    mk.add_argument("--kind", choices=["base", "custom_voice", "voice_design"], required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--tokenizer", help="folder with the real Qwen vocab.json/merges.txt/tokenizer_config.json")
    mk.add_argument("--overwrite", action="store_true")
    mk.set_defaults(func=cmd_make_checkpoint)

    from .server.main import add_arguments, cmd_serve

    sv = sub.add_parser("serve", help="run the OpenAI-compatible speech server (needs qtts[server])")
    add_arguments(sv)
    _model_args(sv)
    sv.set_defaults(func=cmd_serve)

    from . import profile

    pf = sub.add_parser("profile", help="time one synthesis by component (prefill, talker, predictor, sampling, "
                        "codec)")
    profile.add_arguments(pf)
    _model_args(pf)
    pf.set_defaults(func=profile.cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QttsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
