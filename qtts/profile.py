"""Where the time of one synthesis goes: prepare, prefill, talker, predictor, sampling, codec (``qtts profile``).

``profile_synthesis`` runs one request through ``generate.prefill``, ``generate.decode_frame`` (with its
``timed`` hook: a timer around each part of the frame step) and the runner's streaming codec decode (with
``torch.cuda.synchronize()`` at each boundary on CUDA, so a part's time is its own):

* ``prepare``: prompt building (``TTS.prepare``: text, voice, embeddings of the prompt);
* ``prefill``: frame-state allocation and ``generate.prefill`` (the prompt pass and the first code-0);
* ``talker``: the talker transformer over the completed frame, plus its ``codec_head`` (code-0 logits);
* ``predictor``: the code predictor's 15 transformer passes and its 15 group heads;
* ``sampling``: the code-0 logit rules and the 16 picks (``sample``, or ``argmax`` when no slot samples);
* ``other``: the frame embedding, the next text vector and the state updates of the frame step;
* ``codec``: streaming ``decode_step`` calls in the runner's chunk sizes (1, 2, 4, 8, 8, ... frames).

The parts are timed independently of the whole (the wall time from ``prepare`` to the last decode), so
their sum falling short of the whole shows untimed work. ``plain_frame_s`` (optional) is the median time of
the untimed ``generate.decode_frame`` on the same state, to show what the instrumentation costs.

The frame steps run eagerly on the model's modules: row kernels apply, but compiled regions and CUDA graphs,
which act on the runner's frame step, do not. With a static ``--accel``, ``qtts profile`` also times the
runner's own step (``time_runner_steps``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .generate import FrameState, decode_frame, prefill
from .request import Sampling
from .runner import ChunkPolicy

if TYPE_CHECKING:
    from .api import TTS, Prepared
    from .model.talker import Talker
    from .voices import Voice

PARTS = ("prepare", "prefill", "talker", "predictor", "sampling", "other", "codec")
FRAME_PARTS = ("talker", "predictor", "sampling", "other")
TEXT = "The quick brown fox jumps over the lazy dog, and then it keeps on running far away."


class Timer:
    """Accumulates wall and process-CPU seconds per named part; syncs CUDA at both ends of each piece."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.wall = dict.fromkeys(PARTS, 0.0)
        self.cpu = dict.fromkeys(PARTS, 0.0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        # The CPU clock is a system call, where a busy machine tends to switch tasks: it is read *inside* the
        # wall interval, so time lost there is charged to the part rather than left between the parts.
        self.sync()
        wall = time.perf_counter()
        cpu = time.process_time()
        try:
            yield
        finally:
            self.sync()
            self.cpu[part] += time.process_time() - cpu
            self.wall[part] += time.perf_counter() - wall


@dataclasses.dataclass(frozen=True)
class Profile:
    """Seconds per part (totals over the run, wall and process CPU) and the independently measured whole.

    ``frames``: frames generated per stream; ``batch``: streams; ``codec_first_s``: the first (1-frame)
    streaming decode; ``plain_frame_s``: median wall seconds of an unmodified ``decode_frame`` (or None);
    ``codes``: the generated codes ``[batch, frames, G]`` (not part of ``to_dict``)."""

    device: str
    dtype: str
    quantize: str
    threads: int
    batch: int
    frames: int
    prompt_len: int
    wall: dict[str, float]
    cpu: dict[str, float]
    whole_wall: float
    whole_cpu: float
    codec_first_s: float
    plain_frame_s: float | None = None
    codes: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def frame_wall(self) -> float:
        """Wall seconds of one frame step (talker + predictor + sampling + other), mean over the frames."""
        return sum(self.wall[p] for p in FRAME_PARTS) / self.frames

    def per_frame(self, part: str) -> float:
        """Mean wall seconds of ``part`` per frame (prepare and prefill: per request, not per frame)."""
        return self.wall[part] / (1 if part in ("prepare", "prefill") else self.frames)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "codes"}
        out["wall"], out["cpu"] = dict(self.wall), dict(self.cpu)
        out["per_frame_wall"] = {p: self.per_frame(p) for p in PARTS}
        out["frame_wall"] = self.frame_wall
        out["parts_sum_wall"] = sum(self.wall.values())
        return out

    def table(self) -> str:
        """A plain-text table: per part the total, the per-frame mean and the share of the whole."""
        head = (f"{self.device}, {self.dtype}, quantize={self.quantize}, {self.threads} thread(s), batch "
                f"{self.batch}, prompt {self.prompt_len} vectors, {self.frames} frames")
        rows = [f"{'part':<10} {'total ms':>10} {'CPU ms':>10} {'ms/frame':>10} {'share':>7}"]
        for p in PARTS:
            per = "" if p in ("prepare", "prefill") else f"{1000 * self.per_frame(p):10.2f}"
            rows.append(f"{p:<10} {1000 * self.wall[p]:10.2f} {1000 * self.cpu[p]:10.2f} {per:>10} "
                        f"{self.wall[p] / self.whole_wall:7.1%}")
        parts = sum(self.wall.values())
        rows.append(f"{'sum':<10} {1000 * parts:10.2f} {1000 * sum(self.cpu.values()):10.2f}")
        rows.append(f"{'whole':<10} {1000 * self.whole_wall:10.2f} {1000 * self.whole_cpu:10.2f}")
        rows.append(f"frame step {1000 * self.frame_wall:.2f} ms/frame; first 1-frame codec decode "
                    f"{1000 * self.codec_first_s:.2f} ms")
        if self.plain_frame_s is not None:
            rows.append(f"uninstrumented decode_frame: {1000 * self.plain_frame_s:.2f} ms/frame (median)")
        return "\n".join([head, *rows])


