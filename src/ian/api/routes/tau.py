"""Tau bridge routes: ``GET /api/v1/tau`` (status) and ``POST /api/v1/admin/tau/reset``.

Both use the node's bridge (``node.tau``, a :class:`ian.tau.TauBridge`); a node without one
answers 503. The reset is an admin route (:data:`ian.api.deps.ADMIN`); it closes the circuit
breaker and makes the bridge retry its pending commits at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ian.api import models as m
from ian.api.deps import ADMIN, NodeDep
from ian.errors import UnavailableError
from ian.tau import TauBridge

__all__ = ["router"]

router = APIRouter(tags=["tau"])


async def get_bridge(node: NodeDep) -> TauBridge:
    """The node's Tau bridge; UnavailableError (503) when it runs none."""
    bridge: TauBridge | None = getattr(node, "tau", None)
    if bridge is None:
        raise UnavailableError("this node runs no Tau bridge")
    return bridge


BridgeDep = Annotated[TauBridge, Depends(get_bridge)]


@router.get("/api/v1/tau", response_model=m.TauBridgeStatus, responses=m.error_responses(503))
async def tau_status(bridge: BridgeDep) -> m.TauBridgeStatus:
    """The Tau bridge: endpoint, breaker state, last and pending commits, counters."""
    return m.TauBridgeStatus.model_validate(bridge.status())


@router.post(
    "/api/v1/admin/tau/reset",
    response_model=m.TauResetResponse,
    responses=m.error_responses(401, 403, 503),
    tags=["admin"],
    dependencies=[ADMIN],
)
async def tau_reset(bridge: BridgeDep) -> m.TauResetResponse:
    """Close the Tau circuit breaker now; pending commits are retried at once."""
    return m.TauResetResponse.model_validate(bridge.reset_breaker())
