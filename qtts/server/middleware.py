"""Pure ASGI middleware (no response buffering, so streams and disconnects pass straight through): the
optional API key on ``/v1/*``, the request size limit, one structured JSON log line per request and the
request counter of ``/metrics``."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from .errors import ApiError
from .state import ServerState

log = logging.getLogger("qtts.server.access")

Scope = dict[str, Any]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class AccessMiddleware:
    """Authentication, size limits, access logs and request metrics for HTTP and WebSocket requests."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    def _authorized(self, scope: Scope) -> bool:
        key = self.state.settings.api_key
        if key is None or not scope["path"].startswith("/v1/"):
            return True
        given = _header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" and scope["type"] == "websocket":
            # browsers cannot set headers on a WebSocket: accept ?api_key=KEY there
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            scheme, token = "bearer", (query.get("api_key") or [""])[0]
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def _too_large(self, scope: Scope) -> ApiError | None:
        length = _header(scope, b"content-length")
        limit = self.state.settings.max_upload_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return ApiError(413, f"body: too large ({length} bytes; the limit is {limit})", "body")
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        info: dict[str, Any] = {"status": None, "bytes": 0}

        async def send_wrapper(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                info["status"] = message["status"]
            elif kind == "http.response.body":
                info["bytes"] += len(message.get("body", b""))
            elif kind == "websocket.accept":
                info["status"] = 101
            elif kind == "websocket.close" and info["status"] is None:
                info["status"] = 403
            await send(message)

        error = None
        if not self._authorized(scope):
            error = ApiError(401, "authorization: missing or wrong API key (send 'Authorization: Bearer <key>')",
                             "authorization")
        elif scope["type"] == "http":
            error = self._too_large(scope)
        try:
            if error is None:
                await self.app(scope, receive, send_wrapper)
            elif scope["type"] == "http":
                await error.response()(scope, receive, send_wrapper)
            else:
                await send_wrapper({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
        finally:
            self._log(scope, info, time.perf_counter() - start)

    def _log(self, scope: Scope, info: dict[str, Any], seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "WS")
        status = info["status"] or 499  # no response: the client went away first
        self.state.metrics.request(method, path, status)
        client = scope.get("client")
        line = {"method": method, "path": scope.get("path"), "status": status,
                "seconds": round(seconds, 4), "bytes": info["bytes"],
                "client": f"{client[0]}:{client[1]}" if client else None}
        line.update((scope.get("state") or {}).get("qtts_log", {}))
        log.info(json.dumps(line, separators=(",", ":"), default=str))
