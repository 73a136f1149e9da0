"""``ApiError`` and the OpenAI-style JSON error body: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error", 503: "server_busy"}


class ApiError(Exception):
    """An HTTP error with a message that names the offending field (``param``) where there is one, and an
    optional machine-readable ``code`` (e.g. ``model_not_found``)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_validation(error: ValidationError) -> ApiError:
    """A 422 naming the first invalid field, e.g. ``speed: Input should be greater than 0``."""
    first = error.errors()[0]
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else "body"  # deeper parts are union member names (``voice.str``): not useful
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return ApiError(422, f"{field}: {message}", field)
