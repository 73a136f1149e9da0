"""``POST /v1/audio/speech``: OpenAI-compatible text to speech, streamed as it is generated.

The request is validated (``model`` must be a name this server answers to, see ``qtts.server.models``), its
voice resolved and its model inputs prepared on the engine thread
(``engine.run(tts.prepare, ...)``); then it is submitted to the engine (the clone model's engine for a clone
voice on a server started with ``--clone-model``, see ``ServerState.engine_for``). Response headers are sent
only once the first audio chunk is ready, so admission failures still become ``503`` + ``Retry-After``. The body is
either the encoded audio bytes (``stream_format="audio"``, what the OpenAI SDK's ``with_streaming_response``
reads) or Server-Sent Events (``stream_format="sse"``): ``speech.audio.delta`` events carrying base64 audio
bytes and a final ``speech.audio.done`` event with ``usage``. A client that disconnects cancels its stream
at once (its slot is freed before the next frame).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from ..api import SynthesisOptions
from ..engine import EngineBusy, EngineClosed, StreamHandle
from ..errors import InputError, QttsError
from ..runner import AudioChunk
from .errors import ApiError, from_validation
from .formats import CONTENT_TYPES, Encoder, FormatError, check_format, make_encoder
from .schema import SpeechRequest
from .state import ServerState
from .voicemap import resolve_voice

log = logging.getLogger("qtts.server")

_PARAM_HINTS = (("language", "language"), ("too long", "input"), ("text", "input"), ("speaker", "voice"),
                ("clone", "voice"), ("voice", "voice"), ("instruct", "instructions"), ("seed", "seed"),
                ("max_new_tokens", "max_new_tokens"), ("top_k", "top_k"), ("top_p", "top_p"),
                ("temperature", "temperature"), ("penalty", "repetition_penalty"))


def input_error(error: QttsError) -> ApiError:
    """A 400 for a library ``InputError``, naming the field the message is about."""
    message = str(error)
    lowered = message.lower()
    param = next((p for key, p in _PARAM_HINTS if key in lowered), None)
    return ApiError(400, f"{param}: {message}" if param and not message.startswith(param) else message, param)


def busy_error(error: EngineBusy | EngineClosed) -> ApiError:
    retry = getattr(error, "retry_after", 1.0)
    return ApiError(503, str(error), None, {"Retry-After": str(max(1, round(retry)))})


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: a 413 naming ``body`` over ``limit`` bytes (also without Content-Length),
    a 400 naming ``body`` if it is not JSON."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"body: too large (over {limit} bytes)", "body")
        parts.append(part)
    raw = b"".join(parts)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body: invalid JSON ({e})", "body") from None


def parse(body: Any, max_chars: int) -> SpeechRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", "body")
    try:
        req = SpeechRequest.model_validate(body)
    except ValidationError as e:
        raise from_validation(e) from None
    if len(req.input) > max_chars:
        raise ApiError(400, f"input: too long ({len(req.input)} characters; the limit is {max_chars})", "input")
    return req


async def first_chunk(request: Request, chunks: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    """The first chunk of a stream, or None if the client went away first (the stream is then cancelled)."""
    task = asyncio.ensure_future(chunks.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def body(first: AudioChunk, chunks: AsyncIterator[AudioChunk], handle: StreamHandle, encoder: Encoder,
               sse: bool, text_tokens: int, log_info: dict[str, Any]) -> AsyncIterator[bytes]:
    """The response body; the ``finally`` cancels the stream when the client goes away."""

    def wrap(data: bytes) -> bytes:
        if not sse:
            return data
        return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) if data else b""

    try:
        yield wrap(encoder.feed(first.audio))
        last = first
        if first.finish_reason is None:
            async for chunk in chunks:
                last = chunk
                data = wrap(encoder.feed(chunk.audio))
                if data:
                    yield data
        tail = wrap(encoder.finish())
        if tail:
            yield tail
        frames = last.end
        if sse:
            yield _sse({"type": "speech.audio.done",
                        "usage": {"input_tokens": text_tokens, "output_tokens": frames,
                                  "total_tokens": text_tokens + frames}})
        stats = handle.stats
        log_info.update(finish_reason=last.finish_reason, frames=frames,
                        ttfa=None if stats is None or stats.ttfa is None else round(stats.ttfa, 4),
                        rtf=None if stats is None or stats.rtf is None else round(stats.rtf, 4))
    except QttsError as e:
        log.warning("stream failed mid-response: %s", e)
        log_info.update(error=str(e))
        if sse:
            yield _sse({"type": "error", "error": {"message": str(e), "type": "server_error"}})
        else:
            raise
    finally:
        handle.cancel()  # no-op when finished; frees the slot at once when the client went away
        if handle.stats is None:
            log_info.setdefault("finish_reason", "cancelled")


def speech_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        req = parse(await read_json(request, state.settings.max_upload_bytes), state.settings.max_input_chars)
        role = state.model_ids.check(req.model)  # 400 naming model for a name this server does not answer to
        try:
            check_format(req.response_format)
        except FormatError as e:
            raise ApiError(400, str(e), "response_format") from None
        voice, instruct = await resolve_voice(state.tts, state.library, req.voice_name, req.instructions)
        try:
            tts, engine = state.engine_for(voice)  # clone voices on the clone model, when one is loaded
        except InputError as e:
            raise input_error(e) from None
        state.model_ids.check_engine(role, engine is state.clone_engine, req.voice_name)
        if req.max_new_tokens is not None and req.max_new_tokens > tts.generation.max_new_tokens:
            raise ApiError(422, f"max_new_tokens: at most {tts.generation.max_new_tokens}", "max_new_tokens")
        options = SynthesisOptions(sampling=req.sampling(), max_new_tokens=req.max_new_tokens)
        try:
            prepared = await engine.run(tts.prepare, req.input, voice, req.language, instruct, req.seed, options)
            handle = engine.submit(prepared)
        except InputError as e:
            raise input_error(e) from None
        except (EngineBusy, EngineClosed) as e:
            raise busy_error(e) from None
        chunks = handle.__aiter__()
        try:
            first = await first_chunk(request, chunks)
        except (EngineBusy, EngineClosed) as e:
            raise busy_error(e) from None
        except InputError as e:
            raise input_error(e) from None
        if first is None:  # the client left while waiting
            handle.cancel()
            return Response(status_code=499)
        encoder = make_encoder(req.response_format, tts.sample_rate)
        log_info = request.scope.setdefault("state", {}).setdefault("qtts_log", {})
        log_info.update(voice=req.voice_name, format=req.response_format, stream_format=req.stream_format,
                        chars=len(req.input))
        sse = req.stream_format == "sse"
        media = "text/event-stream" if sse else CONTENT_TYPES[req.response_format]
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(first, chunks, handle, encoder, sse, prepared.plan.text_tokens, log_info),
                                 media_type=media, headers=headers)

    return router
