"""Node and goal status: ``/api/v1/status`` and ``/api/v1/status/{goal_id}``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter

from ian.api import models as m
from ian.api.deps import NodeDep, goal_view

if TYPE_CHECKING:
    from ian.node import GoalView, Node

router = APIRouter(tags=["status"])


@router.get("/api/v1/status", response_model=m.NodeStatus)
async def status(node: NodeDep) -> m.NodeStatus:
    """Height, sync, peers, counters, every goal's status, Tau, certificate expiry."""
    snap = node.snapshot()
    t = node.intake.total
    return m.NodeStatus(
        node_id=node.identity.node_id,
        version=node.version,
        role=node.role,
        network_id=node.settings.network_id,
        chain_id=node.genesis.chain_id() if node.genesis is not None else None,
        leader_id=node.sequencer_id,
        term=node.consensus.core.term if node.consensus is not None else None,
        commit_height=(
            node.consensus.core.commit_height if node.consensus is not None else snap.height
        ),
        authorities=authorities(node),
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
        goals={gid: goal_status(node, v) for gid, v in node.views.items()},
        tau=tau_status(node, None),
        cert_not_after=node.cert.not_after.isoformat(),
        last_backup_at=snap.last_backup,
    )


@router.get(
    "/api/v1/status/{goal_id}", response_model=m.GoalStatus, responses=m.error_responses(404)
)
async def status_goal(goal_id: str, node: NodeDep) -> m.GoalStatus:
    """One goal: log and leaderboard sizes and roots, the leader, counters, its Tau commit."""
    return goal_status(node, goal_view(node, goal_id))


def authorities(node: Node) -> list[m.AuthorityStatus]:
    """The authorities: reachable (this node, or connected) and the height known — with
    consensus, the consensus log height each holds as far as the leader knows (on other nodes,
    this node's own only)."""
    if node.genesis is None:
        return []
    peers = {p.node_id: p for p in node.p2p.peers()}
    core = node.consensus.core if node.consensus is not None else None
    ids = list(core.authorities()) if core is not None else node.genesis.authority_ids
    matches = core.match_heights() if core is not None else {}
    own = core.last_height if core is not None else node.height
    out = []
    for node_id in ids:
        if node_id == node.identity.node_id:
            out.append(m.AuthorityStatus(node_id=node_id, reachable=True, match_height=own))
        else:
            peer = peers.get(node_id)
            height = peer.height if peer is not None and core is None else matches.get(node_id)
            out.append(
                m.AuthorityStatus(node_id=node_id, reachable=peer is not None, match_height=height)
            )
    return out


def goal_status(node: Node, view: GoalView) -> m.GoalStatus:
    """The status of the goal ``view`` shows."""
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
            m.ActivePolicy(
                log_index=leader.log_index,
                score=leader.score,
                contributor_id=leader.contributor_id,
            )
            if leader
            else None
        ),
        contributions=m.Counters(**vars(counters)) if counters else m.Counters(),
        tau=tau_status(node, view.spec.id),
    )


def tau_status(node: Node, goal_id: str | None) -> m.TauStatus:
    """The Tau bridge summary; for a goal, ``last_commit`` is that goal's latest commit."""
    status = m.TauStatus.model_validate(node.tau.status())
    if goal_id is None:
        return status
    last = node.tau.last_commit(goal_id)
    commit = None if last is None else m.TauCommitSummary.model_validate(last)
    return status.model_copy(update={"last_commit": commit})
