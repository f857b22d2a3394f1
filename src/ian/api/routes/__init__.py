"""The HTTP API's routers, one module per area; :data:`ROUTERS` is what ``create_app`` includes.

Each handler gets the node through :data:`ian.api.deps.NodeDep` and answers a model of
:mod:`ian.api.models` (or plain text for probes and metrics).
"""

from __future__ import annotations

from fastapi import APIRouter

from ian.api.routes import (
    admin,
    certs,
    consensus,
    contribute,
    limits,
    peers,
    probes,
    reads,
    status,
    tau,
)

#: Every router of the API, in the order their routes appear in the OpenAPI document.
ROUTERS: tuple[APIRouter, ...] = (
    probes.router,
    status.router,
    contribute.router,
    reads.router,
    admin.router,
    consensus.router,
    limits.router,
    peers.router,
    tau.router,
    certs.router,
)
