"""HTTP routes of the voice library: list, save (clone upload or designed voice) and delete voices.

* ``GET /v1/audio/voices``: the built-in speakers of a CustomVoice checkpoint and every saved voice, each
  with its ``kind`` (``speaker`` / ``clone`` / ``design``) and whether this checkpoint can ``use`` it.
* ``GET /v1/audio/voices/{name}``: one voice.
* ``POST /v1/audio/voices``: ``multipart/form-data`` with ``name``, ``audio`` (wav / flac / ogg / mp3 file) and
  optionally ``ref_text`` (its transcript; without it, or with ``x_vector_only=true``, only the speaker
  embedding is kept) saves a cloned voice (a Base checkpoint, or a server started with ``--clone-model``);
  ``name`` and ``description`` (form or JSON) save a designed voice (VoiceDesign checkpoints only).
  ``lock=true`` fixes a design to a clone prompt of its first rendering, so it sounds the same every time: the
  VoiceDesign model speaks ``LOCK_TEXT`` once with the description (seed ``LOCK_SEED``, as an ordinary engine
  stream), the Base clone model (``--clone-model``) encodes that audio and text into an ICL clone prompt, and
  the voice is saved with it (``locked: true``); speaking it then runs on the clone model. Without a clone
  model ``lock=true`` is refused with a 400 that says what to pass.
* ``DELETE /v1/audio/voices/{name}``: remove a saved voice.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}``: 400 bad field (``param`` names it), 404
unknown voice, 409 name taken, 413 upload too big, 415 unsupported content type, 503 engine busy (locking).
Clone prompts are computed on the Base model's engine thread (``engine.run``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect

from ..audio import load_audio
from ..engine import EngineBusy, EngineClosed
from ..errors import InputError, QttsError
from ..voices import ClonePrompt, Design
from .library import VoiceExists, VoiceLibrary, VoiceRecord, check_not_reserved, validate_name

FORM_OVERHEAD_BYTES = 64 * 1024  # room for the text fields and multipart boundaries beside the audio file
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
LOCK_TEXT = "The morning was quiet, and I read the letter slowly, one line at a time."  # neutral, ~5 s
LOCK_SEED = 0


class VoiceState(Protocol):
    """What the routes need from the server state: ``tts``, ``engine``, ``library``, ``settings`` (and, when
    it has them, ``clone_tts`` / ``clone_engine``: the Base model loaded beside a non-Base one)."""

    tts: Any
    engine: Any
    library: VoiceLibrary
    settings: Any


class FieldError(Exception):
    """A request problem to answer with ``status`` and a message naming ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


def voice_router(state: VoiceState) -> APIRouter:
    """The voice library routes over ``state`` (see the module docstring)."""
    router = APIRouter()

    @router.get("/v1/audio/voices")
    async def list_voices() -> JSONResponse:
        tts, kinds = state.tts, _kinds(state)
        builtin = [{"name": s, "kind": "speaker", "builtin": True, "usable": True}
                   for s in (tts.speakers if tts.kind == "custom_voice" else [])]
        saved = [_voice_json(r, kinds) for r in await asyncio.to_thread(state.library.list)]
        clone_model = getattr(state, "clone_engine", None) is not None  # a Base model beside the main one
        return JSONResponse({"object": "list", "model_kind": tts.kind, "clone_model": clone_model,
                             "data": builtin + saved})

    @router.get("/v1/audio/voices/{name}")
    async def get_voice(name: str) -> JSONResponse:
        record = await asyncio.to_thread(state.library.get, name)
        if record is None:
            return FieldError(404, f"no saved voice named {name!r}", "name", "voice_not_found").response()
        return JSONResponse(_voice_json(record, _kinds(state)))

    @router.post("/v1/audio/voices")
    async def save_voice(request: Request) -> JSONResponse:
        fields: dict[str, Any] = {}
        try:
            fields = await _read_fields(request, state.settings.max_upload_bytes)
            record = await _save(state, fields)
        except FieldError as e:
            return e.response()
        finally:
            for value in fields.values():
                if isinstance(value, UploadFile):
                    await value.close()
        return JSONResponse(_voice_json(record, _kinds(state)), status_code=201)

    @router.delete("/v1/audio/voices/{name}")
    async def delete_voice(name: str) -> JSONResponse:
        if name.lower() in {s.lower() for s in state.tts.speakers}:
            return FieldError(400, f"{name!r} is a built-in speaker and cannot be deleted", "name").response()
        if not await asyncio.to_thread(state.library.delete, name):
            return FieldError(404, f"no saved voice named {name!r}", "name", "voice_not_found").response()
        return JSONResponse({"name": name, "object": "voice", "deleted": True})

    return router


