"""The node's HTTP API application (ARCHITECTURE §5): routers, error handlers, the admin guard.

Probes and metrics at the root, everything else under ``/api/v1``; the routes live in
:mod:`ian.api.routes`, one router per area, and get the node through :mod:`ian.api.deps`. Every
error is JSON ``{"error": {"code", "message", "field"}}`` with the right status: request errors
from :mod:`ian.errors` keep their status, validation failures are 400 naming the field, anything
unexpected is a logged 500 — never a 200 carrying an error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ian.api import models as m
from ian.api.auth import AdminGuard, BanGuard
from ian.api.responses import error_response, request_error_response
from ian.api.routes import ROUTERS
from ian.api.routes.contribute import ContributeFastPath
from ian.errors import RequestError

if TYPE_CHECKING:
    from ian.node import Node

log = logging.getLogger("ian.api")


def create_app(node: Node) -> FastAPI:
    """The API app serving ``node``: every router, the JSON error handlers, the admin guard."""
    app = FastAPI(
        title="IAN node API",
        version=node.version,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        # The node exports its own Prometheus metrics; FastAPI's OpenTelemetry hooks would only
        # cost a provider lookup per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.node = node
    app.add_middleware(AdminGuard)
    app.add_middleware(BanGuard)  # added last: runs first
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def asgi_app(node: Node) -> ContributeFastPath:
    """What the node serves: :func:`create_app` behind the ``POST /api/v1/contribute`` fast
    path (:class:`~ian.api.routes.contribute.ContributeFastPath`)."""
    return ContributeFastPath(create_app(node))


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``, with the schemas of the bodies routes parse by hand
    (``ContributeRequest``) added to its components."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    extra = m.ContributeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(extra.pop("$defs", {}))
    components["ContributeRequest"] = extra
    _truthful_statuses(schema)
    return schema


def _truthful_statuses(schema: dict[str, Any]) -> None:
    """Document the statuses the node answers with, not FastAPI's defaults: a validation
    failure is 400 (our error body), never 422; admin routes answer 401/403 before anything
    else; every route answers 403 to a banned client address."""
    error = {"$ref": "#/components/schemas/ErrorResponse"}

    def documented(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", documented("invalid input"))
            if path.startswith(AdminGuard.PREFIX):
                responses.setdefault("401", documented("no or wrong bearer token"))
            responses.setdefault("403", documented("forbidden, or this address is banned"))


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure with :func:`error_response` (see the module docstring)."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return request_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return error_response(400, "malformed", "request body is not valid JSON")
        message = f"{field}: {first['msg']}" if field else str(first["msg"])
        return error_response(400, "invalid_input", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=exc.headers,  # e.g. Allow on 405
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; see the node's log")
