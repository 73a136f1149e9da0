"""Audio streaming in the caller's thread: a one-slot ``Runner`` driven by a generator.

Each frame is decoded exactly once by the job's stateful codec decoder, as it is generated; for ICL clones
the reference codes warm the decoder state first and their audio is dropped. Closing the iterator cancels
the job, which frees its slot and state before the generator returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from .runner import AudioChunk, ChunkPolicy, Job

if TYPE_CHECKING:
    from .api import TTS

__all__ = ["AudioChunk", "ChunkPolicy", "run_job"]


def run_job(tts: TTS, job: Job) -> Iterator[AudioChunk]:
    """Drive ``job`` alone to its end in this thread, yielding its chunks. Closing the iterator cancels it.
    A session job waiting for text blocks here until text arrives (pushed from another thread)."""
    out: list[AudioChunk | BaseException] = []
    sink = job.sink

    def collect(item: AudioChunk | BaseException) -> None:
        out.append(item)
        sink(item)

    job.sink = collect
    runner = tts.take_runner(1)
    runner.submit(job)
    try:
        while not job.finished:
            if not runner.step() and job.session is not None:
                feed = job.session.feed
                feed.wait(feed.version, timeout=0.5)
            while out:
                item = out.pop(0)
                if isinstance(item, BaseException):
                    raise item
                yield item
        for item in out:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if not job.finished:
            job.cancel()
            runner.step()
        tts.give_runner(runner)


async def iterate_in_thread(chunks: Iterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
    """Pull from a blocking chunk iterator in a worker thread, so model work never runs on the event loop.
    Closing or cancelling is the caller's job (its ``finally``)."""
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            return
        yield chunk
