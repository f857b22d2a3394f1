"""HTTP limits: read them (``GET /api/v1/http/limits``) and change them live (admin)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter

from ian.api import models as m
from ian.api.deps import ADMIN, NodeDep
from ian.errors import InputError

if TYPE_CHECKING:
    from ian.node import Node

log = logging.getLogger("ian.api")

router = APIRouter(tags=["admin"])


@router.get("/api/v1/http/limits", response_model=m.HttpLimits)
async def get_http_limits(node: NodeDep) -> m.HttpLimits:
    """The HTTP client and contributor limits in force now."""
    return _http_limits(node)


@router.post(
    "/api/v1/admin/http/limits",
    response_model=m.HttpLimitsChange,
    responses=m.error_responses(400, 401, 403),
    dependencies=[ADMIN],
)
async def http_limits(body: m.HttpLimitsRequest, node: NodeDep) -> m.HttpLimitsChange:
    """Change the HTTP limits at run time (only the fields given); not persisted across
    restarts (``client_rate``, ``client_burst``, ``contributor_rate``, ``contributor_burst``
    in config.toml make a change permanent)."""
    given = body.model_dump(exclude_none=True)
    if not given:
        raise InputError("give at least one limit", field="client_rate")
    now = _http_limits(node)
    intake = node.intake
    intake.by_client.configure(
        given.get("client_rate", now.client_rate), given.get("client_burst", now.client_burst)
    )
    intake.by_contributor.configure(
        given.get("contributor_rate", now.contributor_rate),
        given.get("contributor_burst", now.contributor_burst),
    )
    log.warning("HTTP limits changed at run time: %s", given)
    return m.HttpLimitsChange(applied=given, limits=_http_limits(node))


def _http_limits(node: Node) -> m.HttpLimits:
    intake = node.intake
    return m.HttpLimits(
        client_rate=intake.by_client.rate,
        client_burst=intake.by_client.burst,
        contributor_rate=intake.by_contributor.rate,
        contributor_burst=intake.by_contributor.burst,
    )
