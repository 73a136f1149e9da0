"""Host-side driver of the frame loop for a fixed group of streams (offline synthesis and batches).

Finish rules match the official ``generate``: a stream stops when its sampled code-0 is EOS (that
frame is not emitted) or when it has sampled ``max_new_tokens`` code-0s; the frame of the last sampled
code-0 is never completed, so a stream that hits the limit has ``max_new_tokens - 1`` frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch

from .generate import FrameState, StreamParams, decode_frame, prefill
from .model.talker import Talker

INITIAL_FRAMES = 256  # cache slots beyond the longest prompt at start; grown by doubling


@dataclasses.dataclass(frozen=True)
class StreamInput:
    """One stream: prefill vectors ``[P, H]``, trailing text vectors ``[N, H]``, sampling, frame budget."""

    prompt: torch.Tensor
    trailing: torch.Tensor
    params: StreamParams
    max_new_tokens: int


@dataclasses.dataclass
class StreamOutput:
    """Generated frames ``[T, G]`` (long, CPU) and why the stream ended: ``stop`` or ``length``."""

    codes: torch.Tensor
    finish_reason: str


def iter_frames(talker: Talker, streams: list[StreamInput], pad: torch.Tensor
                ) -> Iterator[tuple[int, torch.Tensor | None, str | None]]:
    """Run ``streams`` as one batch. Yields ``(row, frame [G] or None, finish_reason or None)`` events:
    a frame for a running row, or the row's end (``frame`` None, reason ``stop``/``length``)."""
    B = len(streams)
    longest = max(s.prompt.shape[0] for s in streams)
    state = FrameState(talker, B, longest + INITIAL_FRAMES)
    state.pad.copy_(pad)
    host_pos = [0] * B
    for row, s in enumerate(streams):
        prefill(talker, state, row, s.prompt, s.trailing, s.params)
        host_pos[row] = s.prompt.shape[0]
    sampled = [1] * B
    running = set(range(B))
    eos = talker.cfg.codec_eos_token_id
    while running:
        code0 = state.code0.tolist()
        for row in sorted(running):
            reason = "stop" if code0[row] == eos else "length" if sampled[row] >= streams[row].max_new_tokens else None
            if reason is not None:
                running.discard(row)
                state.active[row] = False
                yield row, None, reason
        if not running:
            return
        span = max(host_pos[r] for r in running) + 1
        if span > state.cache.max_len:
            state.cache.grow(2 * state.cache.max_len)
        codes = decode_frame(talker, state, span).cpu()
        for row in sorted(running):
            host_pos[row] += 1
            sampled[row] += 1
            yield row, codes[row], None


def generate_codes(talker: Talker, streams: list[StreamInput], pad: torch.Tensor,
                   on_frame: Callable[[int], None] | None = None) -> list[StreamOutput]:
    """Generate every stream to its end; ``on_frame(row)`` is called per emitted frame (progress)."""
    frames: list[list[torch.Tensor]] = [[] for _ in streams]
    reasons: list[str] = ["length"] * len(streams)
    G = talker.cfg.num_code_groups
    for row, frame, reason in iter_frames(talker, streams, pad):
        if frame is not None:
            frames[row].append(frame)
            if on_frame is not None:
                on_frame(row)
        else:
            reasons[row] = reason or "length"
    return [
        StreamOutput(torch.stack(f) if f else torch.zeros(0, G, dtype=torch.long), r)
        for f, r in zip(frames, reasons, strict=True)
    ]
