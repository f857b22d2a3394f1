"""Probes and metrics at the root: ``/health``, ``/livez``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ian.api import models as m
from ian.api.deps import NodeDep

router = APIRouter(tags=["probes"])


@router.get("/health", response_class=PlainTextResponse)
@router.get("/livez", response_class=PlainTextResponse)
async def health() -> str:
    """Liveness: ``OK`` while the process serves requests."""
    return "OK"


_PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}


@router.get(
    "/readyz",
    responses={
        200: {
            "description": "Ready: `READY`, or with `verbose` the checks as JSON",
            "model": m.ReadinessReport,
            "content": _PLAIN_TEXT,
        },
        503: {
            "description": "Not ready: `NOT READY: <failing checks>`, or with `verbose` the checks",
            "model": m.ReadinessReport,
            "content": _PLAIN_TEXT,
        },
    },
)
async def readyz(node: NodeDep, verbose: Annotated[str | None, Query()] = None) -> Response:
    """200 when every readiness check passes, else 503; plain text, or JSON with ``verbose``."""
    checks = node.readiness()
    ready = all(ok for ok, _ in checks.values())
    if verbose is not None:
        report = m.ReadinessReport(
            ready=ready,
            checks={k: m.ReadinessCheck(ok=ok, detail=d) for k, (ok, d) in checks.items()},
        )
        return JSONResponse(report.model_dump(mode="json"), status_code=200 if ready else 503)
    if ready:
        return PlainTextResponse("READY")
    failing = ", ".join(f"{k}: {d}" for k, (ok, d) in checks.items() if not ok)
    return PlainTextResponse(f"NOT READY: {failing}", status_code=503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(node: NodeDep) -> Response:
    """Prometheus exposition of the node's metrics."""
    return Response(node.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
