"""Text that arrives in pieces (e.g. tokens from an LLM), turned into text tokens that can no longer change.

BPE works on pre-tokens (the Qwen2 regex splits text into words, numbers, punctuation runs and spaces),
and each pre-token is encoded on its own. Appending text can only change the *last* pre-token of what
has arrived (a word may continue, a space may join the next word), so every token before the last
pre-token is final: ``TextFeed`` commits those and holds the trailing pre-token back until more text or
the end arrives. The committed tokens of the whole text equal ``encode(text.strip())``.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable

from tokenizers import Regex, pre_tokenizers

from .errors import InputError
from .text import QWEN2_PATTERN, TextTokenizer

_SPLIT = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")


class TextFeed:
    """A thread-safe buffer of incoming text and the tokens committed from it.

    ``push(text)`` appends; ``end()`` marks the text complete (commits the held-back tail). ``tokens``
    grows only at the end (committed tokens never change); ``version`` counts changes so a consumer can
    wait for new tokens with ``wait(version)``.
    """

    def __init__(self, tokenizer: TextTokenizer, max_tokens: int = 4096) -> None:
        self._tok = tokenizer
        self.max_tokens = max_tokens
        self._cond = threading.Condition()
        self._pending = ""  # text not yet committed (starts at a pre-token boundary)
        self._started = False  # leading whitespace of the whole text is dropped (the text is stripped)
        self.tokens: list[int] = []
        self.ended = False
        self.closed = False
        self.version = 0
        self.notify: Callable[[], None] | None = None  # called after every change (e.g. to wake an engine)

    def push(self, text: str) -> None:
        """Append ``text``; commits every token that further text cannot change."""
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        with self._cond:
            if self.ended or self.closed:
                raise InputError("the text of this stream has already ended")
            if not self._started:
                text = text.lstrip()
                self._started = bool(text)
            self._pending += text
            stable = self._stable_prefix(self._pending)
            if stable:
                self._commit(stable)
                self._pending = self._pending[len(stable):]
            self._changed()

    def end(self) -> None:
        """Mark the text complete: the held-back tail (stripped of trailing whitespace) is committed."""
        with self._cond:
            if self.ended or self.closed:
                return
            tail = self._pending.rstrip()
            if tail:
                self._commit(tail)
            self._pending = ""
            self.ended = True
            self._changed()

    def close(self) -> None:
        """Abandon the feed (cancellation): wakes every waiter."""
        with self._cond:
            self.closed = True
            self._changed()

    def wait(self, version: int, timeout: float | None = None) -> int:
        """Block until ``self.version != version`` (or ``timeout`` seconds); returns the current version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != version, timeout)
            return self.version

    def snapshot(self) -> tuple[list[int], bool]:
        """A copy of the committed tokens and whether the text has ended."""
        with self._cond:
            return list(self.tokens), self.ended

    def _stable_prefix(self, text: str) -> str:
        """The longest prefix of ``text`` whose tokens are final: all pre-tokens but the last."""
        pieces = _SPLIT.pre_tokenize_str(unicodedata.normalize("NFC", text))
        if len(pieces) < 2:
            return ""
        cut = pieces[-1][1][0]
        normalized = unicodedata.normalize("NFC", text)
        stable = normalized[:cut]
        # Only cut where normalisation did not move characters across the boundary.
        return stable if text.startswith(stable) else ""

    def _commit(self, text: str) -> None:
        ids = self._tok.encode(text)
        if len(self.tokens) + len(ids) > self.max_tokens:
            self.closed = True
            self._changed()
            raise InputError(f"text is too long: over {self.max_tokens} tokens")
        self.tokens.extend(ids)

    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()
        if self.notify is not None:
            self.notify()
