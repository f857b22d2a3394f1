"""The JSON error answers of the API: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

import math
from collections.abc import Mapping

from fastapi.responses import JSONResponse

from ian.api import models as m
from ian.errors import AuthError, RateLimitedError, RequestError, UnavailableError


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body every failed request gets (:class:`ian.api.models.ErrorResponse`)."""
    body = m.ErrorResponse(error=m.ErrorBody(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


#: the longest Retry-After the API ever sends (seconds)
MAX_RETRY_AFTER_S = 3600


def request_error_response(exc: RequestError) -> JSONResponse:
    """The answer to a request error: its status and code, plus ``Retry-After`` (rate limited,
    unavailable) or ``WWW-Authenticate: Bearer`` (401)."""
    headers = None
    if isinstance(exc, RateLimitedError | UnavailableError):
        # Bounded: a limit set absurdly low (or a clock oddity) must not turn into a 500.
        wait = exc.retry_after if math.isfinite(exc.retry_after) else MAX_RETRY_AFTER_S
        headers = {"Retry-After": str(max(1, min(MAX_RETRY_AFTER_S, int(wait + 0.999))))}
    if isinstance(exc, AuthError) and exc.http_status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.http_status, exc.code, exc.message, exc.field, headers)
