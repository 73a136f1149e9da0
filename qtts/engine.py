"""The engine: one thread owns the model and runs every concurrent request in one batched frame loop.

``Engine.submit`` hands a prepared request (``TTS.prepare``) or a text-in session (``TTS.prepare_session``)
to the engine thread and returns a ``StreamHandle`` to read its audio chunks from (sync or async) and to
cancel it. Between frames the engine thread admits waiting requests into free slots (continuous batching),
retires finished and cancelled ones and runs queued calls (``Engine.call``: model work such as encoding a
clone prompt, so no model work ever runs on a caller's event loop). A request that finds every slot busy
waits up to ``EngineConfig.wait_timeout`` seconds (not counting the engine's one-time warm-up: compiling or
capturing a batch bucket), then fails with ``EngineBusy``; ``submit`` refuses at
once when ``max_waiting`` requests are already queued. An unexpected error in a frame step fails the
requests in that batch, not the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError, QttsError
from .generate import SamplingParams, StreamParams
from .runner import AudioChunk, ChunkPolicy, Job

if TYPE_CHECKING:
    from .api import TTS, Prepared, PreparedSession

log = logging.getLogger("qtts.engine")


class EngineBusy(QttsError):
    """Every slot is busy and the wait bound passed (or the queue is full): retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosed(QttsError):
    """The engine has been shut down."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """``max_batch``: streams advanced together per frame; ``max_waiting``: requests queued for a slot before
    ``submit`` refuses; ``wait_timeout``: seconds a request may wait for a slot."""

    max_batch: int = 8
    max_waiting: int = 64
    wait_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_waiting"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not self.wait_timeout > 0:
            raise InputError(f"wait_timeout must be > 0, got {self.wait_timeout!r}")


@dataclasses.dataclass(frozen=True)
class StreamStats:
    """What one finished stream did: ``ttfa`` (s to first audio, None if none), ``wall`` (s from submit to the
    end), ``audio`` (s of audio), ``frames``, ``finish_reason``."""

    ttfa: float | None
    wall: float
    audio: float
    frames: int
    finish_reason: str

    @property
    def rtf(self) -> float | None:
        """Real-time factor: wall time per second of audio (< 1 is faster than real time)."""
        return self.wall / self.audio if self.audio > 0 else None


_DONE = object()


class StreamHandle:
    """The consumer side of one engine stream. Iterate it once (``for`` / ``async for``) for ``AudioChunk`` s;
    the last chunk has a ``finish_reason``. Errors (``EngineBusy``, ``InputError``, ...) are raised from the
    iteration. ``cancel()`` (or closing / breaking out of the iteration) stops the stream at once."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop | None) -> None:
        self._engine = engine
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop = loop
        self._event = asyncio.Event() if loop is not None else None
        self.job: Job | None = None
        self.submitted = time.perf_counter()
        self.stats: StreamStats | None = None
        self._ttfa: float | None = None
        self._samples = 0
        self._frames = 0

    @property
    def finish_reason(self) -> str | None:
        return self.stats.finish_reason if self.stats else None

    def cancel(self) -> None:
        """Stop generation before the next frame and free the slot (thread-safe, idempotent)."""
        if self.job is not None and not self.job.finished:
            self.job.cancel()
            self._engine._wake()

    # engine thread side
    def _put(self, item: AudioChunk | BaseException) -> None:
        if isinstance(item, AudioChunk):
            if self._ttfa is None and len(item.audio):
                self._ttfa = item.elapsed
            self._samples += len(item.audio)
            self._frames = item.end
            if item.finish_reason is not None:
                self._finished(item.finish_reason, item.sample_rate)
        else:
            self._finished("error", 1)
        self._items.put(item)
        if item is not None and (isinstance(item, BaseException) or item.finish_reason is not None):
            self._items.put(_DONE)
        if self._loop is not None and self._event is not None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop may be gone
                self._loop.call_soon_threadsafe(self._event.set)

    def _finished(self, reason: str, sample_rate: int) -> None:
        self.stats = StreamStats(self._ttfa, time.perf_counter() - self.submitted, self._samples / sample_rate,
                                 self._frames, reason)
        self._engine._on_finished(self.stats)

    # consumer side
    @staticmethod
    def _chunk(item: object) -> AudioChunk | None:
        """A queued item as a chunk; None at the end of the stream; a queued exception is raised."""
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[AudioChunk]:
        try:
            while (chunk := self._chunk(self._items.get())) is not None:
                yield chunk
        finally:
            self.cancel()

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        if self._event is None:
            raise RuntimeError("this handle was submitted outside an event loop; iterate it synchronously")
        try:
            while True:
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    await self._event.wait()
                    self._event.clear()
                    continue
                if (chunk := self._chunk(item)) is None:
                    return
                yield chunk
        finally:
            self.cancel()


