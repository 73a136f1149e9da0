"""Audio streaming: frames are decoded once each by the stateful codec decoder as they are generated.

``stream_prepared`` drives one prepared request: the frame loop yields frames, a chunk policy groups them,
and ``CodecDecoder.decode_step`` turns each group into exactly ``1920 × frames`` new samples. For ICL
clones the reference codes warm the decoder state first and their audio is dropped. Closing the iterator
stops generation and drops all its state.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InputError
from .loop import iter_frames

if TYPE_CHECKING:
    from .api import TTS, Prepared


@dataclasses.dataclass(frozen=True)
class ChunkPolicy:
    """Frames per audio chunk: ``first``, then doubling up to ``largest`` (default 1, 2, 4, 8, 8, ...)."""

    first: int = 1
    largest: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.largest:
            raise InputError(f"chunk policy needs 1 <= first <= largest, got {self.first}, {self.largest}")

    def sizes(self) -> Iterator[int]:
        size = self.first
        while True:
            yield size
            size = min(2 * size, self.largest)


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    """A piece of a stream: ``audio [1920 * (end - start)]`` float32 for frames ``start..end``; the last
    chunk has ``finish_reason`` (``stop`` / ``length``) and may be empty. ``elapsed`` = seconds since the
    request started, when this chunk was ready."""

    audio: np.ndarray
    sample_rate: int
    start: int
    end: int
    elapsed: float
    finish_reason: str | None = None


@torch.no_grad()
def stream_prepared(tts: TTS, prepared: Prepared, policy: ChunkPolicy | None = None,
                    started: float | None = None, on_frame: Callable[[int], None] | None = None
                    ) -> Iterator[AudioChunk]:
    """Generate and decode ``prepared`` incrementally; joined chunks equal ``tts.decode`` of all codes.
    ``on_frame(0)`` is called per generated frame."""
    started = time.perf_counter() if started is None else started
    decoder = tts.codec.decoder
    state = decoder.init_state(1)
    if prepared.ref_codes is not None and prepared.ref_codes.shape[0]:
        decoder.decode_step(prepared.ref_codes.T[None].to(tts.device), state)  # warm-up; audio dropped
    sizes = policy.sizes() if policy else ChunkPolicy().sizes()
    target, pending, done = next(sizes), [], 0

    def flush(reason: str | None) -> AudioChunk:
        nonlocal pending, done
        if pending:
            codes = torch.stack(pending).T[None].to(tts.device)
            audio = decoder.decode_step(codes, state)[0, 0].float().cpu().numpy()
        else:
            audio = np.zeros(0, dtype=np.float32)
        chunk = AudioChunk(audio, tts.sample_rate, done, done + len(pending), time.perf_counter() - started, reason)
        done += len(pending)
        pending = []
        return chunk

    for _, frame, reason in iter_frames(tts.model.talker, [prepared.stream], tts.tts_pad()):
        if frame is None:
            yield flush(reason)
            return
        pending.append(frame)
        if on_frame is not None:
            on_frame(0)
        if len(pending) >= target:
            yield flush(None)
            target = next(sizes)
