"""The runner: one batch of live streams advanced together, one frame per ``step``.

A ``Runner`` owns the ``FrameState`` of up to ``max_batch`` slots. Between frames it retires finished or
cancelled jobs (packing live slots so the frame step runs on rows ``0..n-1`` only), feeds text that arrived
for text-in sessions, and admits waiting jobs (prefill). Each frame step advances every live job that can
advance; a job whose next text token has not arrived yet is paused (computed, not advanced) until it does.
Frames are grouped per job by its ``ChunkPolicy`` and decoded by the job's own streaming codec state.

Everything here is host bookkeeping in plain Python; the tensor work is ``generate.prefill`` /
``generate.decode_frame`` and ``CodecDecoder.decode_step``. One device transfer per frame brings back the
completed frames and the next code-0 of every row (for the EOS check). The runner is not thread-safe:
one thread drives it (``Engine`` or a synchronous iterator); other threads only set ``Job.cancelled`` and
push text into a ``TextFeed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .accel import FrameStep
from .codec.chunks import ChunkDecoder
from .codec.decoder import CodecDecoder
from .errors import InputError
from .generate import FrameState, StreamParams, prefill
from .model.talker import Talker
from .request import frame_budget
from .textfeed import TextFeed

INITIAL_FRAMES = 256  # cache slots beyond the prompt at allocation; grown by doubling


@dataclasses.dataclass(frozen=True)
class ChunkPolicy:
    """Frames per audio chunk: ``first``, then doubling up to ``largest`` (default 1, 2, 4, 8, 8, ...)."""

    first: int = 1
    largest: int = 8

    def __post_init__(self) -> None:
        if not (isinstance(self.first, int) and isinstance(self.largest, int) and 1 <= self.first <= self.largest):
            raise InputError(f"chunk policy needs 1 <= first <= largest, got {self.first}, {self.largest}")

    def sizes(self) -> Iterator[int]:
        size = self.first
        while True:
            yield size
            size = min(2 * size, self.largest)


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    """A piece of a stream: ``audio [1920 * (end - start)]`` float32 for frames ``start..end`` and their
    ``codes [end - start, 16]`` (int64, CPU). The last chunk has ``finish_reason`` (``stop`` / ``length`` /
    ``cancelled``) and may be empty. ``elapsed`` = seconds since the request started, when it was ready.
    Without audio decoding (``Job(decode=False)``) ``audio`` is empty."""

    audio: np.ndarray
    sample_rate: int
    start: int
    end: int
    elapsed: float
    finish_reason: str | None = None
    codes: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class SessionText:
    """The text side of a text-in session: the feed plus how to turn committed tokens into model inputs.

    ``build(tokens, complete)`` returns ``(prompt [P, H], trailing [N, H])`` for the streaming layout;
    ``embed(tokens)`` returns text vectors ``[n, H]``; ``eos`` is the ``tts_eos`` vector ``[1, H]``;
    ``prefill_tokens`` tokens are needed before the prompt can be built (unless the text ended);
    ``max_new_tokens`` fixes the frame budget (None: ``frame_budget`` of the committed tokens).
    """

    feed: TextFeed
    build: Callable[[list[int], bool], tuple[torch.Tensor, torch.Tensor]]
    embed: Callable[[list[int]], torch.Tensor]
    eos: torch.Tensor
    prefill_tokens: int
    max_new_tokens: int | None
    default_max_new_tokens: int


Sink = Callable[[AudioChunk | BaseException], None]


@dataclasses.dataclass
class _Launched:
    """A frame in flight: its results ``out [n, G + 1]`` (host; ready after ``event``) and ``(job, row)`` at
    launch time."""

    out: torch.Tensor
    event: torch.cuda.Event | None
    jobs: list[tuple[Job, int]]


class Job:
    """One request in a runner. Either ``prompt``/``trailing`` are given (the whole text is known) or
    ``session`` supplies text as it arrives. Chunks (and, on failure, one exception) go to ``sink``."""

    def __init__(self, params: StreamParams, sink: Sink, *, prompt: torch.Tensor | None = None,
                 trailing: torch.Tensor | None = None, max_new_tokens: int | None = None,
                 session: SessionText | None = None, ref_codes: torch.Tensor | None = None,
                 policy: ChunkPolicy | None = None, decode: bool = True, started: float | None = None,
                 on_frame: Callable[[], None] | None = None) -> None:
        if session is None and (prompt is None or trailing is None or max_new_tokens is None):
            raise ValueError("a job needs prompt, trailing and max_new_tokens, or a session")
        self.params, self.sink, self.session = params, sink, session
        self.prompt, self.trailing, self.max_new_tokens = prompt, trailing, max_new_tokens
        self.ref_codes, self.decode, self.on_frame = ref_codes, decode, on_frame
        self.started = time.perf_counter() if started is None else started
        self._sizes = (policy or ChunkPolicy()).sizes()
        self.target = next(self._sizes)
        self._cancelled = False  # set from any thread
        self.finish_reason: str | None = None
        self.row = -1
        self.position = 0  # next cache position (host copy)
        self.sampled = 0  # code-0s sampled so far (counting frames launched but not yet read)
        self.inflight = 0  # frames launched whose results have not been read
        self.code0 = -1  # the pending code-0 (host copy)
        self.text_len = 0  # text vectors given to the slot
        self.text_complete = session is None  # tts_eos has been given (pads follow)
        self.tokens_used = 0  # session tokens turned into model inputs
        self.pending: list[torch.Tensor] = []
        self.emitted = 0  # frames emitted in chunks
        self.codec_state = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def cancelled(self) -> bool:
        """``cancel`` was called, or the job's text feed was abandoned."""
        return self._cancelled or (self.session is not None and self.session.feed.closed)

    def cancel(self) -> None:
        """Ask the runner to stop this job (thread-safe; takes effect before the next frame)."""
        self._cancelled = True
        if self.session is not None:
            self.session.feed.close()

    def budget(self) -> int:
        """Frame budget (code-0s the job may sample)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        s = self.session
        assert s is not None
        if s.max_new_tokens is not None:
            return s.max_new_tokens
        return frame_budget(len(s.feed.tokens), s.default_max_new_tokens)

    def can_advance(self) -> bool:
        """The text vector this frame needs has arrived (or the text is complete)."""
        return self.text_complete or self.sampled - 1 < self.text_len


class Runner:
    """Drives up to ``max_batch`` jobs through prefill, frame steps and streaming codec decode."""

    def __init__(self, talker: Talker, pad: torch.Tensor, decoder: CodecDecoder | None = None,
                 sample_rate: int = 24000, max_batch: int = 1, step: FrameStep | None = None,
                 pipelined: bool | None = None, chunk_decoder: ChunkDecoder | None = None,
                 codec_stream: bool = False) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.talker, self.pad, self.decoder, self.max_batch = talker, pad, decoder, max_batch
        self.eos_id = talker.cfg.codec_eos_token_id
        self.groups = talker.cfg.num_code_groups
        self.sample_rate = sample_rate
        self.codec_device = next(decoder.parameters()).device if decoder is not None else None
        # Chunk decode of one stream (eager, or on fixed buffers replayed as CUDA graphs).
        self.chunk_decoder = chunk_decoder or (ChunkDecoder(decoder) if decoder is not None else None)
        self.step_fn = step or FrameStep(talker)
        device = talker.codec_head.weight.device
        # Pipelined: frame t+1 is launched before frame t's results are read, so host work (EOS checks,
        # chunking, codec calls) overlaps device work. A stream that ended at frame t has one wasted frame.
        self.pipelined = (device.type == "cuda") if pipelined is None else pipelined
        # Codec stream (CUDA): chunk decodes run on their own CUDA stream, so that, pipelined, a chunk's decode
        # overlaps the next frame step on the device instead of queueing behind it; reading the audio then
        # waits for the decode alone. Everything of a stream's codec state is made and used on that stream.
        self.codec_stream = torch.cuda.Stream(self.codec_device) \
            if codec_stream and self.codec_device is not None and self.codec_device.type == "cuda" else None
        self._inflight: _Launched | None = None
        self.live: list[Job] = []  # live[i].row == i
        self.waiting: list[Job] = []
        self.state: FrameState | None = None
        self.frames = 0  # frame steps run (for metrics)

    # ---- queue ------------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``; it is admitted (prefilled) in a later ``step`` when a slot is free."""
        self.waiting.append(job)
        return job

    @property
    def idle(self) -> bool:
        return not self.live and not self.waiting

    # ---- one round --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> bool:
        """Retire, feed text, admit, then advance every live job that can by one frame (and, pipelined, read
        the previous frame meanwhile). Returns False when nothing could be done (every live job waits for
        text, or there is nothing to run)."""
        self.step_fn.enter()  # this thread may run compiled code for the first time (prefill, the frame step)
        worked = self._drop_cancelled()
        for job in self.live:
            worked |= self._feed(job)
        worked |= self._admit()
        for job in list(self.live):
            if job.code0 == self.eos_id:
                self._finish(job, "stop")
                worked = True
            elif job.inflight == 0 and job.sampled >= job.budget():
                self._finish(job, "length")
                worked = True
        advancing = [job for job in self.live if job.can_advance() and job.sampled < job.budget()]
        previous, self._inflight = self._inflight, None
        if advancing:
            self._inflight = self._launch(advancing)
        if previous is not None:  # pipelined: read frame t while frame t+1 runs
            self._process(previous)
        # Unpipelined, or until a stream's first chunk is out, read the new frame at once: pipelining would
        # add a frame to the time to first audio (the chunk's codec work would queue behind the next frame).
        if self._inflight is not None and (not self.pipelined or any(j.emitted == 0 for j in advancing)):
            current, self._inflight = self._inflight, None
            self._process(current)
        return worked or previous is not None or bool(advancing)

    def fail_all(self, error: BaseException) -> None:
        """Fail every job with ``error`` and drop all state (after an unexpected error in a step)."""
        for job in self.live + self.waiting:
            if not job.finished:
                job.finish_reason = "error"
                job.sink(error)
        self.live, self.waiting, self.state, self._inflight = [], [], None, None

    # ---- internals ----------------------------------------------------------------------------------

    def _drop_cancelled(self) -> bool:
        worked = False
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            job.finish_reason = "cancelled"
            job.sink(self._chunk(job, np.zeros(0, dtype=np.float32), None, "cancelled"))
            worked = True
        for job in [j for j in self.live if j.cancelled]:
            job.pending = []  # a cancelled stream's unsent frames are not decoded
            self._finish(job, "cancelled")
            worked = True
        return worked

    def _ready(self, job: Job) -> bool:
        s = job.session
        if s is None:
            return True
        return s.feed.ended or s.feed.closed or len(s.feed.tokens) >= s.prefill_tokens

    def _admit(self) -> bool:
        worked = False
        for job in list(self.waiting):
            if len(self.live) >= self.max_batch:
                break
            if not self._ready(job):
                continue
            self.waiting.remove(job)
            worked = True
            try:
                self._prefill(job)
            except InputError as e:  # e.g. a session whose text ended empty
                job.finish_reason = "error"
                job.sink(e)
        return worked

    def _prefill(self, job: Job) -> None:
        s = job.session
        if s is not None:
            tokens, ended = s.feed.snapshot()
            if not tokens:
                raise InputError("text is empty")
            job.prompt, job.trailing = s.build(tokens, ended)
            job.tokens_used, job.text_complete = len(tokens), ended
        prompt, trailing = job.prompt, job.trailing
        assert prompt is not None and trailing is not None
        P = prompt.shape[0]
        if self.state is None:
            self.state = self.step_fn.allocate(self.max_batch, P + INITIAL_FRAMES)
            self.state.pad.copy_(self.pad)
        state = self.state
        if state.cache.max_len < P + 1:
            state.cache.grow(max(2 * state.cache.max_len, P + INITIAL_FRAMES))
        job.row = len(self.live)
        self.live.append(job)
        prefill(self.talker, state, job.row, prompt, trailing, job.params)
        job.code0 = int(state.code0[job.row])
        job.position, job.sampled, job.text_len = P, 1, trailing.shape[0]
        job.prompt = job.trailing = None  # not needed any more
        if job.decode and self.decoder is not None:
            if self.codec_stream is not None:  # the codec stream sees everything issued so far (buffers made)
                self.codec_stream.wait_stream(torch.cuda.current_stream(self.codec_device))
            with self._codec_context():
                job.codec_state = self.decoder.init_state(1)
                if job.ref_codes is not None and job.ref_codes.shape[0]:
                    ref = job.ref_codes.T[None].to(self.codec_device)
                    self.decoder.decode_step(ref, job.codec_state)  # warm-up; audio dropped

    def _feed(self, job: Job) -> bool:
        """Give a live session slot the text vectors of tokens committed since it last looked."""
        s = job.session
        if s is None or job.text_complete or self.state is None:
            return False
        tokens, ended = s.feed.snapshot()
        new = tokens[job.tokens_used:]
        vectors = [s.embed(new)] if new else []
        if ended:
            vectors.append(s.eos)
        if not vectors:
            return False
        block = torch.cat(vectors)
        self.state.set_text(job.row, block, start=job.text_len)
        job.text_len += block.shape[0]
        job.tokens_used = len(tokens)
        job.text_complete = ended
        return True

    def _launch(self, advancing: list[Job]) -> _Launched:
        """Start one frame for ``advancing`` (other live slots are paused); host counters advance now."""
        state = self.state
        assert state is not None
        n = len(self.live)
        # No blocking host-to-device copy per frame (it would wait for the frame in flight when pipelined): when
        # every live slot advances (the usual case) the mask is filled on the device, else copied asynchronously.
        if len(advancing) == n:
            state.active[:n].fill_(True)
        else:
            live = set(map(id, advancing))
            mask = torch.tensor([id(job) in live for job in self.live], pin_memory=state.active.is_cuda)
            state.active[:n].copy_(mask, non_blocking=True)
        needed = max(job.position for job in advancing) + 1
        if needed > state.cache.max_len:
            state.cache.grow(2 * state.cache.max_len)
        rows = self.step_fn.rows(n, self.max_batch)
        out = self.step_fn(state, rows, self.step_fn.span(state, needed))[:n]
        event = None
        if out.device.type == "cuda" and self.pipelined:
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = out.cpu()
        self.frames += 1
        for job in advancing:
            job.position += 1
            job.sampled += 1
            job.inflight += 1
        return _Launched(host, event, [(job, job.row) for job in advancing])

    def _process(self, launched: _Launched) -> None:
        """Read a launched frame's results: append frames, note code-0s, emit due chunks."""
        if launched.event is not None:
            launched.event.synchronize()
        out = launched.out
        for job, row in launched.jobs:
            job.inflight -= 1
            if job.finished:  # ended (EOS seen, cancelled) while this frame was in flight: discarded
                continue
            values = out[row]
            job.pending.append(values[: self.groups])
            job.code0 = int(values[self.groups])
            if job.on_frame is not None:
                job.on_frame()
            if job.code0 == self.eos_id:
                self._finish(job, "stop")
            elif job.inflight == 0 and job.sampled >= job.budget():
                self._finish(job, "length")
            elif len(job.pending) >= job.target:
                self._emit(job, None)
                job.target = next(job._sizes)

    def _emit(self, job: Job, reason: str | None) -> None:
        codes = torch.stack(job.pending) if job.pending else torch.zeros(0, self.groups, dtype=torch.long)
        audio = np.zeros(0, dtype=np.float32)
        if job.pending and job.codec_state is not None:
            assert self.decoder is not None
            try:
                with self._codec_context():
                    pcm = self.chunk_decoder(codes.T[None].to(self.codec_device), job.codec_state)
                    audio = pcm[0, 0].float().cpu().numpy()  # on the codec stream: waits for the decode only
            except Exception as error:  # this stream's codec failed: fail it alone, the batch goes on
                self._fail(job, error)
                return
        job.pending = []
        job.sink(self._chunk(job, audio, codes, reason))

    def _codec_context(self) -> contextlib.AbstractContextManager:
        """Where codec work is issued: the codec stream if there is one, else the current stream."""
        return torch.cuda.stream(self.codec_stream) if self.codec_stream is not None else contextlib.nullcontext()

    def _fail(self, job: Job, error: BaseException) -> None:
        """End ``job`` with ``error`` (its sink gets the exception) and free its slot if it still holds one."""
        job.finish_reason = "error"
        job.pending, job.codec_state = [], None
        if job.row >= 0:
            self._release(job)
        job.sink(error)

    def _chunk(self, job: Job, audio: np.ndarray, codes: torch.Tensor | None, reason: str | None) -> AudioChunk:
        start = job.emitted
        job.emitted += 0 if codes is None else codes.shape[0]
        return AudioChunk(audio, self.sample_rate, start, job.emitted, time.perf_counter() - job.started,
                          reason, codes)

    def _release(self, job: Job) -> None:
        """Free ``job``'s slot; the last live slot moves into it so that live rows stay ``0..n-1``."""
        state = self.state
        assert state is not None
        row, last = job.row, self.live[-1]
        if last is not job:
            state.move_row(last.row, row)
            last.row = row
            self.live[row] = last
        self.live.pop()
        state.active[len(self.live)] = False
        job.row = -1

    def _finish(self, job: Job, reason: str) -> None:
        """Free ``job``'s slot (moving the last live slot into it), then emit its last chunk."""
        job.finish_reason = reason
        self._release(job)
        try:
            self._emit(job, reason)
        finally:
            job.codec_state = None