@torch.no_grad()
def profile_synthesis(tts: TTS, text: str = TEXT, frames: int = 16, batch: int = 1, voice: Voice | None = None,
                      sampling: Sampling | None = None, seed: int = 0, plain: bool = True,
                      quantize: str = "none") -> Profile:
    """Profile one synthesis of ``frames`` frames per stream (``batch`` identical streams, each with its own
    codec state). ``sampling``: default greedy (deterministic). ``plain``: also time ``frames`` steps of the
    unmodified ``decode_frame`` afterwards. ``quantize`` is only recorded."""
    from .api import SynthesisOptions

    talker, decoder = tts.model.talker, tts.codec.decoder
    timer = Timer(tts.device)
    options = SynthesisOptions(sampling=sampling or Sampling.greedy(), max_new_tokens=frames + 1)
    timer.sync()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with timer("prepare"):
        prepared = [tts.prepare(text, voice=voice, seed=seed + i, options=options) for i in range(batch)]
    with timer("prefill"):
        P = max(p.stream.prompt.shape[0] for p in prepared)
        state = FrameState(talker, batch, P + 2 * frames + 2)
        state.pad.copy_(tts.tts_pad())
        for row, p in enumerate(prepared):
            prefill(talker, state, row, p.stream.prompt, p.stream.trailing, p.stream.params)
    with timer("codec"):
        codec_states = [decoder.init_state(1) for _ in range(batch)]
    sizes, pending, audio, codec_first, generated = ChunkPolicy().sizes(), [], [], 0.0, []
    target = next(sizes)
    for k in range(frames):
        pending.append(decode_frame(talker, state, P + k + 1, timed=timer))
        generated.append(pending[-1])
        if len(pending) == target or k == frames - 1:
            codes = torch.stack(pending, dim=2)  # [B, G, t]
            before = timer.wall["codec"]
            with timer("codec"):
                for row, cs in enumerate(codec_states):
                    audio.append(decoder.decode_step(codes[row:row + 1], cs)[0, 0].float().cpu().numpy())
            codec_first = codec_first or (timer.wall["codec"] - before) / batch
            pending, target = [], next(sizes)
    timer.sync()
    whole_wall, whole_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert sum(len(a) for a in audio) == batch * frames * decoder.samples_per_frame, "audio length mismatch"
    plain_s = _plain_frames(talker, state, P + frames, frames, timer) if plain else None
    quant = "int8" if getattr(tts, "quantization", None) is not None else quantize
    return Profile(str(tts.device), str(tts.dtype).removeprefix("torch."), quant, torch.get_num_threads(), batch,
                   frames, P, dict(timer.wall), dict(timer.cpu), whole_wall, whole_cpu, codec_first, plain_s,
                   torch.stack(generated, dim=1).cpu())


