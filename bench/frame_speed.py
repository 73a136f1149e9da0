"""Frame-step speed of the engine: eager vs compiled vs CUDA-graphed, batch sizes, time to first audio.

Builds a random-weight model of a real shape in memory (``qtts.checkpoint.random_tts``) and, per mode:

- ``capture``: seconds of warm-up / compile / capture on the first frames (once per runner);
- ``frame_ms[B]``: steady per-frame wall time of a runner step with B live streams (median over frames;
  includes the one device->host transfer per frame), and ``frames_per_s[B]`` = B / frame time (aggregate audio
  seconds per wall second = frames_per_s / 12.5). Streams are sampled, and a random model may sample EOS early:
  other seeds are tried until all B live through the timed frames (``streams_ended[B]`` counts those lost anyway;
  session 17's tiny-deep run timed empty steps at 0.008 ms before this);
- ``ttfa_ms`` / ``rtf``: one stream through ``tts.stream`` (pooled runner, already warm): time to its first
  chunk (1 frame) and wall time per audio second over the whole stream, medians of ``STREAM_RUNS`` runs
  (``ttfa_ms_runs``: each run's);
- ``codes_match_first``: greedy codes equal the first mode's (same requests). Random weights give near-ties, so
  in bfloat16 any other kernel or fusion may flip a pick; code parity with eager is tested in float32 (tests/);
- ``x_realtime_long`` (``--long N``): audio seconds per wall second of one stream of N frames;
- ``stream_frames`` / ``long_frames``: the frames those greedy streams made (fewer if a random model picked EOS).

Usage: ``python bench/frame_speed.py --shape 0.6b --device cuda --dtype bfloat16 --modes eager,graphs,graphs+fused``
(a mode is ``eager`` or parts joined by ``+``: compile, graphs, fused, row-kernels, codec-stream, and the internal
variants predictor-matmul / -sdpa, talker-matmul / -sdpa (how compiled blocks attend: plain products or torch's
fused kernel), gqa / stacked-heads (torch's GQA call, or query heads stacked per KV head), pairwise-filter /
sort-filter (how compiled sampling filters), row-products / linear-products (how compiled regions multiply one or
two rows), rows-to-8 / rows-to-2 (up to how many rows the row products take: ``gemv.CUDA_MAX_ROWS``), autotune
(inductor's max_autotune_gemm), span-buckets / whole-cache (how many cache slots graphed talker attention reads:
``accel.GRAPH_SPANS``), seven-block-regions / one-block-regions (talker blocks per
compiled call in frames: ``accel.TALKER_REGION_BLOCKS``) and static-regions / dynamic-regions (frame regions
compiled for static shapes or left to dynamo's automatic dynamic shapes: ``accel.STATIC_REGIONS``); a mode without a
variant part takes the library's default).
Absolute times only mean something on a GPU; on CPU compare modes within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import torch

from qtts import Sampling, Speaker, SynthesisOptions, accel, gemv, sampling
from qtts.accel import AccelOptions, parse_accel
from qtts.checkpoint import random_tts
from qtts.model import layers
from qtts.quant import quantize_int8_

STREAM_RUNS = 3  # TTFA and x real time: the median of this many runs of one stream (session 17 timed one: 22-25 ms)
TEXT = "The quick brown fox jumps over the lazy dog, and then it keeps on running far away."


# Mode parts that are not ``--accel`` parts: internal choices A/B'd here (how the compiled step attends and
# filters on CUDA; see qtts.accel.CUDA_ATTENTION, qtts.model.layers.STACK_GROUPED_HEADS, qtts.sampling.CUDA_FILTER).
# A part sets its choice; a mode without one keeps the library's default.
VARIANTS = {
    "predictor-matmul": ("predictor", "matmul"), "predictor-sdpa": ("predictor", "sdpa"),
    "talker-matmul": ("talker", "matmul"), "talker-sdpa": ("talker", "sdpa"),
    "gqa": ("stack", False), "stacked-heads": ("stack", True),
    "pairwise-filter": ("filter", "pairwise"), "sort-filter": ("filter", "sort"),
    "row-products": ("products", "rows"), "linear-products": ("products", "linear"),
    "rows-to-8": ("cuda_max_rows", 8), "rows-to-2": ("cuda_max_rows", 2),
    "autotune": ("options", {"max_autotune_gemm": True}),
    "span-buckets": ("spans", "buckets"), "whole-cache": ("spans", "whole"),
    "seven-block-regions": ("region_blocks", 7), "one-block-regions": ("region_blocks", 1),
    "static-regions": ("static_regions", True), "dynamic-regions": ("static_regions", False),
}
DEFAULTS = {"predictor": accel.CUDA_ATTENTION["predictor"], "talker": accel.CUDA_ATTENTION["talker"],
            "stack": layers.STACK_GROUPED_HEADS, "filter": sampling.CUDA_FILTER, "products": accel.CUDA_PRODUCTS,
            "options": dict(accel.CUDA_COMPILE_OPTIONS), "spans": accel.GRAPH_SPANS,
            "cuda_max_rows": gemv.CUDA_MAX_ROWS,
            "region_blocks": accel.TALKER_REGION_BLOCKS["cuda"], "static_regions": accel.STATIC_REGIONS["cuda"]}


def mode_options(mode: str, device: torch.device, max_frames: int = 512) -> AccelOptions:
    """The acceleration of a mode: ``eager`` or ``--accel`` parts joined by ``+`` (``graphs`` short for
    ``cuda-graphs``), e.g. ``compile+graphs+fused``, plus any ``VARIANTS``; ``max_frames`` cache slots per stream
    (sessions 6-10 measured with 512; the library's default is 2048)."""
    parts = ["cuda-graphs" if p == "graphs" else p for p in mode.split("+") if p not in VARIANTS]
    return dataclasses.replace(parse_accel(",".join(parts) or "eager", device), max_frames=max_frames)


def use_variants(mode: str) -> None:
    """Set the internal choices of ``mode`` 's ``VARIANTS`` parts (the library defaults for the others)."""
    choice = dict(DEFAULTS)
    choice.update(VARIANTS[p] for p in mode.split("+") if p in VARIANTS)
    accel.CUDA_ATTENTION.update(talker=choice["talker"], predictor=choice["predictor"])
    layers.STACK_GROUPED_HEADS = choice["stack"]
    sampling.CUDA_FILTER = choice["filter"]
    accel.CUDA_PRODUCTS = choice["products"]
    gemv.CUDA_MAX_ROWS = choice["cuda_max_rows"]
    accel.CUDA_COMPILE_OPTIONS = dict(choice["options"])
    accel.GRAPH_SPANS = choice["spans"]
    accel.TALKER_REGION_BLOCKS["cuda"] = choice["region_blocks"]
    accel.STATIC_REGIONS["cuda"] = choice["static_regions"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def frame_times(tts, batch: int, frames: int, warmup: int, seed: int = 0) -> tuple[float, float, int]:
    """(first-step seconds incl. admission + prefill + capture, median steady frame seconds, fewest live streams
    over the timed frames) for ``batch`` sampled streams (seeds ``seed + i``) on a fresh runner."""
    runner = tts.new_runner(batch)
    opts = SynthesisOptions(max_new_tokens=frames + warmup + 8)
    for i in range(batch):
        prepared = tts.prepare(TEXT, voice=Speaker(tts.speakers[i % len(tts.speakers)]), seed=seed + i, options=opts)
        runner.submit(prepared.job(lambda _item: None))
    t0 = time.perf_counter()
    runner.step()
    first = time.perf_counter() - t0
    times, live = [], batch
    for k in range(frames + warmup):
        t0 = time.perf_counter()
        runner.step()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            live = min(live, len(runner.live))
    for job in runner.live + runner.waiting:
        job.cancel()
    runner.step()
    return first, statistics.median(times), live


def full_frame_times(tts, batch: int, frames: int, warmup: int, tries: int = 4) -> tuple[float, float, int]:
    """``frame_times`` of ``batch`` streams that all live through the timed frames: a random model may sample
    EOS early, and a step with fewer (or no) streams is not a frame of ``batch``; other seeds are tried, up to
    ``tries`` runs. The first run's first-step seconds (its compilation and capture) are reported; the fewest
    live streams are those of the last run (``batch`` unless every try lost a stream)."""
    first, steady, live = frame_times(tts, batch, frames, warmup)
    for attempt in range(1, tries):
        if live == batch:
            break
        _, steady, live = frame_times(tts, batch, frames, warmup, seed=1000 * attempt)
    return first, steady, live


def stream_once(tts, frames: int) -> tuple[float, float, torch.Tensor]:
    """(ttfa s, rtf, codes) of one greedy stream of ``frames`` frames."""
    opts = SynthesisOptions(max_new_tokens=frames + 1, sampling=Sampling.greedy())
    t0 = time.perf_counter()
    chunks = list(tts.stream(TEXT, voice=Speaker(tts.speakers[0]), seed=0, options=opts))
    wall = time.perf_counter() - t0
    audio = sum(len(c.audio) for c in chunks) / tts.sample_rate
    return chunks[0].elapsed, wall / audio, torch.cat([c.codes for c in chunks])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--modes", default="eager,graphs")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--long", type=int, default=0,
                    help="also time one stream of this many frames (x real time of a long utterance)")
    ap.add_argument("--quantize", default="none", choices=["none", "int8"],
                    help="weight-only int8 of the talker's and predictor's linear layers (as --quantize int8)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-frames", type=int, default=512,
                    help="cache slots per stream with static shapes (512 in sessions 6-10; the library default: 2048)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    # Bad modes fail before the build.
    modes = {mode: mode_options(mode, device, args.max_frames) for mode in args.modes.split(",")}
    t0 = time.perf_counter()
    tts = random_tts(args.shape, "custom_voice", device, dtype)
    if args.quantize == "int8":
        tts.quantization = quantize_int8_(tts.model)
    report: dict = {
        "shape": args.shape, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "dtype": args.dtype, "quantize": args.quantize, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "max_frames": args.max_frames, "build_s": round(time.perf_counter() - t0, 1), "modes": {},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "modes"}), flush=True)
    reference = None
    static = accel.STATIC_REGIONS["cuda"]
    for mode, options in modes.items():
        use_variants(mode)
        if accel.STATIC_REGIONS["cuda"] != static:
            # Graphs compiled by the earlier modes live on the same functions, and their guards would let this mode
            # replay them: only a fresh dynamo cache shows what this setting compiles.
            torch._dynamo.reset()
            static = accel.STATIC_REGIONS["cuda"]
        tts.set_accel(options)
        entry: dict = {"frame_ms": {}, "frames_per_s": {}, "first_step_s": {},
                       "pipelined": tts.new_runner(1).pipelined}
        for b in batches:
            first, steady, live = full_frame_times(tts, b, args.frames, warmup=3)
            if live < b:  # reported, not hidden: these frames ran fewer streams than the column says
                entry.setdefault("streams_ended", {})[b] = b - live
            entry["first_step_s"][b] = round(first, 3)
            entry["frame_ms"][b] = round(1000 * steady, 3)
            entry["frames_per_s"][b] = round(b / steady, 1)
            print(mode, b, entry["frame_ms"][b], "ms/frame", flush=True)
        stream_once(tts, 8)  # warm the pooled single-stream runner (capture happens here, once)
        runs = [stream_once(tts, args.frames) for _ in range(STREAM_RUNS)]  # the same greedy stream each time
        ttfa, rtf = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        codes = runs[0][2]
        entry["ttfa_ms"] = round(1000 * ttfa, 2)
        entry["ttfa_ms_runs"] = [round(1000 * r[0], 2) for r in runs]
        entry["rtf"] = round(rtf, 4)
        entry["x_realtime"] = round(1 / rtf, 2)
        entry["stream_frames"] = int(codes.shape[0])  # fewer than --frames: the greedy stream ended on EOS
        if reference is None:
            reference = codes
        entry["codes_match_first"] = bool(torch.equal(codes, reference))
        if args.long:
            _, rtf_long, long_codes = stream_once(tts, args.long)
            entry["x_realtime_long"] = {args.long: round(1 / rtf_long, 2)}
            entry["long_frames"] = int(long_codes.shape[0])
        report["modes"][mode] = entry
        print(mode, json.dumps(entry), flush=True)
        if args.out:  # after every mode, so a run cut short keeps what it measured
            with open(args.out, "w") as f:
                f.write(json.dumps(report, indent=2))
    _sync(device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
