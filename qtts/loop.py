"""Offline generation of a fixed group of streams (``synthesize`` / ``synthesize_batch``) on the runner.

Finish rules (in ``runner``) match the official ``generate``: a stream stops when its sampled code-0 is EOS
(that frame is not emitted) or when it has sampled ``max_new_tokens`` code-0s; the frame of the last sampled
code-0 is never completed, so a stream that hits the limit has ``max_new_tokens - 1`` frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .generate import StreamParams
from .runner import AudioChunk, ChunkPolicy, Job, Runner

_WHOLE = ChunkPolicy(1 << 30, 1 << 30)  # offline: one chunk at the end


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


def generate_codes(runner: Runner, streams: list[StreamInput], on_frame: Callable[[int], None] | None = None
                   ) -> list[StreamOutput]:
    """Generate every stream to its end on ``runner`` (idle, ``max_batch >= 1``; streams beyond its slots wait
    for one); ``on_frame(i)`` is called per frame of stream ``i``."""
    chunks: list[list[AudioChunk]] = [[] for _ in streams]
    for i, s in enumerate(streams):
        tick = None if on_frame is None else (lambda i=i: on_frame(i))
        runner.submit(Job(s.params, chunks[i].append, prompt=s.prompt, trailing=s.trailing,
                          max_new_tokens=s.max_new_tokens, policy=_WHOLE, decode=False, on_frame=tick))
    try:
        while not runner.idle:
            runner.step()
    finally:
        for job in runner.live + runner.waiting:
            job.cancel()
        runner.step()
    G = runner.groups
    outs = []
    for got in chunks:
        codes = [c.codes for c in got if c.codes is not None and c.codes.shape[0]]
        outs.append(StreamOutput(torch.cat(codes) if codes else torch.zeros(0, G, dtype=torch.long),
                                 got[-1].finish_reason or "length"))
    return outs
