"""``StreamSession``: text in (pushed in pieces), audio out (iterated while text still arrives)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from .errors import InputError
from .runner import AudioChunk, Job
from .stream import iterate_in_thread
from .textfeed import TextFeed


class StreamSession:
    """One utterance whose text arrives in pieces.

    ``push_text(piece)`` and ``end()`` may be called from any thread (or the event loop); audio is read by
    iterating the session once, synchronously (``for chunk in session``, blocking while the model waits for
    text) or asynchronously (``async for chunk in session``). ``close()`` (or leaving a ``with`` block)
    cancels generation at once and frees its state.
    """

    def __init__(self, feed: TextFeed, job: Job, chunks: Callable[[], Iterator[AudioChunk]]) -> None:
        self._feed, self._job, self._make = feed, job, chunks
        self._iterator: Iterator[AudioChunk] | None = None

    @property
    def finish_reason(self) -> str | None:
        """``stop`` / ``length`` / ``cancelled`` once the audio has ended, else None."""
        return self._job.finish_reason

    def push_text(self, text: str) -> None:
        """Append a piece of text. Tokens are committed once further text cannot change them."""
        self._feed.push(text)

    def end(self) -> None:
        """The text is complete; the model speaks the rest and ends."""
        self._feed.end()

    def close(self) -> None:
        """Cancel: generation stops before its next frame and the session's state is freed."""
        self._job.cancel()
        self._close_iterator()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[AudioChunk]:
        if self._iterator is not None:
            raise InputError("a session's audio can be iterated only once")
        self._iterator = self._make()
        return self._iterator

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        try:
            async for chunk in iterate_in_thread(iter(self)):
                yield chunk
        finally:
            self._job.cancel()
            await asyncio.to_thread(self._close_iterator)

    def _close_iterator(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            # ValueError: being iterated in another thread; it stops before its next frame anyway.
            with contextlib.suppress(ValueError):
                self._iterator.close()
