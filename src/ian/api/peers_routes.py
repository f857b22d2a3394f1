"""Peer routes of the HTTP API: read the peer book, and the admin actions on peers and P2P limits.

Include with ``app.include_router(router)``. Expects ``request.app.state.node`` to carry
``peer_book`` (:class:`ian.p2p.peer_book.PeerBook`) and ``p2p`` (None when P2P is not running; else
an object with ``peers()``, ``disconnect(node_id, reason)``, ``async connect(address)`` and
``configure(max_peers=None, rate=None, burst=None)``). Admin routes depend on
:func:`ian.api.auth.require_admin`. Handlers are ``async`` so they run on the event loop, the
same thread as the P2P layer; admin changes are saved (atomically, off the loop) before the
response, so a 200 means the change is on disk.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, Any, TypedDict

import anyio
from fastapi import APIRouter, Depends, Query, Request, params
from pydantic import BaseModel, ConfigDict, Field

from ian.api.auth import require_admin
from ian.config import PeerAddressError, parse_peer_address
from ian.errors import InputError, NotFoundError, UnavailableError
from ian.p2p.peer_book import PeerBook, parse_ban_target

router = APIRouter()

#: how many removed ids a prune answer lists (the count is always exact)
PRUNE_IDS_SHOWN = 1000


class BanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(description="node id (40 hex), IP address or CIDR")
    seconds: float = Field(gt=0, description="ban duration in seconds")
    reason: str = Field(min_length=1, max_length=500)


class TargetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node_id: str


class ConnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(description="tcp://host:port")


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_s: float = Field(ge=0)
    dry_run: bool = False


class LimitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_peers: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=1)


def _book(request: Request) -> PeerBook:
    book: PeerBook = request.app.state.node.peer_book
    return book


def _p2p(request: Request, *, required: bool = False) -> Any:
    p2p = getattr(request.app.state.node, "p2p", None)
    if p2p is None and required:
        raise UnavailableError("P2P is not running on this node", fix="check the node's logs")
    return p2p


async def _save(book: PeerBook) -> None:
    await anyio.to_thread.run_sync(book.save)


def _connection_dict(info: Any, book: PeerBook) -> dict[str, Any]:
    record = book.get(info.node_id)
    return {
        "node_id": info.node_id,
        "address": info.address,
        "direction": getattr(info, "direction", None),
        "connected_since": getattr(info, "connected_since", None),
        "height": getattr(info, "height", None),
        "cert_fingerprint": getattr(info, "cert_fingerprint", None),
        "score": None if record is None else record.score,
    }


@router.get("/api/v1/peers", tags=["peers"])
async def list_peers(
    request: Request,
    all_: Annotated[bool, Query(alias="all")] = False,
    sort: Annotated[str, Query(pattern="^(score|violations|last-seen)$")] = "score",
    limit: Annotated[int | None, Query(ge=0)] = None,
    banned: bool = False,
) -> dict[str, Any]:
    """Connected peers, how many are known and banned, active IP bans; with ``all=1`` (or
    ``banned=1``) also the peer records sorted by ``sort``, the first ``limit``."""
    book = _book(request)
    p2p = _p2p(request)
    connections = [] if p2p is None else [_connection_dict(i, book) for i in p2p.peers()]
    body: dict[str, Any] = {
        "connected": connections,
        "known": len(book),
        "banned": book.banned_count(),
        "ip_bans": [b.to_dict() for b in book.ip_bans()],
    }
    if all_ or banned:
        records = book.records(sort=sort, limit=limit, banned_only=banned)
        body["peers"] = [r.to_dict() for r in records]
    return body


@router.get("/api/v1/peers/{node_id}", tags=["peers"])
async def get_peer(request: Request, node_id: str) -> dict[str, Any]:
    """One peer's record (score decayed to now, counters, ban, addresses); 404 when unknown."""
    record = _book(request).get(node_id.lower())
    if record is None:
        raise NotFoundError(f"unknown peer {node_id}", field="node_id")
    return record.to_dict()


class _RouteOptions(TypedDict):
    """Keyword arguments shared by the admin routes' decorators."""

    dependencies: Sequence[params.Depends]
    tags: list[str | Enum]


