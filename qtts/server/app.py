"""``create_app(settings or state) -> FastAPI``: the qtts speech server.

One engine thread (``qtts.engine.Engine``) owns the model; routes only validate, submit and stream, and any
model work they need runs on that thread (``await engine.run(...)``), never on the event loop. Routes:
``POST /v1/audio/speech`` (``speech``), ``WS /v1/audio/stream`` (``ws``), ``/health``, ``/metrics``,
``/v1/models``, ``/`` (``ops``) and, when ``qtts.server.voice_routes`` is installed, the voice library's
``/v1/audio/voices`` routes. Errors are OpenAI-style JSON (``{"error": {"message", "param", ...}}``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ApiError
from .middleware import AccessMiddleware
from .ops import STATIC, ops_router
from .settings import ServerSettings
from .speech import speech_router
from .state import ServerState
from .ws import stream_router

__all__ = ["ServerSettings", "ServerState", "create_app"]

log = logging.getLogger("qtts.server")


def _voice_router(state: ServerState):
    try:
        from .voice_routes import voice_router
    except ImportError:
        return None
    return voice_router(state)


def create_app(config: ServerSettings | ServerState | None = None) -> FastAPI:
    """The FastAPI app. Given settings, the model is loaded now and its engine closed at shutdown; given a
    ``ServerState``, that state is used as is (closed at shutdown if ``state.owns_engine``)."""
    state = config if isinstance(config, ServerState) else ServerState.create(config or ServerSettings())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="qtts", description="Qwen3-TTS streaming speech server", lifespan=lifespan)
    app.state.qtts = state

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return ApiError(422, f"{field}: {first.get('msg', 'invalid value')}", field).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail), None, dict(error.headers or {})).response()

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=error)
        return ApiError(500, f"internal error: {type(error).__name__}: {error}").response()

    app.include_router(ops_router(state))
    app.include_router(speech_router(state))
    app.include_router(stream_router(state))
    voices = _voice_router(state)
    if voices is not None:
        app.include_router(voices)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(AccessMiddleware, state=state)
    return app
