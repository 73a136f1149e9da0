"""``qtts speak --stream``: audio chunks go to the sound device as they are generated, or into a WAV file.

Playback uses the optional ``sounddevice`` package, only when it imports and a default output device exists
and no ``-o`` was given; otherwise the chunks are written as they arrive to a hidden temporary file next to
the output, which is renamed to the output name only when the stream has ended, so an error or ctrl-C never
leaves a half-written file behind. At the end it prints the time to first audio (the first chunk's
``elapsed``), the real-time factor (wall time / audio seconds; below 1 is faster than real time) and the
finish reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import InputError, QttsError
from .stream import ChunkPolicy

if TYPE_CHECKING:
    from .api import TTS, SynthesisOptions
    from .voices import Voice

DEFAULT_OUTPUT = "out.wav"


class Sink(Protocol):
    def write(self, audio: np.ndarray) -> None: ...


def sound_device() -> ModuleType | None:
    """The ``sounddevice`` module when it imports and a default output device exists, else None."""
    try:
        import sounddevice as sd
    except Exception:  # not installed, or PortAudio missing (OSError)
        return None
    try:
        sd.query_devices(kind="output")  # raises when there is no default output device
    except Exception:
        return None
    return sd


class ProgressiveWav:
    """A 16-bit mono WAV written chunk by chunk (each flushed) to a temporary file beside ``path``; renamed to
    ``path`` on a clean exit, deleted on any exception (including ``KeyboardInterrupt``)."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path, self.sample_rate = path, sample_rate

    def __enter__(self) -> ProgressiveWav:
        import soundfile as sf

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".wav", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            os.chmod(self.tmp, 0o644)
            self.file = sf.SoundFile(self.tmp, "w", samplerate=self.sample_rate, channels=1, subtype="PCM_16",
                                     format="WAV")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self

    def write(self, audio: np.ndarray) -> None:
        """Append float32 ``[N]`` samples."""
        self.file.write(audio)
        self.file.flush()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


class Player:
    """Plays float32 chunks on the default output device from a worker thread, so generation never waits
    for playback. A clean exit waits until everything queued has played; an exception stops at once."""

    def __init__(self, sd: ModuleType, sample_rate: int) -> None:
        self.stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32")
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self.error: BaseException | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, name="qtts-playback", daemon=True)

    def __enter__(self) -> Player:
        self.stream.start()
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while (audio := self.queue.get()) is not None and not self.cancelled:
                self.stream.write(np.ascontiguousarray(audio.reshape(-1, 1)))
        except Exception as e:  # reported by __exit__
            self.error = e

    def write(self, audio: np.ndarray) -> None:
        """Queue float32 ``[N]`` samples for playback."""
        if self.error is not None:
            raise QttsError(f"audio playback failed: {self.error}")
        self.queue.put(audio)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cancelled = exc_type is not None
        self.queue.put(None)
        try:
            if self.cancelled:
                self.stream.abort()
                self.thread.join(timeout=1.0)
            else:
                self.thread.join()
                self.stream.stop()
        finally:
            self.stream.close()
        if self.error is not None and exc_type is None:
            raise QttsError(f"audio playback failed: {self.error}")


@dataclasses.dataclass(frozen=True)
class StreamReport:
    """What a streamed run produced: ``samples`` at ``sample_rate``, ``frames``, first-audio latency and wall
    time in seconds (from the request start to the last chunk), and the finish reason."""

    samples: int
    sample_rate: int
    frames: int
    ttfa: float | None
    wall: float
    finish_reason: str | None

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate

    def lines(self, target: str) -> list[str]:
        ttfa = "n/a (no audio)" if self.ttfa is None else f"{self.ttfa:.3f} s"
        rtf = f"{self.wall / self.audio_seconds:.3f}" if self.samples else "n/a (no audio)"
        return [
            f"{target}: {self.audio_seconds:.2f} s of audio, {self.frames} frames, finish={self.finish_reason}",
            f"time to first audio: {ttfa}",
            f"real-time factor: {rtf} (wall {self.wall:.2f} s / audio {self.audio_seconds:.2f} s; "
            "below 1 is faster than real time)",
        ]


def run_stream(chunks: Any, sink: Sink, sample_rate: int, started: float) -> StreamReport:
    """Write every ``AudioChunk`` of ``chunks`` to ``sink``; closes ``chunks`` (cancelling generation) on exit."""
    samples, frames, ttfa, reason = 0, 0, None, None
    with contextlib.closing(chunks):
        for chunk in chunks:
            if len(chunk.audio):
                if ttfa is None:
                    ttfa = chunk.elapsed
                sink.write(chunk.audio)
                samples += len(chunk.audio)
            frames, reason = chunk.end, chunk.finish_reason or reason
    return StreamReport(samples, sample_rate, frames, ttfa, time.perf_counter() - started, reason)


def speak_stream(tts: TTS, args: argparse.Namespace, voice: Voice | None, options: SynthesisOptions,
                 progress: Any) -> int:
    """The ``speak --stream`` command body (``options`` already carries sampling, budget and progress)."""
    if args.chunk_frames < 1:
        raise InputError(f"--chunk-frames must be at least 1, got {args.chunk_frames}")
    options = dataclasses.replace(options, chunks=ChunkPolicy(args.chunk_frames, max(8, args.chunk_frames)))
    sd = sound_device() if args.output is None else None
    if args.output is None and sd is None:
        print(f"note: no sound device (needs the 'sounddevice' package and a default output); writing "
              f"{DEFAULT_OUTPUT} instead", file=sys.stderr)
    output = Path(args.output or DEFAULT_OUTPUT)
    started = time.perf_counter()
    chunks = tts.stream(args.text, voice=voice, language=args.language, instruct=args.instruct, seed=args.seed,
                        options=options)  # validates the request before any device or file is opened
    with contextlib.closing(chunks):
        sink = Player(sd, tts.sample_rate) if sd is not None else ProgressiveWav(output, tts.sample_rate)
        with sink:
            report = run_stream(chunks, sink, tts.sample_rate, started)
    progress.close()
    for line in report.lines("played" if sd is not None else f"wrote {output}"):
        print(line, file=sys.stderr)
    return 0
