"""Admin routes that act on the node's chain as a whole."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ian.api.auth import require_admin

router = APIRouter()


@router.post("/api/v1/admin/resync", dependencies=[Depends(require_admin)], tags=["admin"])
async def resync(request: Request) -> dict[str, Any]:
    """Drop the local chain and fetch it again from peers (identity, certs, peers kept)."""
    result: dict[str, Any] = await request.app.state.node.resync()
    return result
