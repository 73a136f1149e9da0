"""Where a graphed frame step's time goes on a GPU: the kernels of one frame by kind (matrix products,
attention, compiled element-wise, copies), their device time, and the idle time between them.

Builds a random-weight model of a real shape in memory, runs one stream on a runner with the given
acceleration (default ``compile+graphs+fused``; a ``bench/frame_speed.py`` mode, variants included), then:

- ``replay``: the frame's CUDA graph replayed alone, timed with CUDA events (wall per frame on the device);
- ``kernels``: the frame step's kernels, profiled (from the graph replays where the profiler sees kernels
  inside graphs, else from the same step run without the graph) and grouped by kind, per frame;
- ``runner``: whole runner steps (frame + host work + the streaming codec chunks), profiled, per frame.

Part of ``scripts/gpu_check.sh``.  ``python3 scripts/gpu_profile.py [--shape 0.6b] [--mode compile+graphs+fused]``
(on CPU it runs the same code paths on a compiled step without graphs, for testing; the times mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/

from bench.frame_speed import mode_options, use_variants  # noqa: E402
from qtts import Speaker, SynthesisOptions  # noqa: E402
from qtts.checkpoint import random_tts  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then it keeps on running far away."
KINDS = (  # (kind, substrings of the kernel name, lower case); the first match wins
    ("attention", ("fmha", "attention", "flash", "attn")),
    ("matrix product", ("gemm", "gemv", "cutlass", "xmma", "sm90", "splitk", "cublas", "matmul", "dot_kernel")),
    ("compiled (triton)", ("triton",)),
    ("copy / fill", ("copy", "fill", "memcpy", "memset", "cat", "index", "scatter", "gather")),
    ("reduction", ("reduce", "softmax", "norm", "topk", "sort", "scan", "argmax", "max")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other element-wise"


def device_events(prof) -> list:
    """The profiled events that ran on the device (kernels, and copies / fills)."""
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def summarize(events: list, frames: int, wall_us: float | None) -> None:
    """Print kernels per frame by kind (count, device µs) and the top kernels by device time."""
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        us = e.time_range.elapsed_us()
        by_kind[kind_of(e.name)].append(us)
        by_name[e.name].append(us)
    total = sum(sum(v) for v in by_kind.values())
    count = sum(len(v) for v in by_kind.values())
    print(f"  {count / frames:.0f} kernels per frame, {total / frames:.0f} us of device time per frame"
          + (f" (wall {wall_us:.0f} us: {max(wall_us - total / frames, 0):.0f} us idle between kernels, "
             f"{max(wall_us - total / frames, 0) / max(count / frames, 1):.2f} us per kernel)" if wall_us else ""))
    print(f"  {'kind':<20}{'per frame':>10}{'us/frame':>10}{'us each':>9}")
    for kind, times in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {kind:<20}{len(times) / frames:>10.1f}{sum(times) / frames:>10.1f}"
              f"{statistics.mean(times):>9.2f}")
    print("  top kernels by device time (per frame: count, us):")
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:14]:
        print(f"    {len(times) / frames:6.1f} {sum(times) / frames:8.1f}  {name[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="0.6b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--mode", default="compile+graphs+fused")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--max-frames", type=int, default=512, help="cache slots per stream (the library's default: 2048)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = args.mode if device.type == "cuda" else "+".join(
        p for p in args.mode.split("+") if p not in ("graphs", "cuda-graphs", "codec-stream"))
    options = mode_options(mode, device, args.max_frames)  # also the internal variants (e.g. predictor-matmul)
    use_variants(mode)
    tts = random_tts(args.shape, "custom_voice", device, getattr(torch, args.dtype))
    tts.set_accel(options)
    runner = tts.new_runner(1)
    opts = SynthesisOptions(max_new_tokens=8 * args.frames + 64)
    runner.submit(tts.prepare(TEXT, voice=Speaker(tts.speakers[0]), seed=0, options=opts).job(lambda _c: None))
    t0 = time.perf_counter()
    for _ in range(12):  # admission + prefill, warm-up / compile / capture, the first chunks
        runner.step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    print(f"{args.shape} {args.dtype} {args.mode} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
          f", torch {torch.__version__}: first 12 steps {time.perf_counter() - t0:.1f} s", flush=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step_fn, n = runner.step_fn, args.frames

    graph = None
    if getattr(step_fn, "graphs", None):  # the one-stream graph of the span the stream reads now
        span = step_fn.span(runner.state, int(runner.state.positions[0]) + 1)
        graph = step_fn.graphs[(1, span)][0]
    replay_us = None
    if graph is not None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(n):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000)
        replay_us = statistics.median(times)
        print(f"replay: {replay_us:.0f} us per frame (median of {n}, CUDA events)", flush=True)
        with profile(activities=activities) as prof:
            for _ in range(n):
                graph.replay()
            sync()
        events = device_events(prof)
        print(f"kernels (graph replays; {len(events)} device events seen):", flush=True)
        if events:
            summarize(events, n, replay_us)
    if graph is None or not events:
        state = runner.state
        with profile(activities=activities) as prof:
            for _ in range(n):
                step_fn(state, 1, step_fn.span(state, int(state.positions[0]) + 1))
            sync()
        events = device_events(prof)
        print(f"kernels (the step without its graph; {len(events)} device events):", flush=True)
        if events:
            summarize(events, n, replay_us)

    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            runner.step()
        sync()
        wall = (time.perf_counter() - t0) / n * 1e6
    events = device_events(prof)
    print(f"runner steps (frame, host work, codec chunks; {wall:.0f} us wall per step under the profiler):",
          flush=True)
    if events:
        summarize(events, n, None)


if __name__ == "__main__":
    main()
