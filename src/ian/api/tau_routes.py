"""Tau bridge routes: ``GET /api/v1/tau`` (status) and ``POST /api/v1/admin/tau/reset``.

Both read the bridge from ``request.app.state.node.tau`` (a :class:`ian.tau.TauBridge`); a node
without one answers 503. The reset is an admin route (loopback and bearer token, see
:func:`ian.api.auth.require_admin`); it closes the circuit breaker and makes the bridge retry
its pending commits at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from ian.api.auth import require_admin
from ian.api.models import ErrorResponse
from ian.errors import UnavailableError

if TYPE_CHECKING:
    from ian.tau import TauBridge

__all__ = ["TauBridgeStatus", "TauResetResponse", "router"]

router = APIRouter(tags=["tau"])

_ERRORS: dict[int | str, dict[str, Any]] = {503: {"model": ErrorResponse}}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 503)
}


class TauBridgeStatus(BaseModel):
    """What ``TauBridge.status()`` reports; see :mod:`ian.tau.bridge`."""

    enabled: bool
    endpoint: str | None
    detail: str | None = None
    committer: bool
    breaker_state: str
    consecutive_failures: int
    retry_in_s: float
    last_commit: dict[str, Any] | None
    pending: int
    last_error: str | None
    last_error_at: float | None
    commits_total: int
    failures_total: int
    goals: dict[str, Any]


class TauResetResponse(BaseModel):
    previous_state: str
    breaker_state: str


def _bridge(request: Request) -> TauBridge:
    bridge: TauBridge | None = getattr(request.app.state.node, "tau", None)
    if bridge is None:
        raise UnavailableError("this node runs no Tau bridge")
    return bridge


@router.get("/api/v1/tau", response_model=TauBridgeStatus, responses=_ERRORS)
async def tau_status(request: Request) -> TauBridgeStatus:
    """The Tau bridge: endpoint, breaker state, last and pending commits, counters."""
    return TauBridgeStatus(**_bridge(request).status())


@router.post(
    "/api/v1/admin/tau/reset",
    response_model=TauResetResponse,
    responses=_ADMIN_ERRORS,
    tags=["admin"],
    dependencies=[Depends(require_admin)],
)
async def tau_reset(request: Request) -> TauResetResponse:
    """Close the Tau circuit breaker now; pending commits are retried at once."""
    return TauResetResponse(**_bridge(request).reset_breaker())
