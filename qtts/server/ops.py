"""Operational routes: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models`` (OpenAI's list
format: the served model, ``role: "main"``, and the clone model, ``role: "clone"``, when one is loaded; each
with the other names its ``model`` field accepts in ``aliases``) and ``GET /`` (the playground page
``qtts/server/static/index.html`` when it is installed)."""

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
            body["clone_model"] = state.model_ids.clone
            body["clone_engine"] = state.clone_engine.stats()
        return JSONResponse(body)

    @router.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render({label: e.stats() for label, e in state.engines()}),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        ids = state.model_ids

        def entry(model_id: str, names: tuple[str, ...], kind: str, role: str) -> dict:
            return {"id": model_id, "object": "model", "created": int(state.started), "owned_by": "qtts",
                    "kind": kind, "role": role, "aliases": [n for n in names if n != model_id]}

        data = [entry(ids.main, ids.main_names, state.tts.kind, "main")]
        if ids.clone is not None and state.clone_tts is not None:
            data.append(entry(ids.clone, ids.clone_names, state.clone_tts.kind, "clone"))
        return JSONResponse({"object": "list", "data": data})

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return JSONResponse({"message": "qtts server; POST /v1/audio/speech, WS /v1/audio/stream, GET /health"})

    return router
