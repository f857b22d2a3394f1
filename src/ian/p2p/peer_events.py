"""Peer events for the event bus: a P2P listener that publishes ``peer`` topic events.

Lives beside the service that emits the connection events, so :mod:`ian.events` (the bus and its
topics) imports nothing from the P2P layer.
"""

from __future__ import annotations

from collections.abc import Callable

from ian.events import Publish
from ian.p2p.switch import PeerConnected, PeerDisconnected

__all__ = ["PeerEvents"]


class PeerEvents:
    """A P2P listener (``P2PService.add_listener``) that publishes ``peer`` events.

    Remembers connected peers' addresses so a disconnect can name it. A connection closed
    because of a ban (the service closes with a reason starting ``banned``) is published as
    ``disconnected`` and ``banned``; ``ban_reason(node_id)`` (e.g. ``PeerBook.ban_reason``)
    supplies the recorded ban reason when there is one.
    """

    def __init__(
        self, publish: Publish, ban_reason: Callable[[str], str | None] | None = None
    ) -> None:
        self._publish = publish
        self._ban_reason = ban_reason
        self._addresses: dict[str, str | None] = {}

    def __call__(self, event: object) -> None:
        if isinstance(event, PeerConnected):
            p = event.peer
            address = p.address or p.remote_ip
            self._addresses[p.node_id] = address
            self._publish(
                "peer",
                "connected",
                {
                    "node_id": p.node_id,
                    "address": address,
                    "direction": p.direction,
                    "height": p.height,
                    "sequencer": p.sequencer,
                    "reason": None,
                },
            )
        elif isinstance(event, PeerDisconnected):
            gone: str | None = self._addresses.pop(event.node_id, None)
            data = {"node_id": event.node_id, "address": gone, "reason": event.reason}
            self._publish("peer", "disconnected", data)
            if event.reason.startswith("banned"):
                why = self._ban_reason(event.node_id) if self._ban_reason else None
                self._publish("peer", "banned", {**data, "reason": why or event.reason})
