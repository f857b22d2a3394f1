"""Routes of the node's HTTP API (ARCHITECTURE §5).

Probes and metrics at the root, everything else under ``/api/v1``. Every error is JSON
``{"error": {"code", "message", "field"}}`` with the right status: request errors from
:mod:`ian.errors` keep their status, validation failures are 400 naming the field, anything
unexpected is a logged 500 — never a 200 carrying an error.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from ian.api import models as m
from ian.api.auth import AdminGuard, check_token, client_address, require_admin
from ian.api.certs_routes import router as certs_router
from ian.api.node_routes import router as node_router
from ian.api.peers_routes import router as peers_router
from ian.api.tau_routes import router as tau_router
from ian.chain import mmr
from ian.errors import (
    AuthError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestError,
    UnavailableError,
)
from ian.log_setup import set_level

if TYPE_CHECKING:
    from ian.node import GoalView, Node

log = logging.getLogger("ian.api")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": m.ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 429, 503)
}


def _error(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body every failed request gets: ``{"error": {code, message, field}}``."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(node: Node) -> FastAPI:
    app = FastAPI(
        title="IAN node API",
        version=node.version,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.node = node
    app.add_middleware(AdminGuard)
    app.include_router(peers_router)
    app.include_router(tau_router)
    app.include_router(certs_router)
    app.include_router(node_router)
    settings = node.settings
    max_body = settings.max_request_bytes
    proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]

    # -- errors ---------------------------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = None
        if isinstance(exc, RateLimitedError | UnavailableError):
            headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
        if isinstance(exc, AuthError) and exc.http_status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(exc.http_status, exc.code, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return _error(400, "malformed", "request body is not valid JSON")
        message = f"{field}: {first['msg']}" if field else str(first["msg"])
        return _error(400, "invalid_input", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error; see the node's log")

    # -- helpers ----------------------------------------------------------------------------
    def goal_view(goal_id: str) -> GoalView:
        view = node.views.get(goal_id)
        if view is None:
            raise NotFoundError(f"unknown goal {goal_id!r}", field="goal_id")
        return view

    def goal_status(view: GoalView) -> m.GoalStatus:
        counters = node.intake.counters.get(view.spec.id)
        leader = view.leaderboard[0] if view.leaderboard else None
        return m.GoalStatus(
            goal_id=view.spec.id,
            name=view.spec.name,
            log_size=view.log_size,
            log_root=view.log_root.hex(),
            leaderboard_size=len(view.leaderboard),
            leaderboard_root=view.leaderboard_root.hex(),
            active_policy=(
                {
                    "log_index": leader.log_index,
                    "score": leader.score,
                    "contributor_id": leader.contributor_id,
                }
                if leader
                else None
            ),
            contributions=m.Counters(**vars(counters)) if counters else m.Counters(),
            tau=tau_status(view.spec.id),
        )

    def tau_status(goal_id: str | None) -> m.TauStatus:
        st = m.TauStatus(**node.tau.status())
        if goal_id is not None:
            st.last_commit = node.tau.last_commit(goal_id)
        return st

    def entry_model(e: Any) -> m.LogEntryModel:
        return m.LogEntryModel(**e.to_doc())

    # -- probes and metrics -------------------------------------------------------------------
    @app.get("/health", response_class=PlainTextResponse, tags=["probes"])
    @app.get("/livez", response_class=PlainTextResponse, tags=["probes"])
    async def health() -> str:
        return "OK"

    @app.get("/readyz", tags=["probes"], responses={503: {"description": "not ready"}})
    async def readyz(verbose: Annotated[str | None, Query()] = None) -> Response:
        checks = node.readiness()
        ready = all(ok for ok, _ in checks.values())
        if verbose is not None:
            body = {
                "ready": ready,
                "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in checks.items()},
            }
            return JSONResponse(body, status_code=200 if ready else 503)
        if ready:
            return PlainTextResponse("READY")
        failing = ", ".join(f"{k}: {d}" for k, (ok, d) in checks.items() if not ok)
        return PlainTextResponse(f"NOT READY: {failing}", status_code=503)

    @app.get("/metrics", tags=["probes"])
    async def metrics() -> Response:
        return Response(node.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # -- status -------------------------------------------------------------------------------
    @app.get("/api/v1/status", response_model=m.NodeStatus, tags=["status"])
    async def status() -> m.NodeStatus:
        snap = node.snapshot()
        t = node.intake.total
        return m.NodeStatus(
            node_id=node.identity.node_id,
            version=node.version,
            role=node.role,
            network_id=settings.network_id,
            height=snap.height,
            head_hash=node.head[1].hex(),
            network_height=snap.network_height,
            sync_lag=max(0, snap.network_height - snap.height),
            consensus_state=snap.consensus_state,
            peers=m.PeerCounts(
                connected=snap.peer_count, known=len(node.peer_book), banned=snap.banned_peers
            ),
            uptime_seconds=time.time() - node.started_at,
            started_at=node.started_at,
            contributions=m.Counters(received=t.received, accepted=t.accepted, rejected=t.rejected),
            goals={gid: goal_status(v) for gid, v in node.views.items()},
            tau=tau_status(None),
            cert_not_after=node.cert.not_after.isoformat(),
            last_backup_at=snap.last_backup,
        )

    @app.get(
        "/api/v1/status/{goal_id}",
        response_model=m.GoalStatus,
        responses=ERROR_RESPONSES,
        tags=["status"],
    )
    async def status_goal(goal_id: str) -> m.GoalStatus:
        return goal_status(goal_view(goal_id))

    # -- contribute ---------------------------------------------------------------------------
    @app.post(
        "/api/v1/contribute",
        response_model=m.ContributeResponse,
        responses=ERROR_RESPONSES,
        tags=["contributions"],
        # The body is parsed by hand (size limit first, one validation pass); describe it here.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ContributeRequest"}
                    }
                },
            }
        },
    )
    async def contribute(request: Request) -> m.ContributeResponse:
        started = time.perf_counter()
        intake = node.intake
        goal_id: str | None = None
        try:
            check_token(request, node.settings_token)
            intake.check_client(client_address(request, proxies))
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                raise PayloadTooLargeError(f"request body is larger than {max_body} bytes")
            body = await _read_body(request, max_body)
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
        return m.ContributeResponse(**outcome.to_result())

    # -- reads ----------------------------------------------------------------------------------
    @app.get("/api/v1/goals", response_model=m.GoalsResponse, tags=["goals"])
    async def goals() -> m.GoalsResponse:
        return m.GoalsResponse(
            goals=[
                m.GoalInfo(
                    id=v.spec.id,
                    name=v.spec.name,
                    description=v.spec.description,
                    evaluator=v.spec.evaluator,
                    thresholds=v.spec.thresholds.model_dump(),
                    weights=v.spec.weights.model_dump(),
                    leaderboard_capacity=v.spec.leaderboard_capacity,
                    log_size=v.log_size,
                )
                for v in node.views.values()
            ]
        )

    @app.get(
        "/api/v1/leaderboard/{goal_id}",
        response_model=m.LeaderboardResponse,
        responses=ERROR_RESPONSES,
        tags=["goals"],
    )
    async def leaderboard(goal_id: str) -> m.LeaderboardResponse:
        view = goal_view(goal_id)
        return m.LeaderboardResponse(
            goal_id=goal_id,
            size=len(view.leaderboard),
            capacity=view.spec.leaderboard_capacity,
            root=view.leaderboard_root.hex(),
            entries=[
                m.LeaderboardRow(
                    rank=i + 1,
                    log_index=e.log_index,
                    score=e.score,
                    contributor_id=e.contributor_id,
                    contribution_hash=e.contribution_hash.hex(),
                )
                for i, e in enumerate(view.leaderboard)
            ],
        )

    @app.get(
        "/api/v1/log/{goal_id}",
        response_model=m.LogResponse,
        responses=ERROR_RESPONSES,
        tags=["goals"],
    )
    async def log_entries(
        goal_id: str,
        start: Annotated[int, Query(alias="from", ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> m.LogResponse:
        view = goal_view(goal_id)
        size = view.log_size
        entries = [e for e in node.store.log_entries(goal_id, start, limit) if e.log_index < size]
        nxt = start + len(entries)
        return m.LogResponse(
            goal_id=goal_id,
            size=size,
            root=view.log_root.hex(),
            entries=[entry_model(e) for e in entries],
            next=nxt if nxt < size else None,
        )

    @app.get(
        "/api/v1/proof/{goal_id}/{log_index}",
        response_model=m.ProofResponse,
        responses=ERROR_RESPONSES,
        tags=["goals"],
    )
    async def proof(goal_id: str, log_index: int) -> m.ProofResponse:
        view = goal_view(goal_id)
        size = view.log_size
        if not 0 <= log_index < size:
            raise NotFoundError(
                f"log index {log_index} is not in {goal_id}'s log (size {size})",
                field="log_index",
            )
        path_pos, peak_pos = mmr.proof_positions(log_index, size)
        nodes = node.store.nodes(goal_id, path_pos + peak_pos)
        p = mmr.inclusion_proof(log_index, size, nodes.__getitem__)
        entry = node.store.log_entry(goal_id, log_index)
        assert entry is not None
        return m.ProofResponse(
            goal_id=goal_id,
            log_index=log_index,
            size=size,
            root=view.log_root.hex(),
            leaf=mmr.leaf_hash(entry.contribution_hash).hex(),
            path=[h.hex() for h in p.path],
            peaks=[h.hex() for h in p.peaks],
            entry=entry_model(entry),
        )

    @app.get(
        "/api/v1/policy/{goal_id}",
        response_model=m.PolicyResponse,
        responses=ERROR_RESPONSES,
        tags=["goals"],
    )
    async def policy(goal_id: str) -> m.PolicyResponse:
        view = goal_view(goal_id)
        if not view.leaderboard:
            raise NotFoundError(f"{goal_id} has no accepted contribution yet", field="goal_id")
        leader = view.leaderboard[0]
        pack = node.store.pack(goal_id, leader.log_index)
        assert pack is not None
        version, parameters, metadata = pack
        return m.PolicyResponse(
            goal_id=goal_id,
            log_index=leader.log_index,
            score=leader.score,
            contributor_id=leader.contributor_id,
            contribution_hash=leader.contribution_hash.hex(),
            agent_pack=m.AgentPackIn(
                version=version,
                parameters=base64.b64encode(parameters).decode("ascii"),
                metadata=metadata,
            ),
        )

    # -- admin ----------------------------------------------------------------------------------
    @app.post(
        "/api/v1/admin/log-level",
        dependencies=[Depends(require_admin)],
        responses=ERROR_RESPONSES,
        tags=["admin"],
    )
    async def admin_log_level(body: m.LogLevelRequest) -> dict[str, str]:
        level = body.level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise InputError(
                "level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL", field="level"
            )
        set_level(level)
        log.info("log level set to %s", level)
        return {"level": level}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            extra = m.ContributeRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(extra.pop("$defs", {}))
            components["ContributeRequest"] = extra
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _read_body(request: Request, limit: int) -> bytes:
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
    from pydantic import ValidationError

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