_admin: _RouteOptions = {"dependencies": [Depends(require_admin)], "tags": ["admin"]}


def _in_network(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        host = parse_peer_address(address).host
        addr = ipaddress.ip_address(host)
    except (PeerAddressError, ValueError):
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version == network.version and addr in network


@router.post("/api/v1/admin/peers/ban", **_admin)
async def ban_peer(request: Request, body: BanRequest) -> dict[str, Any]:
    """Ban a node id / IP / CIDR and disconnect the connected peers it covers."""
    if not math.isfinite(body.seconds):
        raise InputError("seconds must be finite", field="seconds")
    book = _book(request)
    info = book.ban(body.target, seconds=body.seconds, reason=body.reason)
    await _save(book)
    disconnected: list[str] = []
    p2p = _p2p(request)
    if p2p is not None:
        why = f"banned: {info.reason}"
        if info.kind == "node":
            victims = [p.node_id for p in p2p.peers() if p.node_id == info.target]
        else:
            network = ipaddress.ip_network(info.target)
            victims = [p.node_id for p in p2p.peers() if _in_network(p.address, network)]
        for node_id in victims:
            p2p.disconnect(node_id, why)
            disconnected.append(node_id)
    return {**info.to_dict(), "disconnected": disconnected}


@router.post("/api/v1/admin/peers/unban", **_admin)
async def unban_peer(request: Request, body: TargetRequest) -> dict[str, Any]:
    """Lift a ban; ``removed`` is false when the target had none."""
    book = _book(request)
    _kind, target = parse_ban_target(body.target)
    removed = book.unban(target)
    if removed:
        await _save(book)
    return {"target": target, "removed": removed}


@router.post("/api/v1/admin/peers/reset", **_admin)
async def reset_peer(request: Request, body: ResetRequest) -> dict[str, Any]:
    """Score back to 100 and any node-id ban lifted (counters kept); 404 when unknown."""
    book = _book(request)
    record = book.reset(body.node_id)
    await _save(book)
    return record.to_dict()


@router.post("/api/v1/admin/peers/connect", **_admin)
async def connect_peer(request: Request, body: ConnectRequest) -> dict[str, Any]:
    """Dial ``address`` now; answers with the peer's node id once the handshake is done."""
    try:
        address = str(parse_peer_address(body.address))
    except PeerAddressError as exc:
        raise InputError(exc.message, field="address") from None
    p2p = _p2p(request, required=True)
    node_id = await p2p.connect(address)
    return {"address": address, "node_id": node_id}


@router.post("/api/v1/admin/peers/prune", **_admin)
async def prune_peers(request: Request, body: PruneRequest) -> dict[str, Any]:
    """Drop peers unseen for ``older_than_s`` (never connected or actively banned ones)."""
    if not math.isfinite(body.older_than_s):
        raise InputError("older_than_s must be finite", field="older_than_s")
    book = _book(request)
    result = book.prune(body.older_than_s, dry_run=body.dry_run)
    if not body.dry_run and result.removed:
        await _save(book)
    return {
        "kept": result.kept,
        "removed": len(result.removed),
        "removed_ids": result.removed[:PRUNE_IDS_SHOWN],
        "dry_run": result.dry_run,
    }


@router.get("/api/v1/p2p/limits", tags=["peers"])
async def get_p2p_limits(request: Request) -> dict[str, Any]:
    """The P2P limits in force now (settings, or what an admin call set since the start)."""
    return _limits(_p2p(request, required=True))


def _limits(p2p: Any) -> dict[str, Any]:
    rate, burst = p2p.rate_limit
    return {"max_peers": p2p.max_peers, "rate": rate, "burst": burst}


@router.post("/api/v1/admin/p2p/limits", **_admin)
async def p2p_limits(request: Request, body: LimitsRequest) -> dict[str, Any]:
    """Change P2P limits at run time (only the fields given); not persisted across restarts."""
    given = body.model_dump(exclude_none=True)
    if not given:
        raise InputError("give at least one of max_peers, rate, burst", field="max_peers")
    p2p = _p2p(request, required=True)
    try:
        p2p.configure(**given)
    except ValueError as exc:
        raise InputError(str(exc), field=next(iter(given))) from None
    return {"applied": given, "limits": _limits(p2p)}
