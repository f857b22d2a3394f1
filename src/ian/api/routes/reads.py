"""Reading the goals: ``/api/v1/goals``, ``leaderboard``, ``log``, ``proof`` and ``policy``.

Everything answered comes from the goal views the node publishes after each committed block (and
the store rows they cover), so a reader never sees a half-applied batch.
"""

from __future__ import annotations

import base64
from typing import Annotated

import msgspec
from fastapi import APIRouter, Path, Query, Response

from ian.api import models as m
from ian.api.deps import NodeDep, goal_view
from ian.chain import mmr
from ian.errors import NotFoundError

#: the largest log index SQLite can hold (a signed 64-bit integer); beyond it: 400, not 500
MAX_INDEX = 2**63 - 1

router = APIRouter(tags=["goals"])
_encode = msgspec.json.Encoder().encode


class _LogRow(msgspec.Struct, gc=False):
    """One entry of a log page as encoded: the fields of an entry of
    :class:`~ian.api.models.LogResponse`, in its order. A page of 1,000 of these structs is
    built and encoded in 0.4-0.6 ms against 0.7-1.1 ms as dicts, and the collector does not
    track them."""

    goal_id: str
    log_index: int
    contribution_hash: str
    pack_hash: str
    contributor_id: str
    seed: int
    version: str
    score: float
    metrics: msgspec.Raw  # the stored canonical JSON, copied as is
    block_height: int


@router.get("/api/v1/goals", response_model=m.GoalsResponse)
async def goals(node: NodeDep) -> m.GoalsResponse:
    """Every goal this node runs: its spec and log size."""
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


@router.get(
    "/api/v1/leaderboard/{goal_id}",
    response_model=m.LeaderboardResponse,
    responses=m.error_responses(404),
)
async def leaderboard(goal_id: str, node: NodeDep) -> m.LeaderboardResponse:
    """The goal's leaderboard, best first."""
    view = goal_view(node, goal_id)
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


@router.get(
    "/api/v1/log/{goal_id}", response_model=m.LogResponse, responses=m.error_responses(400, 404)
)
async def log_entries(
    goal_id: str,
    node: NodeDep,
    start: Annotated[int, Query(alias="from", ge=0, le=MAX_INDEX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """A page of the goal's log from index ``from``; ``next`` is the following page's ``from``."""
    view = goal_view(node, goal_id)
    size = view.log_size
    rows = [r for r in node.store.log_rows(goal_id, start, limit) if r[1] < size]
    nxt = start + len(rows)
    # Encoded here, in one pass, the stored metrics JSON copied as is: the same document as
    # m.LogResponse (tests compare them) at a fraction of the cost on 1,000-entry pages.
    body = _encode(
        {
            "goal_id": goal_id,
            "size": size,
            "root": view.log_root.hex(),
            "entries": [
                _LogRow(
                    g, i, ch.hex(), ph.hex(), who, seed, version, score, msgspec.Raw(metrics), h
                )
                for g, i, ch, ph, who, seed, version, score, metrics, h in rows
            ],
            "next": nxt if nxt < size else None,
        }
    )
    return Response(body, media_type="application/json")


@router.get(
    "/api/v1/proof/{goal_id}/{log_index}",
    response_model=m.ProofResponse,
    responses=m.error_responses(400, 404),
)
async def proof(
    goal_id: str,
    log_index: Annotated[int, Path(ge=0, le=MAX_INDEX)],
    node: NodeDep,
) -> m.ProofResponse:
    """The inclusion proof of log entry ``log_index`` against the goal's current log root."""
    view = goal_view(node, goal_id)
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
        entry=entry,
    )


@router.get(
    "/api/v1/policy/{goal_id}", response_model=m.PolicyResponse, responses=m.error_responses(404)
)
async def policy(goal_id: str, node: NodeDep) -> m.PolicyResponse:
    """The leading contribution's agent pack (parameters in base64); 404 while there is none."""
    view = goal_view(node, goal_id)
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
