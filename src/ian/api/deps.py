"""What route handlers are given (FastAPI dependencies): the node, its parts, admin auth.

The dependencies are ``async`` (FastAPI would run plain functions in a worker thread: a thread
hop per request for an attribute read, and the node's objects belong to the event loop).

Every router gets the node the same way, ``node: NodeDep``, which reads ``app.state.node``
(set by :func:`ian.api.app.create_app`; a test app may put a stand-in with the attributes its
routes use there instead). Routes never close over a node, so a router can be included in any
app that carries one.

Admin routes declare :data:`ADMIN` (``dependencies=[ADMIN]``): loopback only unless
``admin_allow_remote``, and the admin bearer token. FastAPI solves dependencies only after it has
read the body, so the app's :class:`ian.api.auth.AdminGuard` middleware runs the same check for
every ``/api/v1/admin/`` path before anything reads the body; ``tests/ian/api/test_routes.py``
checks that every route with :data:`ADMIN` lies under that prefix and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request

from ian.api.auth import require_admin
from ian.errors import NotFoundError, UnavailableError
from ian.p2p.peer_book import PeerBook

if TYPE_CHECKING:
    # The node sits above the API (tests/ian/test_layers.py): named for type checking only.
    from ian.node import GoalView, Node

__all__ = [
    "ADMIN",
    "NodeDep",
    "P2PControl",
    "P2PDep",
    "PeerBookDep",
    "PeerLink",
    "RequiredP2PDep",
    "get_node",
    "goal_view",
]


async def get_node(request: Request) -> Node:
    """The node this app serves (``app.state.node``)."""
    node: Node = request.app.state.node
    return node


if TYPE_CHECKING:
    NodeDep = Annotated[Node, Depends(get_node)]
else:  # FastAPI needs only the Depends at run time, and the API must not import ian.node
    NodeDep = Annotated[object, Depends(get_node)]

#: The admin check as a route dependency: ``dependencies=[ADMIN]``.
ADMIN = Depends(require_admin)


def goal_view(node: Node, goal_id: str) -> GoalView:
    """The published view of ``goal_id``; NotFoundError (404) when unknown.

    A helper the handlers call, not a dependency: dependencies run before FastAPI validates the
    query and path parameters, and an unknown goal must not hide a 400 for a bad ``limit``.
    """
    view = node.views.get(goal_id)
    if view is None:
        raise NotFoundError(f"unknown goal {goal_id!r}", field="goal_id")
    return view


async def get_peer_book(node: NodeDep) -> PeerBook:
    return node.peer_book


PeerBookDep = Annotated[PeerBook, Depends(get_peer_book)]


class PeerLink(Protocol):
    """A connection as the P2P layer lists it; the routes read other details with ``getattr``
    (``direction``, ``connected_since``, ``height``, ``cert_fingerprint``), absent = null."""

    @property
    def node_id(self) -> str: ...

    @property
    def address(self) -> str: ...


class P2PControl(Protocol):
    """What the peer routes use of the running P2P layer (``node.p2p``)."""

    @property
    def max_peers(self) -> int: ...

    @property
    def rate_limit(self) -> tuple[float, float]: ...

    def peers(self) -> Sequence[PeerLink]: ...

    def disconnect(self, node_id: str, reason: str) -> None: ...

    async def connect(self, address: str) -> str: ...

    def configure(
        self, *, max_peers: int | None = None, rate: float | None = None, burst: float | None = None
    ) -> None: ...


async def get_p2p(node: NodeDep) -> P2PControl | None:
    """The node's P2P layer, or None when it runs none."""
    p2p: P2PControl | None = getattr(node, "p2p", None)
    return p2p


P2PDep = Annotated[P2PControl | None, Depends(get_p2p)]


def running_p2p(p2p: P2PControl | None) -> P2PControl:
    """``p2p`` itself; UnavailableError (503) when P2P is not running (None).

    For handlers that must validate their input first; others take :data:`RequiredP2PDep`.
    """
    if p2p is None:
        raise UnavailableError("P2P is not running on this node", fix="check the node's logs")
    return p2p


async def require_p2p(p2p: P2PDep) -> P2PControl:
    """The node's P2P layer; UnavailableError (503) when it runs none."""
    return running_p2p(p2p)


RequiredP2PDep = Annotated[P2PControl, Depends(require_p2p)]
