"""The codec decoder's SnakeBeta activations: in place (``qtts.codec.decoder.SnakeBeta``) against the formula
written out of place, in one process, streaming chunks interleaved (CPU A/B).

    python bench/snake_ab.py [--checkpoint DIR] [--chunks 1,2,4,8] [--rounds 6] [--calls 4] [--threads 2]

Both sides run ``CodecDecoder.decode_step`` on the same random codes with a fresh state per measurement; side A
replaces every ``SnakeBeta.forward`` by ``x + 1 / (e^beta + 1e-9) * sin(x * e^alpha)^2`` as one expression (four
temporaries the size of the activation, as before session 21), side B is the library's. Reported per chunk size:
each round's milliseconds per frame (the mean of the round's ``--calls`` calls after a warm-up: a stream pays
every call, its allocations included), the median ratio B / A,
and whether the two sides' PCM is identical (it must be: the same operations in the same order).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from streaming import cpu_model, git_commit  # noqa: E402

from qtts.codec import decoder as codec_decoder  # noqa: E402


def out_of_place(self: codec_decoder.SnakeBeta, x: torch.Tensor) -> torch.Tensor:
    """SnakeBeta's formula as one out-of-place expression."""
    alpha = torch.exp(self.alpha)[None, :, None]
    beta = torch.exp(self.beta)[None, :, None]
    return x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


def ms_per_frame(decoder: codec_decoder.CodecDecoder, codes: torch.Tensor, calls: int,
                 forward: Callable) -> tuple[float, torch.Tensor]:
    """Mean milliseconds per frame of ``calls`` streaming decodes of ``codes [1, 16, t]`` (fresh state each, one
    warm-up) with ``forward`` as ``SnakeBeta.forward``; also the last call's PCM."""
    saved = codec_decoder.SnakeBeta.forward
    codec_decoder.SnakeBeta.forward = forward
    try:
        total, pcm = 0.0, None
        with torch.no_grad():
            for i in range(calls + 1):
                state = decoder.init_state(1)
                start = time.perf_counter()
                pcm = decoder.decode_step(codes, state)
                if i:
                    total += time.perf_counter() - start
    finally:
        codec_decoder.SnakeBeta.forward = saved
    return 1000 * total / calls / codes.shape[-1], pcm


def main(argv: list[str] | None = None) -> dict[int, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "0.6b-custom_voice"))
    p.add_argument("--chunks", default="1,2,4,8", help="frames per streaming decode call")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from qtts import TTS

    decoder = TTS.from_pretrained(args.checkpoint, device="cpu").codec.decoder
    print(f"# {cpu_model()}, {args.threads} torch threads, torch {torch.__version__}, qtts {git_commit()}, "
          f"checkpoint {Path(args.checkpoint).name}; {args.rounds} rounds, mean of {args.calls} calls each")
    print("| chunk frames | A (out of place) ms/frame, per round | B (in place) ms/frame, per round | B / A median "
          "| identical PCM |")
    print("|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    results = {}
    for t in (int(c) for c in args.chunks.split(",")):
        codes = torch.randint(0, 2048, (1, 16, t), generator=generator)
        a, b, same = [], [], True
        for _ in range(args.rounds):
            ms_a, pcm_a = ms_per_frame(decoder, codes, args.calls, out_of_place)
            ms_b, pcm_b = ms_per_frame(decoder, codes, args.calls, codec_decoder.SnakeBeta.forward)
            a.append(ms_a)
            b.append(ms_b)
            same = same and torch.equal(pcm_a, pcm_b)
        ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
        results[t] = {"a_ms": a, "b_ms": b, "ratio": ratio, "identical": same}
        print(f"| {t} | {', '.join(f'{x:.1f}' for x in a)} | {', '.join(f'{x:.1f}' for x in b)} | {ratio:.3f} "
              f"| {'yes' if same else '**no**'} |", flush=True)
    return results


if __name__ == "__main__":
    main()
