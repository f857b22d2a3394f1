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

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

from ian.api import models as m
from ian.api.auth import (
    check_bearer,
    client_host,
    forwarded_address,
    scope_ban_refusal,
    trusted_networks,
)
from ian.api.contribute_body import parse_contribute_body
from ian.api.deps import NodeDep
from ian.api.responses import error_response, request_error_response
from ian.chain.contributions import Contribution
from ian.chain.state import Outcome
from ian.errors import InputError, PayloadTooLargeError, RequestError

if TYPE_CHECKING:
    from ian.node import Node

log = logging.getLogger("ian.api")
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
    """The whole of ``POST /api/v1/contribute`` for the documented route: the answer, errors
    included (:class:`ContributeFastPath`, in front of the framework, gives the same through
    :func:`contribute_answer`)."""
    max_body = node.settings.max_request_bytes
    return await contribute_answer(
        node,
        request.client.host if request.client else "unknown",
        request.headers,
        lambda: read_body(request, max_body),
    )


async def contribute_answer(
    node: Node,
    peer: str,
    headers: Mapping[str, str],
    body: Callable[[], Awaitable[bytes]],
) -> Response:
    """``POST /api/v1/contribute`` from the client at ``peer`` (the socket's address) with
    these ``headers`` (lower-case names), reading the body only once the token and the client's
    rate limit are checked: the answer, errors included."""
    started = time.perf_counter()
    intake = node.intake
    tally = _Tally(node)
    try:
        check_caller(node, peer, headers)
        c = tally.admit(await body())
        outcome = await intake.submit(c)
    except RequestError as exc:
        return tally.refused(exc)
    except Exception as exc:
        return tally.failed(exc)
    return accepted_answer(node, outcome, started)


def check_caller(node: Node, peer: str, headers: Mapping[str, str]) -> None:
    """What is checked before the body is read: the token, the client's rate limit (by its
    address, X-Forwarded-For believed from trusted proxies only) and the declared length."""
    settings = node.settings
    check_bearer(headers.get("authorization"), node.settings_token)
    proxies = trusted_networks(tuple(settings.trusted_proxies))
    node.intake.check_client(forwarded_address(peer, headers.get("x-forwarded-for"), proxies))
    length = headers.get("content-length")
    max_body = settings.max_request_bytes
    if length is not None and length.isdigit() and int(length) > max_body:
        raise PayloadTooLargeError(f"request body is larger than {max_body} bytes")


def accepted_answer(node: Node, outcome: Outcome, started: float) -> Response:
    """The 200 for a contribution the sequencer decided (accepted or rejected by its goal)."""
    node.metrics.contribute_latency.observe(time.perf_counter() - started)
    # The fields of ContributeResponse, in its order.
    return Response(_encode(outcome.to_result()), media_type="application/json")


class _Tally:
    """Counts one request once: received (under its goal once the body names one), and
    refused when it fails — answered 500 included — so that received = accepted + rejected."""

    __slots__ = ("counted", "goal_id", "node", "settled")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.goal_id: str | None = None
        self.counted = False  # as received
        self.settled = False  # as refused

    def admit(self, body: bytes) -> Contribution:
        """The contribution ``body`` describes, admitted by the intake (not yet queued)."""
        fields = parse_contribute_body(body)
        self.goal_id = fields.goal_id
        intake = self.node.intake
        intake.received(fields.goal_id)
        self.counted = True
        return intake.prepare(
            goal_id=fields.goal_id,
            version=fields.version,
            parameters=fields.parameters,
            metadata=fields.metadata,
            contributor_id=fields.contributor_id,
            seed=fields.seed,
        )

    def refused(self, exc: RequestError) -> Response:
        if self._settle():
            self.node.intake.refused(self.goal_id, exc)
        return request_error_response(exc)

    def failed(self, exc: BaseException) -> Response:
        """The 500 for an unexpected error (logged), counted as rejected (internal)."""
        log.error("POST /api/v1/contribute failed", exc_info=exc)
        if self._settle():
            self.node.intake.failed(self.goal_id)
        return error_response(500, "internal", "internal error; see the node's log")

    def _settle(self) -> bool:
        """Whether the request is to be counted as refused now (received first if it was not
        yet): once only."""
        if self.settled:
            return False
        self.settled = True
        if not self.counted:
            self.node.intake.received(self.goal_id)
            self.counted = True
        return True


@dataclass(slots=True)
class Admitted:
    """A contribution that passed every check before the sequencer (:func:`admit_now`)."""

    contribution: Contribution
    tally: _Tally
    started: float


def admit_now(
    node: Node, peer: str, headers: Mapping[str, str], body: bytes
) -> Admitted | Response:
    """:func:`contribute_answer`'s checks for a body already read, at once: the contribution,
    admitted and not yet queued, or the answer refusing it. With :func:`decide_soon`, what an
    API front's requests get (:mod:`ian.api.fronts`): no task per request."""
    started = time.perf_counter()
    tally = _Tally(node)
    try:
        check_caller(node, peer, headers)
        return Admitted(tally.admit(body), tally, started)
    except RequestError as exc:
        return tally.refused(exc)
    except Exception as exc:
        return tally.failed(exc)


def decide_soon(node: Node, admitted: Admitted, answer: Callable[[Response], None]) -> None:
    """Queue an admitted contribution; ``answer`` gets the response once it is decided (or at
    once when it cannot be queued)."""
    c, tally = admitted.contribution, admitted.tally

    def decided(outcome: Outcome | None, error: BaseException | None) -> None:
        if error is None:
            assert outcome is not None
            try:
                answer(accepted_answer(node, node.intake.settle(c, outcome), admitted.started))
            except RequestError as exc:
                answer(tally.refused(exc))
        elif isinstance(error, RequestError):
            answer(tally.refused(error))
        else:
            answer(tally.failed(error))

    try:
        node.submit_soon(c, decided)
    except RequestError as exc:
        answer(tally.refused(exc))
    except Exception as exc:
        answer(tally.failed(exc))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering them."""
    return await read_asgi_body(request.receive, limit)


async def read_asgi_body(receive: Receive, limit: int) -> bytes:
    """:func:`read_body` straight from the ASGI ``receive`` channel."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _went_away()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _went_away() -> InputError:
    """A client that closes its connection in the middle of its body sent a malformed request
    (nobody reads the answer): counted so, and not logged as the node's error — a client can
    do it at any rate."""
    return InputError("the client closed the connection before the body ended", code="malformed")


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers by name (lower-case in ASGI); of a repeated one, the first, as
    Starlette's ``Headers.get`` gives it."""
    out: dict[str, str] = {}
    for name, value in raw:
        out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


class ContributeFastPath:
    """The ASGI app the node serves, in front of ``app`` (:func:`ian.api.app.asgi_app`):
    ``POST /api/v1/contribute`` is answered here by :func:`contribute_answer`, straight from
    the ASGI scope; every other request goes to ``app``. It skips the framework's routing,
    dependency solving and response-model validation (see the module docstring) and, in front
    of it, its middleware stack too (4.8 µs of an early 401's 23.6 µs, in process). A banned
    client is refused first, as :class:`ian.api.auth.BanGuard` refuses it on every other
    route. The route above stays the documented operation (OpenAPI) and answers identically."""

    PATH = "/api/v1/contribute"

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.node: Node = app.state.node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        node = self.node
        refusal = scope_ban_refusal(node, scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = node.settings.max_request_bytes
        answer = await contribute_answer(
            node,
            client_host(scope),
            _headers(scope["headers"]),
            lambda: read_asgi_body(receive, limit),
        )
        await answer(scope, receive, send)