def _clone_side(state: VoiceState) -> tuple[Any, Any]:
    """``(tts, engine)`` of the Base model that makes and speaks clone prompts: the main model when it is a Base
    one, else the clone model (``--clone-model``); ``(None, None)`` when there is neither."""
    if state.tts.kind == "base":
        return state.tts, state.engine
    clone_tts, clone_engine = getattr(state, "clone_tts", None), getattr(state, "clone_engine", None)
    return (clone_tts, clone_engine) if clone_tts is not None and clone_engine is not None else (None, None)


def _kinds(state: VoiceState) -> set[str]:
    """The checkpoint kinds this server can speak with."""
    return {state.tts.kind} | ({"base"} if _clone_side(state)[0] is not None else set())


def _voice_json(record: VoiceRecord, kinds: set[str]) -> dict[str, Any]:
    needs = "base" if record.kind == "clone" or record.locked else "voice_design"
    return {**record.to_dict(), "builtin": False, "usable": needs in kinds}


# ---- request parsing ------------------------------------------------------------------------------------

async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FieldError(413, f"request body of {int(declared)} bytes is larger than the limit of {limit} bytes",
                         "audio", "upload_too_large")
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FieldError(413, f"request body is larger than the limit of {limit} bytes", "audio",
                                 "upload_too_large")
            parts.append(chunk)
    except ClientDisconnect:
        raise FieldError(400, "the client disconnected before the body was complete") from None
    return b"".join(parts)


