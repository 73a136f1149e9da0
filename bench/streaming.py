"""Streaming benchmark: ours vs the official package vs the fork's windowed re-decode, side by side.

    python bench/streaming.py [--checkpoint PATH] [--text ...] [--frames N] [--threads N] [--out FILE]

One process loads a CustomVoice checkpoint twice, into ``qtts`` and into the official ``qwen_tts``, and
generates the same fixed number of frames greedily (random weights never end on their own) with:

* ``ours``: ``TTS.stream`` with the default ``ChunkPolicy`` (1, 2, 4, 8, 8, ... frames per chunk, each frame
  decoded once by the stateful codec decoder);
* ``official``: ``Qwen3TTSModel.generate_custom_voice``; it returns only complete audio, so its time to first
  audio is its total time;
* ``fork``: the streaming fork's scheme rebuilt from our modules: our frame loop (``TTS.stream`` in 1-frame
  chunks, its own decode stubbed out), and every 8 frames an offline decode of the last <= 80 frames, of
  which the last 8 frames' samples are emitted (the remainder is flushed the same way at the end).

Reported: time to first audio (TTFA), real-time factor (RTF = wall / audio seconds), codec frames decoded
per generated frame, and a codec-only timing of the three decode schemes on the same fixed codes. Checks:
streamed audio == offline decode, and our codes == the official codes. Ratios matter; absolute CPU times
do not. Needs the official ``qwen-tts`` package (``--no-official`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qtts import TTS, ChunkPolicy, Sampling, Speaker, SynthesisOptions  # noqa: E402
from qtts.codec.decoder import CodecDecoder  # noqa: E402

EMIT_EVERY = 8  # the fork's emit_every_frames
WINDOW = 80  # the fork's decode_window_frames
TEXT = ("Streaming speech should start quickly and keep up with the listener, "
        "without decoding the same frames again and again.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Request:
    """What every contender synthesizes: same text, speaker, language and exact frame count."""

    text: str
    speaker: str
    language: str
    frames: int

    def options(self, policy: ChunkPolicy | None = None) -> SynthesisOptions:
        """Greedy, fixed length: a stream that reaches ``max_new_tokens`` has ``max_new_tokens - 1`` frames."""
        return SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=self.frames + 1, chunks=policy)


@dataclasses.dataclass(frozen=True)
class Stamp:
    """Wall-clock and process CPU seconds (CPU time is less disturbed by other load on a shared machine)."""

    wall: float = 0.0
    cpu: float = 0.0

    @classmethod
    def now(cls) -> Stamp:
        return cls(time.perf_counter(), time.process_time())

    def __sub__(self, other: Stamp) -> Stamp:
        return Stamp(self.wall - other.wall, self.cpu - other.cpu)

    def __add__(self, other: Stamp) -> Stamp:
        return Stamp(self.wall + other.wall, self.cpu + other.cpu)


@dataclasses.dataclass
class Run:
    """One timed synthesis: time to first audio, total time, codec time within it, and the frames passed
    through the codec decoder in total (``codec_frames``)."""

    ttfa: Stamp
    total: Stamp
    audio: np.ndarray
    codes: torch.Tensor
    codec: Stamp
    codec_frames: int
    chunks: int


@dataclasses.dataclass
class CodecLog:
    """Accumulates the decoder calls seen by :func:`spy`."""

    time: Stamp = Stamp()
    frames: int = 0
    codes: list[torch.Tensor] = dataclasses.field(default_factory=list)


# ---- helpers ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def replaced(obj: object, name: str, fn: Callable) -> Iterator[None]:
    """Shadow ``obj.name`` with ``fn`` (an instance attribute) for the duration of the block."""
    setattr(obj, name, fn)
    try:
        yield
    finally:
        delattr(obj, name)


def spy(obj: object, name: str, log: CodecLog, device: torch.device, count: Callable | None = None):
    """Wrap ``obj.name`` to time it into ``log``; ``count(args)`` gives the frames a call decodes."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        _sync(device)
        start = Stamp.now()
        out = original(*args, **kwargs)
        _sync(device)
        log.time += Stamp.now() - start
        if count is not None:
            log.frames += count(args)
        return out

    return replaced(obj, name, wrapper)


