"""``POST /api/v1/contribute``: submit an agent pack for evaluation.

The body is read by hand, after the token and the client's rate limit are checked and with the
size limit enforced while reading (``max_request_bytes``), then decoded in one pass
(:mod:`ian.api.contribute_body`): an oversized or unauthenticated request is refused without
buffering its body. The request schema is described through ``openapi_extra`` (``create_app``
adds ``ContributeRequest`` to the document's components).

Under load the framework's routing, dependency solving and response validation cost more than
the work itself, so :class:`ContributeFastPath` answers this one route before them with the very
same :func:`contribute_response`; the route stays, as the documented operation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec
from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ian.api import models as m
from ian.api.auth import check_token, client_address, trusted_networks
from ian.api.contribute_body import parse_contribute_body
from ian.api.deps import NodeDep
from ian.api.responses import request_error_response
from ian.errors import PayloadTooLargeError, RequestError

if TYPE_CHECKING:
    from ian.node import Node

router = APIRouter(tags=["contributions"])
_encode = msgspec.json.Encoder().encode


@router.post(
    "/api/v1/contribute",
    response_model=m.ContributeResponse,
    responses=m.CONTRIBUTE_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ContributeRequest"}}
            },
        }
    },
)
async def contribute(request: Request, node: NodeDep) -> Response:
    """Evaluate the pack now; accepted contributions are appended to the goal's log."""
    return await contribute_response(request, node)


async def contribute_response(request: Request, node: Node) -> Response:
    """The whole of ``POST /api/v1/contribute``: the answer, errors included (the route, and
    :class:`ian.api.fast_path.ContributeFastPath` in front of the framework, both serve this)."""
    started = time.perf_counter()
    settings = node.settings
    max_body = settings.max_request_bytes
    intake = node.intake
    goal_id: str | None = None
    try:
        check_token(request, node.settings_token)
        proxies = trusted_networks(tuple(settings.trusted_proxies))
        intake.check_client(client_address(request, proxies))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise PayloadTooLargeError(f"request body is larger than {max_body} bytes")
        fields = parse_contribute_body(await read_body(request, max_body))
        goal_id = fields.goal_id
        intake.received(goal_id)
        c = intake.prepare(
            goal_id=fields.goal_id,
            version=fields.version,
            parameters=fields.parameters,
            metadata=fields.metadata,
            contributor_id=fields.contributor_id,
            seed=fields.seed,
        )
        outcome = await intake.submit(c)
    except RequestError as exc:
        if goal_id is None:
            intake.received(None)
        intake.refused(goal_id, exc)
        return request_error_response(exc)
    node.metrics.contribute_latency.observe(time.perf_counter() - started)
    # The fields of ContributeResponse, in its order.
    return Response(_encode(outcome.to_result()), media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering them."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ContributeFastPath:
    """ASGI middleware: ``POST /api/v1/contribute`` answered by :func:`contribute_response`
    before the framework's routing, dependency solving and response-model validation (about a
    third of the node's time per request under load); other requests pass through. The route
    above stays the documented one (OpenAPI) and answers identically. Installed inside
    :class:`ian.api.auth.BanGuard`, so a banned address is refused first either way."""

    PATH = "/api/v1/contribute"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.PATH and scope["method"] == "POST":
            request = Request(scope, receive)
            response = await contribute_response(request, scope["app"].state.node)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