def _plain_frames(talker: Talker, state: FrameState, start: int, frames: int, timer: Timer) -> float:
    """Median wall seconds of ``frames`` unmodified ``decode_frame`` steps continuing from ``state``."""
    if state.cache.max_len < start + frames + 1:
        state.cache.grow(start + frames + 1)
    times = []
    for k in range(frames):
        timer.sync()
        t0 = time.perf_counter()
        decode_frame(talker, state, start + k + 1)
        timer.sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _default_voice(tts: TTS) -> Voice | None:
    """None (the checkpoint's default voice), or for a Base checkpoint an x-vector clone of a test tone."""
    if tts.kind != "base":
        return None
    from .voices import Clone

    t = np.arange(24000) / 24000
    tone = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    return Clone(prompt=tts.create_clone_prompt((tone, 24000), x_vector_only=True))


@dataclasses.dataclass(frozen=True)
class RunnerSteps:
    """Timed steps of a runner: ``wall`` / ``cpu`` seconds of each timed step (process CPU time), the warm-up
    seconds (the first two steps) and the streams still live at the end of the timed steps."""

    wall: list[float]
    cpu: list[float]
    warmup_s: float
    live: int


def time_runner_steps(tts: TTS, prepared: list[Prepared], frames: int) -> RunnerSteps:
    """The runner's own frame step (the path ``tts.accelerate`` sets up: compiled / CUDA-graphed, which the
    instrumented pieces of ``profile_synthesis`` do not run) for the ``prepared`` requests on a fresh
    ``tts.new_runner(len(prepared), decode=False)``. Warm-up = the first two steps (admission and prefill,
    the first frames and, for a static step, its compilation or capture); then ``frames`` steps are timed.
    The requests are cancelled afterwards; give them ``max_new_tokens >= frames + 4``."""
    runner = tts.new_runner(len(prepared), decode=False)
    for p in prepared:
        runner.submit(p.job(lambda _item: None))
    sync = Timer(tts.device).sync
    start = time.perf_counter()
    for _ in range(2):
        runner.step()
    sync()
    warm = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(frames):
        w0, c0 = time.perf_counter(), time.process_time()
        runner.step()
        sync()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    live = len(runner.live)
    for job in runner.live + runner.waiting:
        job.cancel()
    runner.step()
    return RunnerSteps(wall, cpu, warm, live)


# ---- command line -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``qtts profile`` options (model options are added by the CLI)."""
    p.add_argument("--text", default=TEXT)
    p.add_argument("--frames", type=int, default=16, help="frames to generate (80 ms each; default 16)")
    p.add_argument("--batch", type=int, default=1, help="streams run together (default 1)")
    p.add_argument("--sample", action="store_true", help="use the checkpoint's sampling (default: greedy)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs of 2 frames first (default 1)")
    p.add_argument("--json", help="also write the profile as JSON to this file")


def cmd_profile(args: argparse.Namespace) -> int:
    """``qtts profile``: load the model, warm up, profile one synthesis and print the table."""
    from .cli import _load
    from .errors import InputError

    if args.frames < 1 or args.batch < 1:
        raise InputError("--frames and --batch must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    tts = _load(args)
    voice = _default_voice(tts)
    sampling = Sampling() if args.sample else None
    for _ in range(args.warmup):
        profile_synthesis(tts, args.text, 2, args.batch, voice, sampling, plain=False)
    prof = profile_synthesis(tts, args.text, args.frames, args.batch, voice, sampling, quantize=args.quantize)
    print(prof.table())
    out = prof.to_dict()
    if tts.accel.static:  # compile / CUDA graphs act on the runner's step, not on the pieces timed above
        from .api import SynthesisOptions

        options = SynthesisOptions(sampling=sampling or Sampling.greedy(), max_new_tokens=args.frames + 4)
        prepared = [tts.prepare(args.text, voice=voice, seed=i, options=options) for i in range(args.batch)]
        steps = time_runner_steps(tts, prepared, args.frames)
        step, warm = statistics.median(steps.wall), steps.warmup_s
        out["runner_frame_s"], out["runner_warmup_s"] = step, warm
        print(f"runner frame step with --accel {args.accel}: {1000 * step:.2f} ms/frame (median; the parts above "
              f"run the model's pieces uncompiled, with row kernels where set); warm-up {warm:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
