"""Peer routes: read the peer book, and the admin actions on peers and P2P limits.

Uses the node's ``peer_book`` (:class:`ian.p2p.peer_book.PeerBook`) and ``p2p``
(:class:`ian.api.deps.P2PControl`, None when P2P is not running). Admin routes carry
:data:`ian.api.deps.ADMIN`. Handlers are ``async`` so they run on the event loop, the same thread
as the P2P layer; admin changes are saved (atomically, off the loop) before the response, so a 200
means the change is on disk.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, TypedDict

import anyio
from fastapi import APIRouter, Query, params

from ian.api import models as m
from ian.api.deps import (
    ADMIN,
    P2PControl,
    P2PDep,
    PeerBookDep,
    PeerLink,
    RequiredP2PDep,
    running_p2p,
)
from ian.config import PeerAddressError, parse_peer_address
from ian.errors import InputError, NotFoundError
from ian.p2p.peer_book import PeerBook, parse_ban_target

router = APIRouter()


class _RouteOptions(TypedDict):
    """Keyword arguments shared by the admin routes' decorators."""

    dependencies: Sequence[params.Depends]
    tags: list[str | Enum]


#: how many removed ids a prune answer lists (the count is always exact)
PRUNE_IDS_SHOWN = 1000


async def _save(book: PeerBook) -> None:
    await anyio.to_thread.run_sync(book.save)


def _connection(info: PeerLink, book: PeerBook) -> m.PeerConnection:
    record = book.get(info.node_id)
    return m.PeerConnection(
        node_id=info.node_id,
        address=info.address,
        direction=getattr(info, "direction", None),
        connected_since=getattr(info, "connected_since", None),
        height=getattr(info, "height", None),
        cert_fingerprint=getattr(info, "cert_fingerprint", None),
        score=None if record is None else record.score,
    )


@router.get(
    "/api/v1/peers",
    tags=["peers"],
    response_model=m.PeerList,
    # `peers` is absent (not null) unless asked for; every other field is always set.
    response_model_exclude_unset=True,
)
async def list_peers(
    book: PeerBookDep,
    p2p: P2PDep,
    all_: Annotated[bool, Query(alias="all")] = False,
    sort: Annotated[str, Query(pattern="^(score|violations|last-seen)$")] = "score",
    limit: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    banned: bool = False,
) -> m.PeerList:
    """Connected peers, how many are known and banned, active IP bans; with ``all=1`` (or
    ``banned=1``) also the peer records sorted by ``sort``, the first ``limit``."""
    connections = [] if p2p is None else [_connection(i, book) for i in p2p.peers()]
    records = None
    if all_ or banned:
        records = book.records(sort=sort, limit=limit, banned_only=banned)
    return m.PeerList.of(book, connections, records)


@router.get(
    "/api/v1/peers/{node_id}",
    tags=["peers"],
    response_model=m.PeerEntry,
    responses=m.error_responses(404),
)
async def get_peer(node_id: str, book: PeerBookDep) -> m.PeerEntry:
    """One peer's record (score decayed to now, counters, ban, addresses); 404 when unknown."""
    record = book.get(node_id.lower())
    if record is None:
        raise NotFoundError(f"unknown peer {node_id}", field="node_id")
    return m.PeerEntry.of(record)


def _in_network(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        host = parse_peer_address(address).host
        addr = ipaddress.ip_address(host)
    except (PeerAddressError, ValueError):
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version == network.version and addr in network


#: The admin routes' decorator arguments (one router, so the routes keep their order).
_admin: _RouteOptions = {"dependencies": [ADMIN], "tags": ["admin"]}


@router.post("/api/v1/admin/peers/ban", response_model=m.BanResponse, **_admin)
async def ban_peer(body: m.BanRequest, book: PeerBookDep, p2p: P2PDep) -> m.BanResponse:
    """Ban a node id / IP / CIDR and disconnect the connected peers it covers."""
    if not math.isfinite(body.seconds):
        raise InputError("seconds must be finite", field="seconds")
    info = book.ban(body.target, seconds=body.seconds, reason=body.reason)
    await _save(book)
    disconnected: list[str] = []
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
    return m.BanResponse.model_validate({**info.to_dict(), "disconnected": disconnected})


@router.post("/api/v1/admin/peers/unban", response_model=m.UnbanResponse, **_admin)
async def unban_peer(body: m.TargetRequest, book: PeerBookDep) -> m.UnbanResponse:
    """Lift a ban; ``removed`` is false when the target had none."""
    _kind, target = parse_ban_target(body.target)
    removed = book.unban(target)
    if removed:
        await _save(book)
    return m.UnbanResponse(target=target, removed=removed)


@router.post(
    "/api/v1/admin/peers/reset",
    response_model=m.PeerEntry,
    responses=m.error_responses(404),
    **_admin,
)
async def reset_peer(body: m.ResetRequest, book: PeerBookDep) -> m.PeerEntry:
    """Score back to 100 and any node-id ban lifted (counters kept); 404 when unknown."""
    record = book.reset(body.node_id)
    await _save(book)
    return m.PeerEntry.of(record)


@router.post("/api/v1/admin/peers/connect", response_model=m.ConnectResponse, **_admin)
async def connect_peer(body: m.ConnectRequest, p2p: P2PDep) -> m.ConnectResponse:
    """Dial ``address`` now; answers with the peer's node id once the handshake is done."""
    try:
        address = str(parse_peer_address(body.address))
    except PeerAddressError as exc:
        raise InputError(exc.message, field="address") from None
    live = running_p2p(p2p)
    node_id = await live.connect(address)
    return m.ConnectResponse(address=address, node_id=node_id)


@router.post("/api/v1/admin/peers/prune", response_model=m.PruneResponse, **_admin)
async def prune_peers(body: m.PruneRequest, book: PeerBookDep) -> m.PruneResponse:
    """Drop peers unseen for ``older_than_s`` (never connected or actively banned ones)."""
    if not math.isfinite(body.older_than_s):
        raise InputError("older_than_s must be finite", field="older_than_s")
    result = book.prune(body.older_than_s, dry_run=body.dry_run)
    if not body.dry_run and result.removed:
        await _save(book)
    return m.PruneResponse(
        kept=result.kept,
        removed=len(result.removed),
        removed_ids=result.removed[:PRUNE_IDS_SHOWN],
        dry_run=result.dry_run,
    )


@router.get("/api/v1/p2p/limits", tags=["peers"], response_model=m.P2PLimits)
async def get_p2p_limits(p2p: RequiredP2PDep) -> m.P2PLimits:
    """The P2P limits in force now (settings, or what an admin call set since the start)."""
    return _limits(p2p)


def _limits(p2p: P2PControl) -> m.P2PLimits:
    rate, burst = p2p.rate_limit
    return m.P2PLimits(max_peers=p2p.max_peers, rate=rate, burst=burst)


@router.post("/api/v1/admin/p2p/limits", response_model=m.P2PLimitsChange, **_admin)
async def p2p_limits(body: m.LimitsRequest, p2p: P2PDep) -> m.P2PLimitsChange:
    """Change P2P limits at run time (only the fields given); not persisted across restarts."""
    given = body.model_dump(exclude_none=True)
    if not given:
        raise InputError("give at least one of max_peers, rate, burst", field="max_peers")
    live = running_p2p(p2p)
    try:
        live.configure(**given)
    except ValueError as exc:
        raise InputError(str(exc), field=next(iter(given))) from None
    return m.P2PLimitsChange(applied=given, limits=_limits(live))
