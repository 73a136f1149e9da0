"""Operational routes: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models`` and ``GET /``
(the playground page ``qtts/server/static/index.html`` when it is installed)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from .state import ServerState

STATIC = Path(__file__).resolve().parent / "static"


def ops_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        tts = state.tts
        body = {"status": "ok", "model": state.model_name, "kind": tts.kind, "sample_rate": tts.sample_rate,
                "speakers": tts.speakers, "languages": tts.languages, "engine": state.engine.stats()}
        if state.clone_engine is not None:  # --clone-model: the Base model's engine
            body["clone_engine"] = state.clone_engine.stats()
        return JSONResponse(body)

    @router.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(state.engine.stats()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "qtts",
             "kind": state.tts.kind}]})

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return JSONResponse({"message": "qtts server; POST /v1/audio/speech, WS /v1/audio/stream, GET /health"})

    return router
