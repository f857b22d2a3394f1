"""Authority changes (admin): ``POST /api/v1/admin/authorities`` adds or removes one authority.

Run on the leader: the change is a block of the consensus log, answered once a majority of the
authorities has stored it (CONSENSUS.md "Membership").
"""

from __future__ import annotations

from fastapi import APIRouter

from ian.api import models as m
from ian.api.deps import ADMIN, NodeDep

router = APIRouter(tags=["admin"], dependencies=[ADMIN])


@router.post(
    "/api/v1/admin/authorities",
    response_model=m.AuthorityChangeResponse,
    responses=m.error_responses(400, 401, 403, 409, 503),
)
async def change_authorities(
    body: m.AuthorityChangeRequest, node: NodeDep
) -> m.AuthorityChangeResponse:
    """Add (``node_id`` and ``public_key``) or remove (``node_id``) one authority; the next
    change waits until this one is committed. 409 when the change cannot be made as asked
    (already an authority, not one, the leader removing itself, a one-authority chain, not
    the leader: the message names it), 503 while no leader can commit."""
    key = bytes.fromhex(body.public_key) if body.public_key else b""
    height = await node.change_authority(body.op, body.node_id, key)
    assert node.consensus is not None
    return m.AuthorityChangeResponse(
        op=body.op,
        node_id=body.node_id,
        height=height,
        authorities=sorted(node.consensus.core.authorities()),
    )
