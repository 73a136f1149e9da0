"""Two configurations of the frame step in one process, their frames interleaved (CPU A/B).

    python bench/frame_ab.py --a bfloat16:compile+row-kernels --b bfloat16:compile+row-kernels+fused
                             [--checkpoint DIR] [--rounds 6] [--frames 8] [--threads 2]

On the shared development machine the memory system changes speed by up to ~2x from one minute to the next, so
two processes run minutes apart (``bench/frame_rounds.py``) cannot tell a 5 % change from the machine's drift
(the same 8-stream step took 411 ms in one run and 534 ms in the next). Here both configurations are loaded in
one process (two models from the same checkpoint), compiled once each, and measured in alternation,
``--frames`` frames at a time, for ``--rounds`` rounds: a phase of the machine hits both within a second.
Reported: each round's frame times, the median of the per-round ratios B / A, and the read bandwidth and floor
at the end.

A configuration is ``dtype:accel`` (as in ``frame_rounds.py``: dtype float32, bfloat16 or int8; ``accel`` an
``--accel`` value with ``+`` for sets), optionally followed by
- ``@streams=N``: the row kernels' weight streams per loop (``qtts.gemv.STREAMS``) for its weight dtype;
- ``@routing=intel|other``: which products take the row kernels (``qtts.gemv.MAX_ROWS``, ``MAX_WIDTH``,
  ``MAX_IN``) as on an Intel CPU or on any other, both with AVX-512 (``qtts.gemv.default_routing``);
- ``@max-rows=N`` / ``@max-width=N``: products of up to N activation rows / N activation elements of its weight
  dtype take the row kernels (``qtts.gemv.MAX_ROWS`` / ``MAX_WIDTH``; after any ``@routing``);
- ``@accumulators=N``: the row kernels' most accumulators (rows x weight streams) per loop for its weight dtype
  (``qtts.gemv.ACCUMULATORS``; regions take the fusion size to match: ``accel.region_compile_options``);
- ``@fma=off`` / ``@fma=on``: its compiled regions without / with FMA contraction (``qtts.accel.CPU_FMA_OPTIONS``,
  as ``qtts.accel.cpu_fma_options`` resolves it; on by default);
- ``@opt=NAME:VALUE``: an integer or true/false inductor option in its compiled regions, e.g.
  ``@opt=realize_reads_threshold:1``;
- ``@batch=B``: the step of B live streams instead of one (the report then adds frames per second,
  B × 1000 / step ms);
- ``@threads=N``: its frames on N torch threads instead of ``--threads`` (e.g. the same configuration on 1 and 2
  threads: what a second core buys, and with a ``tiny-deep`` checkpoint what the host's per-call work costs);
- ``@min-weights=N``: the weight-size thresholds below which products keep torch's plain kernels
  (``qtts.gemv.MIN_WEIGHTS``, ``qtts.packed.MIN_WEIGHTS``, ``qtts.quant.CPU_MIN_INT8PACK_WEIGHTS``; 2^18) set to N:
  with a ``tiny-deep`` checkpoint, ``@min-weights=0`` routes its small products as the 0.6b's are routed (row
  kernels, packed weights, int8pack), so that its frame makes the calls a 0.6b frame makes;
- ``@region-blocks=N``: its frames' talker blocks N at a time in one compiled call
  (``qtts.accel.TALKER_REGION_BLOCKS["cpu"]``; 1: each block its own call).
These hold while the side is built and measured (dynamo guards on the streams, so each side replays its own
compiled code). Two configurations that compile the same way share compiled code: that is what they would do
in one server too. Each runner preallocates ``MAX_FRAMES`` cache slots per stream instead of the library's
2048 (a round's streams use a few dozen, and attention reads only the slots in use), so that two float32
models with 8 streams each fit in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MAX_FRAMES = 256  # cache slots per stream in each side's runners (the library default is 2048)


class Side:
    """One configuration: its model, and what to set while it runs."""

    def __init__(self, config: str, checkpoint: str) -> None:
        import torch
        from suite import DTYPES

        from qtts import TTS, accel, gemv
        from qtts.accel import parse_accel

        self.config = config
        config, _, extra = config.partition("@")
        dtype_name, accel_parts = config.split(":")
        dtype, quantize = DTYPES[dtype_name]
        weight = torch.int8 if quantize else dtype  # the linear layers' weight dtype
        self.streams = dict(gemv.STREAMS)
        self.routing = gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN
        self.batch = 1
        self.threads: int | None = None  # None: the process's (--threads)
        self.min_weights: int | None = None  # None: the library's thresholds
        self.region_blocks = accel.TALKER_REGION_BLOCKS["cpu"]
        self.cpu_options = dict(accel.CPU_COMPILE_OPTIONS)
        self.max_rows: int | None = None  # None: the routing's
        self.max_width: int | None = None  # None: the routing's
        self.accumulators = dict(gemv.ACCUMULATORS)
        for item in filter(None, extra.split("@")):
            key, _, value = item.partition("=")
            if key == "min-weights":
                if not value.isdigit():
                    raise SystemExit(f"configuration suffix {item!r}: use @min-weights=N with N a whole number >= 0")
                self.min_weights = int(value)
            elif key == "routing" and value in ("intel", "other"):
                self.routing = gemv.default_routing("GenuineIntel" if value == "intel" else "")
            elif key in ("streams", "batch", "threads", "region-blocks", "max-rows", "max-width", "accumulators"):
                if not (value.isdigit() and int(value) >= 1):
                    n = "B" if key == "batch" else "N"
                    raise SystemExit(f"configuration suffix {item!r}: use @{key}={n} with {n} a whole number >= 1")
                if key == "streams":
                    self.streams[weight] = int(value)
                elif key == "batch":
                    self.batch = int(value)
                elif key == "region-blocks":
                    self.region_blocks = int(value)
                elif key == "max-rows":
                    self.max_rows = int(value)
                elif key == "max-width":
                    self.max_width = int(value)
                elif key == "accumulators":
                    self.accumulators[weight] = int(value)
                else:
                    self.threads = int(value)
            elif key == "fma" and value in ("on", "off"):
                self.cpu_options = {**self.cpu_options, **accel.CPU_FMA_OPTIONS} if value == "on" else {
                    k: v for k, v in self.cpu_options.items() if k not in accel.CPU_FMA_OPTIONS}
            elif key == "opt" and ":" in value:
                name, _, text = value.partition(":")
                flag = {"true": True, "false": False}.get(text.lower())
                if flag is None and not text.lstrip("-").isdigit():
                    raise SystemExit(f"configuration suffix {item!r}: the value must be an integer, true or false")
                self.cpu_options = {**self.cpu_options, name: int(text) if flag is None else flag}
            else:
                raise SystemExit(f"unknown configuration suffix {item!r} (use @streams=N, @routing=intel|other, "
                                 "@batch=B, @threads=N, @max-rows=N, @max-width=N, @accumulators=N, @region-blocks=N, "
                                 "@min-weights=N, @fma=on|off or @opt=inductor_option:integer|true|false)")
        if self.max_rows is not None:
            self.routing = ({**self.routing[0], weight: self.max_rows}, *self.routing[1:])
        if self.max_width is not None:
            self.routing = (self.routing[0], {**self.routing[1], weight: self.max_width}, self.routing[2])
        self.tts = TTS.from_pretrained(checkpoint, device="cpu", dtype=dtype, quantize=quantize)
        with self.active():
            options = parse_accel(accel_parts.replace("+", ","), "cpu")
            self.tts.set_accel(dataclasses.replace(options, max_frames=MAX_FRAMES))
            self.frame_ms(2)  # warm-up: compilation, first frames

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """A context in which this side's settings hold."""
        import torch

        from qtts import accel, gemv, packed, quant

        saved = gemv.STREAMS, accel.CPU_COMPILE_OPTIONS, torch.get_num_threads(), dict(accel.TALKER_REGION_BLOCKS)
        saved_routing = gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN, gemv.ACCUMULATORS
        gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN = self.routing
        gemv.ACCUMULATORS = self.accumulators
        sizes = gemv.MIN_WEIGHTS, packed.MIN_WEIGHTS, quant.CPU_MIN_INT8PACK_WEIGHTS
        gemv.STREAMS, accel.CPU_COMPILE_OPTIONS = self.streams, self.cpu_options
        accel.TALKER_REGION_BLOCKS["cpu"] = self.region_blocks
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.min_weights is not None:
            gemv.MIN_WEIGHTS = packed.MIN_WEIGHTS = quant.CPU_MIN_INT8PACK_WEIGHTS = self.min_weights
        try:
            yield
        finally:
            gemv.STREAMS, accel.CPU_COMPILE_OPTIONS = saved[:2]
            torch.set_num_threads(saved[2])
            accel.TALKER_REGION_BLOCKS.clear()
            accel.TALKER_REGION_BLOCKS.update(saved[3])
            gemv.MIN_WEIGHTS, packed.MIN_WEIGHTS, quant.CPU_MIN_INT8PACK_WEIGHTS = sizes
            gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN, gemv.ACCUMULATORS = saved_routing

    def frame_ms(self, frames: int) -> float:
        from suite import runner_rate

        with self.active():
            return runner_rate(self.tts, self.batch, frames)["frame_ms"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "0.6b-custom_voice"))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from streaming import cpu_model, git_commit
    from suite import frame_weight_bytes, read_bandwidth

    a, b = Side(args.a, args.checkpoint), Side(args.b, args.checkpoint)
    print(f"# {cpu_model()}, {args.threads} torch threads, torch {torch.__version__}, qtts {git_commit()}, "
          f"checkpoint {Path(args.checkpoint).name}; {args.rounds} rounds of {args.frames} frames each")
    print(f"A = {a.config}, B = {b.config}")
    print("| round | A ms | B ms | B / A |")
    print("|---|---|---|---|")
    rows = []
    for r in range(args.rounds):
        row = (a.frame_ms(args.frames), b.frame_ms(args.frames))
        rows.append(row)
        print(f"| {r + 1} | {row[0]:.1f} | {row[1]:.1f} | {row[1] / row[0]:.3f} |", flush=True)
    read = read_bandwidth(torch.device("cpu"))
    floor = {side.config: 1000 * frame_weight_bytes(side.tts)["total"] / read for side in (a, b)}
    ratios = [y / x for x, y in rows]
    if a.batch != 1 or b.batch != 1:  # frames per second: B × 1000 / step ms
        rate_a, rate_b = ([side.batch * 1000 / row[i] for row in rows] for i, side in enumerate((a, b)))
        print(f"frames per second (median): A {statistics.median(rate_a):.2f}, B {statistics.median(rate_b):.2f}; "
              f"B's rate / A's, median of rounds: "
              f"{statistics.median(y / x for x, y in zip(rate_a, rate_b, strict=True)):.3f}")
    print(f"median A {statistics.median(x for x, _ in rows):.1f} ms, B {statistics.median(y for _, y in rows):.1f} "
          f"ms; B / A median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]; read "
          f"{read / 1e9:.1f} GB/s at the end: floor A {floor[a.config]:.1f} ms, B {floor[b.config]:.1f} ms")


if __name__ == "__main__":
    main()
