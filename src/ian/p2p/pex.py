"""Peer discovery, as a service on the switch: seeds, peer exchange, dialling, peer-book upkeep.

It plugs into :class:`~ian.p2p.switch.P2PService` like any other service (replication does the
same)::

    PeerExchange(p2p)   # before p2p.run(): registers handlers, a listener and a background task

What it does while the switch runs:

- keeps one connection to each seed (``settings.seed_nodes``): dial, wait for it to close, redial
  with jittered exponential backoff (``reconnect_base`` .. ``reconnect_cap``); a seed that turns
  out to be this node is given up;
- answers ``get_peers`` with up to :data:`~ian.p2p.messages.MAX_PEERS_PER_MESSAGE` connected
  peers' addresses (shuffled, never the asker), and notes the addresses of ``peers`` *replies to
  its own requests* in the peer book (an unsolicited ``peers`` message is charged and ignored;
  the book itself is capped, see :meth:`~ian.p2p.peer_book.PeerBook.note_address`);
- asks each newly connected peer, and every peer each ``exchange_interval``, for its peers, then
  dials peer-book candidates while below ``max_peers`` (a failed candidate is not redialled
  before its backoff);
- every ``maintenance_interval`` writes the peer book if it is due (in a worker thread).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

import anyio
import anyio.abc
import anyio.to_thread

from ian.config import PeerAddress
from ian.p2p.connection import PeerInfo
from ian.p2p.errors import HandshakeError, P2PError
from ian.p2p.messages import MAX_PEERS_PER_MESSAGE, GetPeers, PeerEntry, Peers
from ian.p2p.peer_book import PeerEvent
from ian.p2p.switch import P2PService, P2PTuning, PeerConnected, PeerDisconnected, PeerStatus

__all__ = ["PeerExchange", "backoff"]

log = logging.getLogger("ian.p2p")


def backoff(failures: int, tuning: P2PTuning) -> float:
    """Jittered exponential backoff: uniform in [d/2, d], d = min(cap, base * 2**(n-1))."""
    delay: float = min(tuning.reconnect_cap, tuning.reconnect_base * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.5, 1.0)


class PeerExchange:
    """Seeds, peer exchange and redial backoff for ``switch``; see the module docstring.

    ``seeds`` defaults to the switch's ``settings.seed_nodes``. Construct before the switch runs.
    """

    def __init__(self, switch: P2PService, seeds: Iterable[PeerAddress] | None = None) -> None:
        self.switch = switch
        self.tuning = switch.tuning
        self.peer_book = switch.peer_book
        self.seeds = list(switch.settings.seed_nodes if seeds is None else seeds)
        self._dialing: set[str] = set()  # node ids and addresses being dialled
        self._redial_at: dict[str, tuple[int, float]] = {}  # node id -> (failures, not before)
        self._tg: anyio.abc.TaskGroup | None = None
        switch.on(GetPeers.TYPE, self._on_get_peers)
        switch.on(Peers.TYPE, self._on_peers)
        switch.add_listener(self._on_peer_event)
        switch.add_task(self.run)

    async def run(self) -> None:
        """Keep seeds connected and run the housekeeping loop; until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for seed in self.seeds:
                    tg.start_soon(self._seed_task, seed)
                tg.start_soon(self._housekeeping)
        finally:
            self._tg = None

    # ------------------------------------------------------------------ handlers

    async def _on_get_peers(self, peer: PeerInfo, message: GetPeers) -> Peers:
        return self._peer_list(exclude=peer.node_id)

    async def _on_peers(self, peer: PeerInfo, message: Peers) -> None:
        # Addresses are learned only from replies to our own get_peers: an unsolicited list
        # is a peer trying to fill our book (and steer our dialling). Charged, not read.
        log.debug("unsolicited peers message from %s ignored", peer.node_id)
        self.switch.report(peer.node_id, PeerEvent.INVALID_MESSAGE)

    def _on_peer_event(self, event: PeerConnected | PeerDisconnected | PeerStatus) -> None:
        if isinstance(event, PeerConnected):
            self._redial_at.pop(event.peer.node_id, None)
            if self._tg is not None:
                self._tg.start_soon(self._exchange_with, event.peer.node_id)

    # ------------------------------------------------------------------ peer exchange

    def _peer_list(self, *, exclude: str) -> Peers:
        entries = [
            PeerEntry(node_id=p.node_id, address=p.address)
            for p in self.switch.peers()
            if p.node_id != exclude and p.address is not None
        ]
        random.shuffle(entries)
        return Peers(peers=entries[:MAX_PEERS_PER_MESSAGE])

    def _learn_peers(self, message: Peers) -> None:
        for entry in message.peers:
            if entry.node_id != self.switch.node_id and not self.switch.is_connected(entry.node_id):
                self.peer_book.note_address(entry.node_id, entry.address)

    async def _exchange_with(self, node_id: str) -> None:
        """Ask one peer for its peers, then dial new ones while below max_peers."""
        try:
            reply = await self.switch.request(node_id, GetPeers())
        except P2PError as exc:
            log.debug("peer exchange with %s failed: %s", node_id, exc)
            return
        if isinstance(reply, Peers):
            self._learn_peers(reply)
        self._dial_more()

    # ------------------------------------------------------------------ dialling

    def _dial_more(self) -> None:
        tg = self._tg
        if tg is None:
            return
        want = self.switch.max_peers - self.switch.peer_count - len(self._dialing)
        if want <= 0:
            return
        now = anyio.current_time()
        for node_id, address in self.peer_book.dial_candidates(want * 2):
            if want <= 0:
                break
            if (
                node_id == self.switch.node_id
                or self.switch.is_connected(node_id)
                or node_id in self._dialing
            ):
                continue
            if address in self._dialing:
                continue
            _, not_before = self._redial_at.get(node_id, (0, 0.0))
            if not_before > now:
                continue
            want -= 1
            tg.start_soon(self._dial_candidate, node_id, address)

    async def _dial_candidate(self, node_id: str, address: str) -> None:
        self._dialing.add(node_id)
        try:
            await self.switch.connect(address, node_id=node_id)
        except (P2PError, ValueError) as exc:
            failures = self._redial_at.get(node_id, (0, 0.0))[0] + 1
            delay = backoff(failures, self.tuning)
            self._redial_at[node_id] = (failures, anyio.current_time() + delay)
            log.debug("dial %s at %s failed (%s); retry in %.1f s", node_id, address, exc, delay)
        finally:
            self._dialing.discard(node_id)

    async def _seed_task(self, seed: PeerAddress) -> None:
        """Keep one connection to ``seed``: dial, wait for it to close, redial with backoff."""
        address = str(seed)
        failures = 0
        node_id: str | None = None
        while True:
            if node_id is not None and self.switch.is_connected(node_id):
                await self.switch.wait_disconnected(node_id)
                continue
            self._dialing.add(address)
            try:
                node_id = await self.switch.connect(seed)
                failures = 0
                continue
            except HandshakeError as exc:
                if exc.reason == "self":
                    log.info("seed %s is this node; not dialling it", address)
                    return
                error: Exception = exc
            except (P2PError, OSError) as exc:
                error = exc
            finally:
                self._dialing.discard(address)
            failures += 1
            delay = backoff(failures, self.tuning)
            log.info("seed %s: %s; retry in %.1f s", address, error, delay)
            await anyio.sleep(delay)

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        t = self.tuning
        next_exchange = anyio.current_time() + t.exchange_interval
        while True:
            await anyio.sleep(t.maintenance_interval)
            now = anyio.current_time()
            try:
                # In a thread: the write ends with fsyncs, which must not stall the loop.
                await anyio.to_thread.run_sync(self.peer_book.flush_if_due)
            except Exception:
                log.exception("could not write the peer book")
            if now >= next_exchange:
                next_exchange = now + t.exchange_interval
                assert self._tg is not None
                for peer in self.switch.peers():
                    self._tg.start_soon(self._exchange_with, peer.node_id)
            self._dial_more()
