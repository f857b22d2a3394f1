"""Genesis over P2P, as a service on the switch: serve ours, learn it once if we have none.

Plugs into :class:`~ian.p2p.switch.P2PService` like replication and peer exchange::

    GenesisExchange(p2p, current=..., adopt=..., seeds=..., expected_chain_id=...)

- ``get_genesis`` is answered with this node's pinned genesis (``error no_genesis`` before it
  has one).
- A node without a genesis learns one exactly once (CONSENSUS.md "Genesis and chain id"): with
  ``IAN_CHAIN_ID`` set, from any peer whose hello names that chain id; without it, from a seed
  it dialled itself (trust on first use: the operator chose that address). The document must
  hash to the chain id the peer's hello announced (and to ``IAN_CHAIN_ID``); a peer that sends
  another is charged a protocol violation and nothing is adopted. ``adopt(genesis, peer)`` then
  pins it; from there on the switch refuses peers of other chains at hello.
- Plain peers never teach a genesis: an unsolicited inbound peer cannot choose our chain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anyio
import anyio.abc
from msgspec import Raw

from ian.chain.genesis import Genesis
from ian.errors import GenesisError
from ian.p2p.connection import PeerInfo
from ian.p2p.errors import P2PError
from ian.p2p.messages import Error, GenesisDoc, GetGenesis, Message
from ian.p2p.peer_book import PeerEvent
from ian.p2p.switch import P2PService, PeerConnected, PeerDisconnected, PeerStatus

__all__ = ["GenesisExchange"]

log = logging.getLogger("ian.replication")


class GenesisExchange:
    """See the module docstring. ``current()`` is the pinned genesis or None; ``adopt`` is
    called once, from the switch's task group, with a verified document."""

    def __init__(
        self,
        switch: P2PService,
        *,
        current: Callable[[], Genesis | None],
        adopt: Callable[[Genesis, PeerInfo], None],
        seeds: Iterable[str] = (),
        expected_chain_id: str | None = None,
    ) -> None:
        self.switch = switch
        self._current = current
        self._adopt = adopt
        self._seeds = frozenset(seeds)
        self._expected = expected_chain_id
        self._asked: set[str] = set()  # node ids asked already (each at most once)
        self._busy = False
        #: set when a fetch finished, whatever its outcome (tests and status wait on it)
        self.attempted = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        switch.on(GetGenesis.TYPE, self._on_get_genesis)
        switch.add_listener(self._on_peer_event)
        switch.add_task(self.run)

    async def run(self) -> None:
        """Hold the task group fetches run in; until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await anyio.sleep_forever()
        finally:
            self._tg = None

    async def _on_get_genesis(self, peer: PeerInfo, message: GetGenesis) -> Message:
        genesis = self._current()
        if genesis is None:
            return Error(code="no_genesis", message="this node has not pinned a genesis yet")
        return GenesisDoc(genesis=Raw(genesis.model_dump_json().encode()))

    def trusted_source(self, peer: PeerInfo) -> bool:
        """May ``peer`` teach this node its genesis? (It must also announce a chain id.)"""
        if not peer.chain_id:
            return False
        if self._expected is not None:
            return peer.chain_id == self._expected
        return peer.direction == "outbound" and peer.address in self._seeds

    def _on_peer_event(self, event: PeerConnected | PeerDisconnected | PeerStatus) -> None:
        if not isinstance(event, PeerConnected) or self._current() is not None:
            return
        peer = event.peer
        if self._tg is None or peer.node_id in self._asked or not self.trusted_source(peer):
            return
        self._asked.add(peer.node_id)
        self._tg.start_soon(self._fetch_from, peer)

    async def _fetch_from(self, peer: PeerInfo) -> None:
        if self._busy or self._current() is not None:
            return
        self._busy = True
        try:
            try:
                reply = await self.switch.request(peer.node_id, GetGenesis())
            except P2PError as exc:
                log.info("could not fetch the genesis from %s: %s", peer.node_id, exc)
                return
            genesis = self._check(peer, reply)
            if genesis is not None and self._current() is None:
                self._adopt(genesis, peer)
        finally:
            self._busy = False
            self.attempted.set()

    def _check(self, peer: PeerInfo, reply: Message) -> Genesis | None:
        """The verified genesis in ``reply``, or None (the peer is charged when it lied)."""
        if not isinstance(reply, GenesisDoc):
            log.info("peer %s has no genesis to give", peer.node_id)
            return None
        try:
            genesis = Genesis.model_validate_json(bytes(reply.genesis))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            self._charge(peer, f"sent an invalid genesis ({str(exc).splitlines()[0]})")
            return None
        except GenesisError as exc:
            self._charge(peer, f"sent an invalid genesis ({exc.message})")
            return None
        chain = genesis.chain_id()
        if chain != peer.chain_id:
            self._charge(peer, f"sent genesis {chain[:16]}… for chain {peer.chain_id}")
            return None
        return genesis

    def _charge(self, peer: PeerInfo, what: str) -> None:
        log.warning("peer %s %s", peer.node_id, what)
        self.switch.report(peer.node_id, PeerEvent.PROTOCOL_VIOLATION)