def fork_schedule(n: int) -> list[tuple[int, int]]:
    """The fork's decode calls for ``n`` frames: ``(frames generated so far, frames emitted)`` per call —
    one call every ``EMIT_EVERY`` frames, plus a flush of the remainder."""
    calls = [(end, EMIT_EVERY) for end in range(EMIT_EVERY, n + 1, EMIT_EVERY)]
    if n % EMIT_EVERY:
        calls.append((n, n % EMIT_EVERY))
    return calls


def fork_work(n: int) -> int:
    """Frames the fork's scheme decodes for an ``n``-frame utterance (window = last <= ``WINDOW`` frames).
    The flush's window (``min(emitted, WINDOW - rest)`` context + ``rest`` new frames) has the same size."""
    return sum(min(end, WINDOW) for end, _ in fork_schedule(n))


def decode_window(decoder: CodecDecoder, codes: torch.Tensor, end: int, keep: int) -> np.ndarray:
    """Offline-decode ``codes[max(0, end - WINDOW):end]`` (``[T, 16]``) and return the last ``keep`` frames'
    samples, as the fork does."""
    window = codes[max(0, end - WINDOW):end].T[None].to(next(decoder.parameters()).device)
    pcm = decoder(window)[0, 0]
    return pcm[pcm.shape[0] - keep * decoder.samples_per_frame:].float().cpu().numpy()


def compare_codes(a: torch.Tensor, b: torch.Tensor) -> str:
    """``identical``, or where two ``[T, 16]`` code sequences first differ."""
    a, b = a.cpu(), b.cpu()
    n = min(a.shape[0], b.shape[0])
    rows = (a[:n] != b[:n]).any(dim=1).nonzero()
    if len(rows):
        return f"first differing frame {int(rows[0])} (of {a.shape[0]} / {b.shape[0]})"
    if a.shape != b.shape:
        return f"same first {n} frames, lengths {a.shape[0]} / {b.shape[0]}"
    return "identical"


def max_abs(a: np.ndarray, b: np.ndarray) -> float | None:
    """Max |a - b|, or ``None`` when the lengths differ (itself a failed check)."""
    if a.shape != b.shape:
        return None
    return float(np.abs(a - b).max()) if len(a) else 0.0


# ---- the three contenders -----------------------------------------------------------------------------


def run_ours(tts: TTS, req: Request) -> Run:
    """``tts.stream`` with the default chunk policy; codes are read back from the decoder calls."""
    log = CodecLog()

    def frames_of(args: tuple) -> int:
        log.codes.append(args[0].cpu())
        return args[0].shape[-1]

    chunks, first = [], None
    with spy(tts.codec.decoder, "decode_step", log, tts.device, frames_of):
        start = Stamp.now()
        for chunk in tts.stream(req.text, voice=Speaker(req.speaker), language=req.language,
                                options=req.options()):
            if first is None and len(chunk.audio):
                first = Stamp.now() - start
            chunks.append(chunk.audio)
        total = Stamp.now() - start
    codes = torch.cat(log.codes, dim=-1)[0].T if log.codes else torch.zeros(0, 16, dtype=torch.long)
    return Run(first or total, total, np.concatenate(chunks), codes, log.time, log.frames,
               sum(1 for c in chunks if len(c)))


def run_fork(tts: TTS, req: Request) -> Run:
    """Our frame loop with the fork's windowed re-decode: every 8 frames decode the last <= 80, keep 8.

    The frames come from ``tts.stream`` with 1-frame chunks whose own (stateful) decode is replaced by a
    stub that only records the codes, so the codec work is the fork's windows alone."""
    decoder, log = tts.codec.decoder, CodecLog()
    dtype = next(decoder.parameters()).dtype
    frames, pieces, first, done = [], [], None, 0

    def record(codes: torch.Tensor, state: object) -> torch.Tensor:
        frames.extend(codes[0].T.cpu())
        return torch.zeros(codes.shape[0], 1, decoder.samples_per_frame * codes.shape[-1], dtype=dtype)

    def emit(end: int, keep: int) -> None:
        nonlocal first
        codes = torch.stack(frames[:end])
        t0 = Stamp.now()
        with torch.no_grad():
            pieces.append(decode_window(decoder, codes, end, keep))
        log.time += Stamp.now() - t0
        log.frames += min(end, WINDOW)
        first = first if first is not None else Stamp.now() - start

    with replaced(decoder, "decode_step", record):
        start = Stamp.now()
        for _ in tts.stream(req.text, voice=Speaker(req.speaker), language=req.language,
                            options=req.options(ChunkPolicy(1, 1))):
            while len(frames) - done >= EMIT_EVERY:
                done += EMIT_EVERY
                emit(done, EMIT_EVERY)
        if len(frames) > done:
            emit(len(frames), len(frames) - done)
        total = Stamp.now() - start
    return Run(first or total, total, np.concatenate(pieces), torch.stack(frames), log.time, log.frames,
               len(pieces))


