"""``WS /v1/audio/stream``: text in (e.g. LLM tokens), audio out, several utterances per connection.

Client -> server (JSON text messages):

* ``{"type": "config", "model": ..., "voice": ..., "language": ..., "instructions": ..., "seed": ...,
  <sampling>, "max_new_tokens": ...}`` — optional, before an utterance's first text; applies to the following
  utterances (the voice is kept across utterances). ``model`` is checked, voices map (and clone voices route
  to the clone model) as in ``POST /v1/audio/speech``.
* ``{"type": "text", "text": "..."}`` — a piece of text; the first piece after a flush starts an utterance.
* ``{"type": "flush"}`` — the utterance's text is complete; it is spoken to the end. An utterance that gets
  no message for ``ServerSettings.text_timeout`` seconds before its flush is cancelled (error on ``text``).
* ``{"type": "cancel"}`` — stop the current utterance now.

Server -> client: ``{"type": "started", "utterance": n}``; per audio chunk a binary message (PCM s16le,
24 kHz mono) followed by ``{"type": "chunk", "utterance": n, "start": f0, "end": f1, "elapsed": s}`` (frame
range, seconds since the utterance started); ``{"type": "done", "utterance": n, "finish_reason": ...,
"ttfa": s, "frames": n, "audio_seconds": s}``; ``{"type": "error", "message": ..., "param": ...}`` for bad
messages (the connection stays open). Utterances are spoken in order. Disconnecting cancels everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ..api import PreparedSession, SynthesisOptions
from ..engine import EngineBusy, EngineClosed, StreamHandle
from ..errors import QttsError
from .errors import ApiError, from_validation
from .formats import to_s16le
from .schema import StreamConfig
from .speech import input_error
from .state import ServerState
from .voicemap import resolve_voice

log = logging.getLogger("qtts.server")


class _Connection:
    """One WebSocket: its config, the utterance receiving text, and the pumps sending audio in order."""

    def __init__(self, ws: WebSocket, state: ServerState) -> None:
        self.ws, self.state = ws, state
        self.config = StreamConfig()
        self.voice: Any = None
        self.instruct: str | None = None
        self.resolved = False  # the voice has been resolved (from a config message or the kind's default)
        self.count = 0
        self.session: PreparedSession | None = None
        self.handle: StreamHandle | None = None
        self.chars = 0
        self.handles: list[StreamHandle] = []
        self.pump: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any] | bytes) -> None:
        async with self._send_lock:
            if isinstance(message, bytes):
                await self.ws.send_bytes(message)
            else:
                await self.ws.send_text(json.dumps(message, separators=(",", ":")))

    async def error(self, message: str, param: str | None = None, **extra: Any) -> None:
        await self.send({"type": "error", "message": message, "param": param, **extra})

    async def configure(self, data: dict[str, Any]) -> None:
        if self.session is not None:
            raise ApiError(400, "type: config is only allowed between utterances (send flush first)", "type")
        try:
            config = StreamConfig.model_validate(data)
        except ValidationError as e:
            raise from_validation(e) from None
        role = self.state.model_ids.check(config.model)  # as in POST /v1/audio/speech
        voice, instruct = await resolve_voice(self.state.tts, self.state.library, config.voice, config.instructions)
        try:
            tts, engine = self.state.engine_for(voice)
        except QttsError as e:
            raise input_error(e) from None
        self.state.model_ids.check_engine(role, engine is self.state.clone_engine, config.voice)
        most = tts.generation.max_new_tokens
        if config.max_new_tokens is not None and config.max_new_tokens > most:
            raise ApiError(422, f"max_new_tokens: at most {most}", "max_new_tokens")
        self.voice, self.instruct = voice, instruct
        self.config, self.resolved = config, True

    async def start(self) -> None:
        """Open a new utterance: a text-in session on the engine, and a pump that sends its audio."""
        state, c = self.state, self.config
        options = SynthesisOptions(sampling=c.sampling(), max_new_tokens=c.max_new_tokens)
        if not self.resolved:  # no config message: the kind's default voice (an error where there is none)
            self.voice, self.instruct = await resolve_voice(state.tts, state.library, None, None)
            self.resolved = True
        try:
            tts, engine = state.engine_for(self.voice)  # clone voices on the clone model, when one is loaded
            session = await engine.run(tts.prepare_session, self.voice, c.language, self.instruct, c.seed, options)
            handle = engine.submit(session)
        except QttsError as e:
            raise _as_api(e) from None
        self.session, self.handle, self.chars = session, handle, 0
        self.handles = [h for h in self.handles if h.stats is None] + [handle]
        self.pump = asyncio.create_task(self._pump(self.count, handle, self.pump))
        self.count += 1

    async def text(self, data: dict[str, Any]) -> None:
        piece = data.get("text")
        if not isinstance(piece, str):
            raise ApiError(422, "text: must be a string", "text")
        if self.session is None:
            if not piece.strip():
                return
            await self.start()
        limit = self.state.settings.max_input_chars
        self.chars += len(piece)
        if self.chars > limit:
            self.cancel()
            raise ApiError(400, f"text: the utterance is too long (over {limit} characters); it was cancelled",
                           "text")
        try:
            self.session.feed.push(piece)
        except QttsError as e:
            self.cancel()
            raise input_error(e) from None

    def flush(self) -> None:
        if self.session is None:
            raise ApiError(400, "type: flush without text (send text first)", "type")
        self.session.feed.end()
        self.session, self.handle = None, None

    def idle_limit(self) -> float | None:
        """Seconds to wait for the next message: bounded while an utterance waits for text."""
        return self.state.settings.text_timeout if self.session is not None else None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.session, self.handle = None, None

    async def _pump(self, index: int, handle: StreamHandle, previous: asyncio.Task | None) -> None:
        if previous is not None:  # speak in order; our own cancellation still propagates
            await asyncio.wait({previous})
        try:
            await self.send({"type": "started", "utterance": index})
            async for chunk in handle:
                if len(chunk.audio):
                    await self.send(to_s16le(chunk.audio))
                await self.send({"type": "chunk", "utterance": index, "start": chunk.start, "end": chunk.end,
                                 "elapsed": round(chunk.elapsed, 4)})
            stats = handle.stats
            await self.send({"type": "done", "utterance": index,
                             "finish_reason": stats.finish_reason if stats else "cancelled",
                             "ttfa": stats.ttfa if stats else None, "frames": stats.frames if stats else 0,
                             "audio_seconds": stats.audio if stats else 0.0})
        except QttsError as e:
            err = _as_api(e)
            with contextlib.suppress(Exception):
                await self.error(err.message, err.param, utterance=index,
                                 retry_after=err.headers.get("Retry-After"))
        except Exception:  # the socket went away: nothing to tell
            pass
        finally:
            handle.cancel()

    async def close(self) -> None:
        """Cancel every stream of this connection (disconnect)."""
        for handle in self.handles:
            handle.cancel()
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
            with contextlib.suppress(BaseException):
                await self.pump


def _as_api(error: QttsError) -> ApiError:
    if isinstance(error, (EngineBusy, EngineClosed)):
        retry = max(1, round(getattr(error, "retry_after", 1.0)))
        return ApiError(503, str(error), None, {"Retry-After": str(retry)})
    return input_error(error)


async def _handle(conn: _Connection, raw: str) -> None:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"message: invalid JSON ({e})", "message") from None
    if not isinstance(data, dict):
        raise ApiError(400, "message: must be a JSON object", "message")
    kind = data.get("type")
    if kind == "config":
        await conn.configure(data)
    elif kind == "text":
        await conn.text(data)
    elif kind == "flush":
        conn.flush()
    elif kind == "cancel":
        conn.cancel()
    else:
        raise ApiError(400, f"type: unknown message type {kind!r}; valid: config, text, flush, cancel", "type")


def stream_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.websocket("/v1/audio/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        conn = _Connection(ws, state)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.receive(), conn.idle_limit())
                except asyncio.TimeoutError:
                    conn.cancel()
                    limit = state.settings.text_timeout
                    await conn.error(f"text: no text for {limit:g} s; the utterance was cancelled", "text")
                    continue
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await conn.error("message: binary messages are not accepted; send JSON text", "message")
                    continue
                try:
                    await _handle(conn, message["text"])
                except ApiError as e:
                    await conn.error(e.message, e.param)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            await conn.close()

    return router