class Engine:
    """Owns ``tts`` on one thread and serves many concurrent streams with continuous batching."""

    def __init__(self, tts: TTS, config: EngineConfig | None = None) -> None:
        self.tts = tts
        self.config = config or EngineConfig()
        self.runner = tts.new_runner(self.config.max_batch)
        self._cond = threading.Condition()
        self._inbox: list[tuple[Job, StreamHandle]] = []
        self._calls: list[tuple[Callable[[], Any], concurrent.futures.Future]] = []
        self._waiting_since: dict[int, float] = {}
        self._closed = False
        self._woken = False
        self.finished: list[StreamStats] = []  # recent finished streams (bounded), for metrics
        self.observers: list[Callable[[StreamStats], None]] = []
        self._frames_base = -self.runner.frames  # frames_total = this + the runner's frame steps
        self._thread = threading.Thread(target=self._run, name="qtts-engine", daemon=True)
        self._thread.start()

    # ---- public -----------------------------------------------------------------------------------

    @property
    def frames_total(self) -> int:
        """Frame steps run for requests. Read from the runner, which counts a step when it launches it: a client
        that has a stream's last audio sees every step of that stream counted."""
        return self._frames_base + self.runner.frames

    @frames_total.setter
    def frames_total(self, value: int) -> None:
        self._frames_base = value - self.runner.frames

    def submit(self, request: Prepared | PreparedSession, chunks: ChunkPolicy | None = None,
               started: float | None = None) -> StreamHandle:
        """Queue a request; returns its handle at once. Raises ``EngineBusy`` if the queue is full.
        Called inside a running event loop, the handle supports ``async for``."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        handle = StreamHandle(self, loop)
        job = request.job(handle._put, chunks, started if started is not None else handle.submitted)
        handle.job = job
        if job.session is not None:
            job.session.feed.notify = self._wake
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is shut down")
            queued = len(self._inbox) + len(self.runner.waiting)
            if queued >= self.config.max_waiting:
                raise EngineBusy(f"too many queued requests ({queued}); retry later", self._retry_after())
            self._inbox.append((job, handle))
            self._cond.notify()
        return handle

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Run ``fn(*args, **kwargs)`` on the engine thread between frames; returns a future of its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is shut down")
            self._calls.append((lambda: fn(*args, **kwargs), future))
            self._cond.notify()
        return future

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``await`` version of ``call``."""
        return await asyncio.wrap_future(self.call(fn, *args, **kwargs))

    def warm_up(self, frames: int = 16) -> float:
        """Compile / capture now, before serving, what a static frame step (``compile`` / ``cuda-graphs``) would
        otherwise build on the first request that needs it: every batch bucket (1, 2, 4, ... ``max_batch``
        streams at once) and the codec's chunk pieces. Runs synthetic streams (zero prompts, sampled, ``frames``
        frames; their audio is dropped) and returns the warm-up seconds this added (0 for an eager step).
        Blocks the caller; call it before taking requests."""
        if not self.runner.step_fn.static:
            return 0.0
        before = self.stats()["warmup_seconds"]
        finished, frames_total, observers = len(self.finished), self.frames_total, self.observers
        self.observers = []  # synthetic streams are not traffic: kept out of metrics and stats
        step, most = self.runner.step_fn, self.config.max_batch
        sizes = sorted({step.rows(n, most) for n in range(1, most + 1)})  # the step's own batch buckets
        count = 0
        try:
            # The prefill regions are built for any prompt length from the first prompt (``accel.BlockRegions``).
            for size in sizes:
                handles = []
                for _ in range(size):
                    handles.append(self.submit(_Synthetic(self.tts, count, frames)))
                    count += 1
                for handle in handles:
                    for _ in handle:
                        pass
        finally:
            self.observers = observers
            del self.finished[finished:]
            self.frames_total = frames_total
        return self.stats()["warmup_seconds"] - before

    def stats(self) -> dict[str, float]:
        """``active`` (streams in slots), ``waiting`` (queued for a slot or for text), ``frames_total``,
        ``max_batch`` and ``warmup_seconds``: time spent compiling and capturing CUDA graphs so far (frame step
        buckets and codec piece sizes; paid once per engine, on first use of each)."""
        with self._cond:
            inbox = len(self._inbox)
        codec = self.runner.chunk_decoder
        warmup = self.runner.step_fn.capture_seconds + (codec.capture_seconds if codec is not None else 0.0)
        return {"active": len(self.runner.live), "waiting": len(self.runner.waiting) + inbox,
                "frames_total": self.frames_total, "max_batch": self.config.max_batch,
                "warmup_seconds": round(warmup, 3)}

    def close(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; streams still running end with ``EngineClosed``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- engine thread ------------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify()

    def _retry_after(self) -> float:
        return max(1.0, min(self.config.wait_timeout, 5.0))

    def _on_finished(self, stats: StreamStats) -> None:
        self.finished.append(stats)
        del self.finished[:-1000]
        for observer in self.observers:
            try:
                observer(stats)
            except Exception:  # an observer must never break the engine
                log.exception("stream observer failed")

    def _run(self) -> None:
        runner = self.runner
        while True:
            with self._cond:
                if not self._inbox and not self._calls and not self._closed and not self._woken:
                    if runner.idle:
                        self._cond.wait()
                    elif not self._busy:
                        self._cond.wait(0.5)
                self._woken = False
                inbox, self._inbox = self._inbox, []
                calls, self._calls = self._calls, []
                closed = self._closed
            if closed:
                runner.fail_all(EngineClosed("the engine is shut down"))
                for _, future in calls:
                    future.set_exception(EngineClosed("the engine is shut down"))
                return
            now = time.perf_counter()
            for job, _handle in inbox:
                self._waiting_since[id(job)] = now
                runner.submit(job)
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as e:  # delivered to the caller
                        future.set_exception(e)
            self._expire(now)
            built, started = self._builds(), time.perf_counter()
            try:
                self._busy = runner.step()
            except Exception as e:
                log.exception("frame step failed; failing the streams in the batch")
                runner.fail_all(e)
                self._busy = False
            if self._builds() != built:  # this round built something: its time is not a wait for a slot
                self._pause_wait_clocks(time.perf_counter() - started)
            for job in runner.live:
                self._waiting_since.pop(id(job), None)

    _busy = False

    def _builds(self) -> tuple[float, float, int]:
        """What changes when a round builds something once: the runner's warm-up / capture seconds (frame step,
        codec chunks) and the graphs ``torch.compile`` has made in this process (e.g. prefill regions compiled
        for a new prompt length)."""
        step, chunks = self.runner.step_fn, self.runner.chunk_decoder
        try:
            graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        except Exception:  # a torch without the counter: capture seconds alone
            graphs = 0
        return step.capture_seconds, chunks.capture_seconds if chunks is not None else 0.0, graphs

    def _pause_wait_clocks(self, seconds: float) -> None:
        """Leave a round that built something once (a batch bucket compiling: 25-45 s on an H100) out of the
        waiting requests' clocks: ``wait_timeout`` bounds the wait for a slot, not for the engine's warm-up."""
        if seconds > 0:
            for key in self._waiting_since:
                self._waiting_since[key] += seconds

    def _expire(self, now: float) -> None:
        """Fail requests that waited for a slot longer than the bound (sessions waiting for text excepted)."""
        runner = self.runner
        if len(runner.live) < runner.max_batch:
            return
        for job in list(runner.waiting):
            since = self._waiting_since.get(id(job), now)
            if now - since > self.config.wait_timeout:
                runner.waiting.remove(job)
                self._waiting_since.pop(id(job), None)
                job.finish_reason = "error"
                job.sink(EngineBusy(f"no free slot within {self.config.wait_timeout:g} s; retry later",
                                    self._retry_after()))


class _Synthetic:
    """Warm-up request ``n``: a zero prompt of ``8 + n`` positions, no text, sampled codes, ``frames`` frames."""

    def __init__(self, tts: TTS, n: int, frames: int) -> None:
        hidden = tts.cfg.talker.hidden_size
        self.prompt = torch.zeros(8 + n, hidden, dtype=tts.dtype, device=tts.device)
        self.trailing = self.prompt[:0]
        self.params = StreamParams(SamplingParams(), SamplingParams(), seed=n)
        self.frames = frames

    def job(self, sink: Callable[[Any], None], policy: ChunkPolicy | None = None,
            started: float | None = None) -> Job:
        return Job(self.params, sink, prompt=self.prompt, trailing=self.trailing, max_new_tokens=self.frames,
                   policy=policy, started=started)