async def _read_fields(request: Request, max_upload: int) -> dict[str, Any]:
    """Form or JSON fields as a dict (the ``audio`` upload as an ``UploadFile``), size-limited."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, max_upload + FORM_OVERHEAD_BYTES)
    if ctype == "application/json":
        try:
            data = json.loads(body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FieldError(400, f"request body is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise FieldError(400, "request body must be a JSON object")
        if "audio" in data:
            raise FieldError(400, "upload 'audio' as a file in a multipart/form-data request, not in JSON", "audio")
        return data
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise FieldError(415, f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data "
                         "(clone upload) or application/json (designed voice)")
    replayed = False

    async def receive() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form: FormData = await Request(request.scope, receive).form(max_files=1, max_fields=32)
    except Exception as e:  # malformed multipart bodies raise starlette/multipart errors or HTTPException
        raise FieldError(400, f"could not parse the form data ({getattr(e, 'detail', e)})") from None
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key in fields:
            raise FieldError(400, f"field {key!r} is given more than once", key)
        fields[key] = value
    if "audio" in fields and not isinstance(fields["audio"], UploadFile):
        raise FieldError(400, "'audio' must be an uploaded file (multipart/form-data)", "audio")
    return fields


def _text(fields: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = fields.get(key)
    if value is None:
        if required:
            raise FieldError(400, f"field {key!r} is required", key)
        return None
    if not isinstance(value, str):
        raise FieldError(400, f"field {key!r} must be a string", key)
    return value


def _flag(fields: dict[str, Any], key: str) -> bool:
    value = fields.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FieldError(400, f"field {key!r} must be true or false, got {value!r}", key)


# ---- saving ---------------------------------------------------------------------------------------------

async def _save(state: VoiceState, fields: dict[str, Any]) -> VoiceRecord:
    name = _text(fields, "name", required=True)
    try:
        validate_name(name)
        check_not_reserved(name, state.tts.speakers)
    except InputError as e:
        raise FieldError(400, str(e), "name") from None
    except VoiceExists as e:
        raise FieldError(409, str(e), "name", "voice_exists") from None
    if await asyncio.to_thread(state.library.get, name) is not None:
        raise FieldError(409, f"a voice named {name!r} already exists; delete it first or choose another name",
                         "name", "voice_exists")
    if "audio" in fields:
        if "description" in fields:
            raise FieldError(400, "give either 'audio' (cloned voice) or 'description' (designed voice), not both",
                             "description")
        return await _save_clone(state, name, fields)
    if "description" in fields:
        return await _save_design(state, name, fields)
    raise FieldError(400, "field 'audio' is required to save a cloned voice (or send 'description' to save a "
                     "designed voice)", "audio")


async def _save_clone(state: VoiceState, name: str, fields: dict[str, Any]) -> VoiceRecord:
    tts, engine = _clone_side(state)
    if tts is None:
        raise FieldError(400, f"saving a cloned voice needs a Base checkpoint; this server runs a {state.tts.kind!r} "
                         "checkpoint (start it with --clone-model BASE_CHECKPOINT to add one)", "audio",
                         "unsupported_model")
    upload: UploadFile = fields["audio"]
    data = await upload.read()
    limit = state.settings.max_upload_bytes
    if len(data) > limit:
        raise FieldError(413, f"'audio' is {len(data)} bytes, larger than the limit of {limit} bytes", "audio",
                         "upload_too_large")
    if not data:
        raise FieldError(400, "'audio' is an empty file", "audio")
    ref_text = (_text(fields, "ref_text") or "").strip() or None
    x_vector_only = _flag(fields, "x_vector_only") or ref_text is None
    try:
        samples, sr = await asyncio.to_thread(load_audio, data)
    except InputError as e:
        raise FieldError(400, f"'audio': {e}", "audio") from None
    prompt = await engine.run(_clone_prompt, tts, samples, sr, None if x_vector_only else ref_text, x_vector_only)
    meta = {"filename": upload.filename, "sample_rate": sr, "duration_s": round(len(samples) / sr, 3)}
    return await _add(state.library.add_clone, name, prompt, **meta)


def _clone_prompt(tts: Any, samples: np.ndarray, sr: int, ref_text: str | None, x_vector_only: bool) -> ClonePrompt:
    """On the engine thread: check the transcript, then encode the reference (errors name their field)."""
    if ref_text is not None:
        try:
            tts.prompts.text_ids(ref_text, "reference text")
        except InputError as e:
            raise FieldError(400, f"'ref_text': {e}", "ref_text") from None
    try:
        return tts.create_clone_prompt((samples, sr), ref_text, x_vector_only)
    except InputError as e:
        raise FieldError(400, f"'audio': {e}", "audio") from None


async def _save_design(state: VoiceState, name: str, fields: dict[str, Any]) -> VoiceRecord:
    tts = state.tts
    description = (_text(fields, "description") or "").strip()
    if not description:
        raise FieldError(400, "'description' must be a non-empty description of the voice", "description")
    if tts.kind != "voice_design":
        raise FieldError(400, f"saving a designed voice needs a VoiceDesign checkpoint; this server runs a "
                         f"{tts.kind!r} checkpoint", "description", "unsupported_model")
    lock = _flag(fields, "lock")
    if lock and _clone_side(state)[0] is None:
        raise FieldError(400, "'lock' needs a Base checkpoint loaded alongside the VoiceDesign one (to make a "
                         "clone prompt from the voice's first rendering): start the server with --clone-model "
                         "BASE_CHECKPOINT, or save the design unlocked", "lock", "unsupported_model")
    try:
        tts.prompts.text_ids(description, "description")
    except InputError as e:
        raise FieldError(400, f"'description': {e}", "description") from None
    locked = await _lock_prompt(state, description) if lock else None
    return await _add(state.library.add_design, name, description, locked)


async def _lock_prompt(state: VoiceState, description: str) -> ClonePrompt:
    """Render ``LOCK_TEXT`` once with the design (a stream on the VoiceDesign engine, so live streams keep
    going), then encode that audio and text into an ICL clone prompt on the Base model's engine."""
    tts, engine = state.tts, state.engine
    clone_tts, clone_engine = _clone_side(state)
    parts: list[np.ndarray] = []
    try:
        prepared = await engine.run(tts.prepare, LOCK_TEXT, Design(description), "auto", None, LOCK_SEED)
        handle = engine.submit(prepared)
        try:
            async for chunk in handle:
                parts.append(chunk.audio)
        finally:
            handle.cancel()
    except (EngineBusy, EngineClosed) as e:
        retry = str(max(1, round(getattr(e, "retry_after", 1.0))))
        raise FieldError(503, f"could not render the voice to lock it: {e}", None, "engine_busy",
                         {"Retry-After": retry}) from None
    except InputError as e:
        raise FieldError(400, f"'description': {e}", "description") from None
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    try:
        return await clone_engine.run(clone_tts.create_clone_prompt, (audio, tts.sample_rate), LOCK_TEXT)
    except InputError as e:
        raise FieldError(400, f"'description': its rendering ({len(audio) / tts.sample_rate:.2f} s) could not be "
                         f"locked ({e}); try another description, or save it unlocked", "description") from None


async def _add(fn: Any, *args: Any, **kwargs: Any) -> VoiceRecord:
    """Run a library write in a worker thread, mapping its errors to responses."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except VoiceExists as e:
        raise FieldError(409, str(e), "name", "voice_exists") from None
    except InputError as e:
        raise FieldError(400, str(e), "name") from None
    except (QttsError, OSError) as e:
        raise FieldError(500, f"could not save the voice ({e})", None, "storage_error") from None
