"""Admin routes on the node as a whole: ``/api/v1/admin/log-level`` and ``/api/v1/admin/resync``.

Like every admin route: loopback only unless ``admin_allow_remote``, and the admin bearer token
(:data:`ian.api.deps.ADMIN`), checked before the body is read.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter

from ian.api import models as m
from ian.api.deps import ADMIN, NodeDep
from ian.errors import InputError
from ian.log_setup import set_level

log = logging.getLogger("ian.api")

router = APIRouter(tags=["admin"], dependencies=[ADMIN])

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@router.post(
    "/api/v1/admin/log-level", response_model=m.LogLevelResponse, responses=m.error_responses(400)
)
async def admin_log_level(body: m.LogLevelRequest) -> m.LogLevelResponse:
    """Set the level of the node's loggers now (not persisted across restarts)."""
    level = body.level.upper()
    if level not in LEVELS:
        raise InputError(f"level must be one of {', '.join(LEVELS)}", field="level")
    set_level(level)
    log.info("log level set to %s", level)
    return m.LogLevelResponse(level=level)


@router.post(
    "/api/v1/admin/resync",
    response_model=m.ResyncResponse,
    responses=m.error_responses(409),
)
async def resync(node: NodeDep) -> m.ResyncResponse:
    """Drop the local chain and fetch it again from peers (identity, certs, peers kept)."""
    return m.ResyncResponse.model_validate(await node.resync())
