"""``POST /api/v1/contribute``: submit an agent pack for evaluation.

The body is read by hand, after the token and the client's rate limit are checked and with the
size limit enforced while reading (``max_request_bytes``), then validated in one pass: an
oversized or unauthenticated request is refused without buffering its body. The request schema
is described through ``openapi_extra`` (``create_app`` adds ``ContributeRequest`` to the
document's components).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Sequence

from fastapi import APIRouter, Request
from pydantic import ValidationError

from ian.api import models as m
from ian.api.auth import check_token, client_address
from ian.api.deps import NodeDep
from ian.errors import InputError, PayloadTooLargeError, RequestError

router = APIRouter(tags=["contributions"])


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
async def contribute(request: Request, node: NodeDep) -> m.ContributeResponse:
    """Evaluate the pack now; accepted contributions are appended to the goal's log."""
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
        body = await read_body(request, max_body)
        try:
            req = m.ContributeRequest.model_validate_json(body)
        except ValueError as exc:
            raise _validation_to_input(exc) from None
        goal_id = req.goal_id
        intake.received(goal_id)
        c = intake.prepare(
            goal_id=req.goal_id,
            version=req.agent_pack.version,
            parameters=req.agent_pack.parameters,
            metadata=req.agent_pack.metadata,
            contributor_id=req.contributor_id,
            seed=req.seed,
        )
        outcome = await intake.submit(c)
    except RequestError as exc:
        if goal_id is None:
            intake.received(None)
        intake.refused(goal_id, exc)
        raise
    node.metrics.contribute_latency.observe(time.perf_counter() - started)
    return m.ContributeResponse.model_validate(outcome.to_result())


@functools.lru_cache(maxsize=8)
def trusted_networks(
    proxies: Sequence[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The ``trusted_proxies`` setting as networks (parsed once per distinct setting)."""
    return [ipaddress.ip_network(p, strict=False) for p in proxies]


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


def _validation_to_input(exc: ValueError) -> RequestError:
    """The InputError (400) naming the first problem of a failed body validation."""
    if not isinstance(exc, ValidationError) or not exc.errors():
        return InputError("request body is not valid", code="malformed")
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return InputError("request body is not valid JSON", code="malformed")
    field = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "missing":
        return InputError(f"{field} is required", field=field)
    if first["type"] == "extra_forbidden":
        return InputError(f"{field} is not a known field", field=field)
    return InputError(f"{field or 'request body'}: {first['msg']}", field=field)
