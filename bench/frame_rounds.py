"""The single-stream frame step of several configurations, measured in alternating rounds (CPU noise check).

    python bench/frame_rounds.py [--checkpoint DIR] [--configs float32:compile+row-kernels,...] [--rounds 3]
                                 [--frames 12] [--threads 2] [--batch 1] [--official]

On a shared machine one pass per configuration (what ``bench/suite.py`` does) can land in a slow phase: the
same configuration measured minutes apart moved by up to 40 % on the development machine. Here every round
runs each configuration once, in a fresh process (``--child``), one after the other, so a slow phase hits
all of them; the report gives each configuration's median, best and worst round. ``--official`` adds the
official ``qwen-tts`` package's steady frame (float32 and bfloat16, measured the way the suite does) to each
round, and the ratios to it are taken within the round.

The floor is taken in the same way: each of our configurations' processes also measures the read bandwidth
(best of three sums of a 1 GiB tensor) just before and just after its frames, and reports its frame time over
its own floor (weight bytes per frame / the better of those two rates, ``suite.frame_weight_bytes``), so a
slow phase of the memory system moves the frame and its floor together.

A configuration is ``dtype:accel`` with ``dtype`` one of float32, bfloat16, int8 (float32 weights quantized)
and ``accel`` an ``--accel`` value with ``+`` for sets (``eager``, ``row-kernels``, ``compile+row-kernels``).
``--batch B`` measures the frame step of B live streams instead of one, and a configuration suffix ``@B`` (e.g.
``bfloat16:compile+row-kernels+packed@8``) sets it for that configuration alone, so one round can compare a
batch with a single stream; the report adds frames per second (B × 1000 / frame ms; the floor stays one read
of the weights per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_CONFIGS = "float32:compile+row-kernels,bfloat16:compile+row-kernels,int8:compile+row-kernels"


def child(checkpoint: str, config: str, frames: int, threads: int, batch: int = 1) -> dict:
    """One measurement in this process: ``config``'s steady frame step with ``batch`` streams, or the official
    package's (one stream)."""
    import torch

    torch.set_num_threads(threads)
    from suite import DTYPES, Memory, frame_weight_bytes, measure_official, read_bandwidth, runner_rate

    from qtts import TTS
    from qtts.accel import parse_accel

    config, _, rows = config.partition("@")
    batch = int(rows) if rows else batch
    dtype_name, accel = config.split(":")
    if accel == "official":
        out = measure_official(Path(checkpoint), DTYPES[dtype_name][0], torch.device("cpu"), frames,
                               Memory(torch.device("cpu")))
        return {"frame_ms": out[0]["frame_ms"]}
    dtype, quantize = DTYPES[dtype_name]
    tts = TTS.from_pretrained(checkpoint, device="cpu", dtype=dtype, quantize=quantize)
    tts.set_accel(parse_accel(accel.replace("+", ","), "cpu"))
    runner_rate(tts, batch, 2)  # warm-up: compilation, first frames
    cpu = torch.device("cpu")
    before = read_bandwidth(cpu)
    frame_ms = runner_rate(tts, batch, frames)["frame_ms"]
    read = max(before, read_bandwidth(cpu))
    floor_ms = 1000 * frame_weight_bytes(tts)["total"] / read
    return {"frame_ms": frame_ms, "floor_ms": floor_ms, "read_gb_s": read / 1e9, "batch": batch}


def _batch_ratios(times: dict[str, list[float]], batches: dict[str, int], rounds: int) -> None:
    """Per dtype with batched and single-stream configurations: the batch's throughput over one stream's, each
    the best of its configurations, within each round (both in the same phase of the machine)."""
    for dtype in sorted({c.split(":")[0] for c in times}):
        mine = {c: ts for c, ts in times.items() if c.split(":")[0] == dtype and not c.endswith(":official")}
        big = {c: ts for c, ts in mine.items() if batches.get(c, 1) > 1}
        one = {c: ts for c, ts in mine.items() if batches.get(c, 1) == 1}
        if not big or not one:
            continue
        ratios = [max(1000 * batches[c] / ts[r] for c, ts in big.items()) / max(1000 / ts[r] for ts in one.values())
                  for r in range(rounds)]
        print(f"{dtype}: batched ÷ one stream, frames per second, best configuration of each within each round: "
              f"median {statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "0.6b-custom_voice"))
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="live streams per frame step (ours)")
    p.add_argument("--official", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.checkpoint, args.child, args.frames, args.threads, args.batch)))
        return
    from streaming import cpu_model, git_commit

    configs = args.configs.split(",")
    if args.official:
        configs += sorted({f"{c.split(':')[0]}:official" for c in configs if c.split(":")[0] != "int8"})
    times: dict[str, list[float]] = {c: [] for c in configs}
    batches: dict[str, int] = {}
    floors: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}  # (floor ms, read GB/s)
    for r in range(args.rounds):
        for config in configs:
            cmd = [sys.executable, __file__, "--child", config, "--checkpoint", args.checkpoint,
                   "--frames", str(args.frames), "--threads", str(args.threads), "--batch", str(args.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            result = json.loads(line[7:])
            times[config].append(result["frame_ms"])
            batches[config] = result.get("batch", 1)
            if "floor_ms" in result:
                floors[config].append((result["floor_ms"], result["read_gb_s"]))
            print(f"round {r + 1}: {config} {times[config][-1]:.1f} ms", file=sys.stderr)
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, {args.threads} torch threads, {args.rounds} rounds of "
          f"{args.frames} frames, {args.batch} stream(s) per step unless a configuration says @B, qtts "
          f"{git_commit()}, checkpoint {Path(args.checkpoint).name}")
    print("| configuration | streams | median ms | best | worst | rounds | frames/s (median) |")
    print("|---|---|---|---|---|---|---|")
    for config, ts in times.items():
        b = batches.get(config, 1)
        print(f"| {config} | {b} | {statistics.median(ts):.1f} | {min(ts):.1f} | {max(ts):.1f} | "
              f"{', '.join(f'{t:.0f}' for t in ts)} | {1000 * b / statistics.median(ts):.2f} |")
    for config, fl in floors.items():
        if fl:
            ratios = [t / f for t, (f, _) in zip(times[config], fl, strict=True)]
            print(f"{config} ÷ floor (read bandwidth in the same process, {', '.join(f'{b:.1f}' for _, b in fl)} "
                  f"GB/s; floor {statistics.median(f for f, _ in fl):.1f} ms median): median "
                  f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]")
    _batch_ratios(times, batches, args.rounds)
    for config, ts in times.items():
        dtype, accel = config.partition("@")[0].split(":")
        ref = times.get(f"{'float32' if dtype == 'int8' else dtype}:official")
        if ref and accel != "official":
            ratios = [t / o for t, o in zip(ts, ref, strict=True)]
            print(f"{config} ÷ official (within each round): median {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}–{max(ratios):.2f}]")


if __name__ == "__main__":
    main()