def run_official(theirs, req: Request, device: torch.device) -> Run:
    """``generate_custom_voice`` (greedy, same frame budget); codes captured from its ``model.generate``."""
    captured, log = {}, CodecLog()
    original = theirs.model.generate

    def generate(*args, **kwargs):
        codes, hidden = original(*args, **kwargs)
        captured["codes"] = codes[0].cpu()
        return codes, hidden

    theirs.model.generate = generate
    try:
        with spy(theirs.model.speech_tokenizer, "decode", log, device):
            start = Stamp.now()
            wavs, _ = theirs.generate_custom_voice(
                text=req.text, speaker=req.speaker, language=req.language, do_sample=False,
                subtalker_dosample=False, max_new_tokens=req.frames + 1)
            total = Stamp.now() - start
    finally:
        del theirs.model.generate
    codes = captured["codes"]
    return Run(total, total, np.asarray(wavs[0], dtype=np.float32), codes, log.time, codes.shape[0], 1)


def load_official(folder: Path, dtype: torch.dtype, device: torch.device):
    """The official package, in this process (25 Hz-codec-only imports stubbed, as in the parity tests)."""
    from tests.reference import _install_stubs

    _install_stubs()
    from qwen_tts import Qwen3TTSModel

    extra = {} if device.type == "cpu" else {"device_map": str(device)}
    return Qwen3TTSModel.from_pretrained(str(folder), dtype=dtype, **extra)


# ---- codec-only timing --------------------------------------------------------------------------------


@torch.no_grad()
def codec_offline(decoder: CodecDecoder, codes: torch.Tensor) -> tuple[np.ndarray, int]:
    """One offline decode of all frames."""
    pcm = decoder(codes.T[None].to(next(decoder.parameters()).device))[0, 0]
    return pcm.float().cpu().numpy(), codes.shape[0]


@torch.no_grad()
def codec_stream(decoder: CodecDecoder, codes: torch.Tensor) -> tuple[np.ndarray, int]:
    """Stateful streaming decode in the default chunk sizes (1, 2, 4, 8, 8, ...)."""
    device = next(decoder.parameters()).device
    state, sizes, done, out = decoder.init_state(1), ChunkPolicy().sizes(), 0, []
    while done < codes.shape[0]:
        step = codes[done:done + next(sizes)]
        out.append(decoder.decode_step(step.T[None].to(device), state)[0, 0].float().cpu().numpy())
        done += step.shape[0]
    return np.concatenate(out), done


@torch.no_grad()
def codec_fork(decoder: CodecDecoder, codes: torch.Tensor) -> tuple[np.ndarray, int]:
    """The fork's windowed re-decode of all frames."""
    calls = fork_schedule(codes.shape[0])
    pieces = [decode_window(decoder, codes, end, keep) for end, keep in calls]
    return np.concatenate(pieces), fork_work(codes.shape[0])


def best_of(fn: Callable[[], tuple[np.ndarray, int]], repeats: int, device: torch.device
            ) -> tuple[Stamp, np.ndarray, int]:
    """Minimum wall and CPU time of ``repeats`` calls (robust to other load on a shared machine)."""
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        start = Stamp.now()
        result = fn()
        _sync(device)
        times.append(Stamp.now() - start)
    return Stamp(min(t.wall for t in times), min(t.cpu for t in times)), *result


def codec_only(decoder: CodecDecoder, codes: torch.Tensor, sample_rate: int, repeats: int,
               device: torch.device) -> dict:
    """Pure codec time of the three schemes on the same codes, and their audio against the offline decode."""
    audio_s = codes.shape[0] * decoder.samples_per_frame / sample_rate
    codec_offline(decoder, codes[:2])  # warm-up
    rows, reference = {}, None
    for name, fn in (("offline", codec_offline), ("ours_stream", codec_stream), ("fork_window", codec_fork)):
        spent, audio, frames = best_of(lambda fn=fn: fn(decoder, codes), repeats, device)
        reference = audio if reference is None else reference
        rows[name] = {"wall_s": spent.wall, "cpu_s": spent.cpu, "wall_s_per_audio_s": spent.wall / audio_s,
                      "frames_decoded": frames, "frames_per_frame": frames / codes.shape[0],
                      "max_abs_vs_offline": max_abs(audio, reference)}
    for row in rows.values():
        row["wall_vs_offline"] = row["wall_s"] / rows["offline"]["wall_s"]
        row["cpu_vs_offline"] = row["cpu_s"] / rows["offline"]["cpu_s"]
    return {"frames": codes.shape[0], "audio_s": audio_s, "schemes": rows}


# ---- reporting ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when ``qtts/`` has uncommitted changes (``unknown`` outside git)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "qtts"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info(args: argparse.Namespace, device: torch.device) -> dict:
    """Where and how the benchmark ran."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "dtype": args.dtype,
            "device": str(device), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "loadavg_start": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["qtts_commit"] = git_commit()
    for package in ("qwen-tts", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    return info


def summarize(runs: list[Run], sample_rate: int) -> dict:
    """Medians over repeats of the end-to-end numbers of one contender."""
    audio_s = len(runs[0].audio) / sample_rate
    frames = int(runs[0].codes.shape[0])

    def median(pick: Callable[[Run], float]) -> float:
        return statistics.median(pick(r) for r in runs)

    wall, cpu = median(lambda r: r.total.wall), median(lambda r: r.total.cpu)
    return {"ttfa_s": median(lambda r: r.ttfa.wall), "ttfa_cpu_s": median(lambda r: r.ttfa.cpu),
            "wall_s": wall, "cpu_s": cpu, "audio_s": audio_s, "rtf": wall / audio_s, "rtf_cpu": cpu / audio_s,
            "codec_wall_s": median(lambda r: r.codec.wall), "codec_cpu_s": median(lambda r: r.codec.cpu),
            "frames": frames, "codec_frames_per_frame": runs[0].codec_frames / frames, "chunks": runs[0].chunks,
            "repeats": len(runs), "ttfa_all": [r.ttfa.wall for r in runs], "wall_all": [r.total.wall for r in runs]}


def checks(runs: dict[str, list[Run]], tts: TTS) -> dict:
    """Same work? Codes of every contender vs ours, and each streamed audio vs the offline decode."""
    ours = runs["ours"][0]
    offline = tts.decode(ours.codes)
    out = {"ours_stream_vs_offline_max_abs": max_abs(ours.audio, offline),
           "fork_vs_offline_max_abs": max_abs(runs["fork"][0].audio, offline),
           "codes_fork_vs_ours": compare_codes(runs["fork"][0].codes, ours.codes)}
    if "official" in runs:
        theirs = runs["official"][0]
        out["codes_official_vs_ours"] = compare_codes(theirs.codes, ours.codes)
        out["official_audio_vs_ours_offline_max_abs"] = max_abs(theirs.audio, offline)
    return out


def print_tables(result: dict) -> None:
    """Human-readable summary of ``result``."""
    e2e, ours = result["end_to_end"], result["end_to_end"]["ours"]
    print(f"\n{'contender':<9} {'TTFA s':>7} {'cpu':>6} {'total s':>7} {'cpu':>6} {'audio s':>7} {'RTF':>6} "
          f"{'cpu':>6} {'TTFA/ours':>9} {'cpu':>5} {'RTF/ours':>8} {'cpu':>5} {'codec s':>7} {'dec fr/fr':>9}")
    for name, r in e2e.items():
        print(f"{name:<9} {r['ttfa_s']:>7.2f} {r['ttfa_cpu_s']:>6.2f} {r['wall_s']:>7.2f} {r['cpu_s']:>6.2f} "
              f"{r['audio_s']:>7.2f} {r['rtf']:>6.2f} {r['rtf_cpu']:>6.2f} {r['ttfa_s'] / ours['ttfa_s']:>9.2f} "
              f"{r['ttfa_cpu_s'] / ours['ttfa_cpu_s']:>5.2f} {r['rtf'] / ours['rtf']:>8.2f} "
              f"{r['rtf_cpu'] / ours['rtf_cpu']:>5.2f} {r['codec_wall_s']:>7.2f} {r['codec_frames_per_frame']:>9.2f}")
    for key in ("codec_only", "codec_only_steady"):
        if key in result:
            print_codec(result[key])
    print(f"\nfork steady-state frames decoded per frame: {result['fork_steady_state_frames_per_frame']:.1f}")
    for key, value in result["checks"].items():
        print(f"check {key}: {value}")


def print_codec(table: dict) -> None:
    """One codec-only table."""
    print(f"\ncodec only, {table['frames']} frames ({table['audio_s']:.2f} s audio)")
    print(f"{'scheme':<12} {'wall s':>7} {'cpu s':>7} {'wall/audio s':>12} {'wall/offl':>9} {'cpu/offl':>8} "
          f"{'frames/frame':>12} {'max|diff|':>9}")
    for name, r in table["schemes"].items():
        diff = "len!=" if r["max_abs_vs_offline"] is None else f"{r['max_abs_vs_offline']:.1e}"
        print(f"{name:<12} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} {r['wall_s_per_audio_s']:>12.2f} "
              f"{r['wall_vs_offline']:>9.2f} {r['cpu_vs_offline']:>8.2f} {r['frames_per_frame']:>12.2f} {diff:>9}")


# ---- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "0.6b-custom_voice"),
                    help="CustomVoice checkpoint folder (default: the random 0.6b-shape one)")
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--speaker", default="ryan")
    ap.add_argument("--language", default="english")
    ap.add_argument("--frames", type=int, default=48, help="frames generated by every contender (12.5 per s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: least disturbed by other load on a shared CPU)")
    ap.add_argument("--repeats", type=int, default=1, help="timed end-to-end runs per contender (median)")
    ap.add_argument("--codec-repeats", type=int, default=2, help="codec-only timings per scheme (minimum)")
    ap.add_argument("--steady-frames", type=int, default=0,
                    help="also time the codec schemes on this many frames (our codes repeated; 0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--no-official", action="store_true", help="skip the official package")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.frames < 1 or args.threads < 1 or args.repeats < 1 or args.codec_repeats < 1:
        ap.error("--frames, --threads, --repeats and --codec-repeats must be >= 1")
    return args


def contenders(tts: TTS, theirs, device: torch.device) -> dict[str, Callable[[Request], Run]]:
    """Name -> run function, in the order they are timed (interleaved across repeats)."""
    table = {"ours": lambda req: run_ours(tts, req)}
    if theirs is not None:
        table["official"] = lambda req: run_official(theirs, req, device)
    table["fork"] = lambda req: run_fork(tts, req)
    return table


def timed_runs(table: dict[str, Callable[[Request], Run]], req: Request, repeats: int) -> dict[str, list[Run]]:
    """A 2-frame warm-up of every contender, then ``repeats`` rounds of all of them, interleaved so that slow
    phases of a shared machine hit every contender alike."""
    for run in table.values():
        run(dataclasses.replace(req, frames=2))
    runs: dict[str, list[Run]] = {name: [] for name in table}
    for i in range(repeats):
        for name, run in table.items():
            runs[name].append(run(req))
            print(f"repeat {i + 1}/{repeats} {name}: {runs[name][-1].total.wall:.1f} s", flush=True)
    return runs


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the tables, write ``--out``; returns the result dict."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    info = machine_info(args, device)
    tts = TTS.from_pretrained(args.checkpoint, device=device, dtype=dtype)
    theirs = None if args.no_official else load_official(Path(args.checkpoint), dtype, device)
    req = Request(args.text, args.speaker, args.language, args.frames)
    table = contenders(tts, theirs, device)
    runs = timed_runs(table, req, args.repeats)
    codes = runs["ours"][0].codes
    info["loadavg_end"] = list(os.getloadavg())
    result = {
        "machine": info, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "end_to_end": {name: summarize(r, tts.sample_rate) for name, r in runs.items()},
        "codec_only": codec_only(tts.codec.decoder, codes, tts.sample_rate, args.codec_repeats, device),
        "fork_steady_state_frames_per_frame": WINDOW / EMIT_EVERY,
        "checks": checks(runs, tts),
    }
    if args.steady_frames:
        long = codes.repeat(-(-args.steady_frames // codes.shape[0]), 1)[:args.steady_frames]
        result["codec_only_steady"] = codec_only(tts.codec.decoder, long, tts.sample_rate, 1, device)
    print_tables(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
