"""The switch: the node's P2P endpoint. Admission, the registry of connected peers, request/reply
correlation, limits, scores, bans, and dispatch of incoming messages to plug-in services.

The switch itself speaks only hello, goodbye, ping/pong and error (and tracks the heights peers
announce in hello, status and block announces). Everything else is a service registered through
:meth:`P2PService.on`, the same way for all of them: peer exchange (:mod:`ian.p2p.pex`),
replication (:mod:`ian.ledger.replication`). Peers are reached through a
:class:`~ian.p2p.transport.Transport` (TLS by default; :mod:`ian.p2p.memory` in tests).

Wiring (what ``node.py`` does)::

    p2p = P2PService(settings, identity, datadir, peer_book, metrics,
                     height_provider=chain.head, is_sequencer=lambda: role == "sequencer")
    PeerExchange(p2p)                                           # seeds, get_peers/peers, redial
    p2p.on("block_announce", replication.on_block_announce)     # before run()
    p2p.add_listener(node.on_peer_event)                        # PeerConnected/Disconnected/Status
    host, port = await tg.start(p2p.run)                        # listening once this returns

Each connection runs in its own task inside the switch's task group::

    accept/dial -> IP ban + per-IP/pending limits -> authentication (certificate -> node id)
      -> admission (self, banned id, duplicate, capacity) -> hello exchange (Session)
      -> registered: Connection (reader + writer + pinger tasks), handler tasks (bounded per peer)

Contracts:

- Every received message increments ``ian_messages_received_total{type}``. Over the per-peer
  token bucket a message is dropped (a request gets ``error rate_limited``), counts in
  ``ian_rate_limit_violations_total``, and charges the peer ``RATE_LIMIT_VIOLATION`` at most once
  per second (a burst should not ban a peer in one go). Invalid bodies count in
  ``ian_invalid_messages_total`` and charge ``INVALID_MESSAGE``; protocol violations (frame too
  large, unknown type, broken envelope, wrong order) also count there, charge
  ``PROTOCOL_VIOLATION`` and always close the connection. A verdict of DISCONNECT or BAN from
  the peer book closes the connection with a goodbye.
- Bans are enforced both ways: an inbound connection from a banned IP is closed before TLS; a
  banned node id is refused right after TLS (its certificate proves the id) and never dialled;
  bans set while connected (e.g. ``ian peers ban``) drop the connection within
  ``P2PTuning.maintenance_interval``.
- Handlers (:meth:`P2PService.on`) run as separate tasks, so a slow handler never blocks reading
  replies. A handler returns the reply body or None; raising :class:`InvalidMessage` charges the
  peer, any :class:`~ian.errors.IanError` becomes an ``error`` reply with its code. A request
  without a handler is answered ``error unsupported``.
- Background tasks of services (:meth:`P2PService.add_task`) run inside :meth:`P2PService.run`
  once the listener is bound, and are cancelled with it.
- Listener callbacks (:meth:`P2PService.add_listener`) are called synchronously on the event loop
  and must not block; replacing a connection by a duplicate emits nothing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar, cast

import anyio
import anyio.abc

from ian.certs import CertInfo
from ian.config import PeerAddress, Settings, parse_peer_address
from ian.errors import IanError
from ian.identity import Identity
from ian.metrics import NodeMetrics
from ian.p2p.connection import Connection, PeerInfo, PendingRequest, SendBudget
from ian.p2p.errors import (
    HandshakeError,
    InvalidMessage,
    P2PError,
    PeerNotConnectedError,
    ProtocolViolation,
    RemoteError,
    RequestTimeoutError,
)
from ian.p2p.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    BlockAnnounce,
    Envelope,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Status,
)
from ian.p2p.peer_book import PeerBook, PeerEvent, Verdict
from ian.p2p.session import (
    Direction,
    GoodbyeReceived,
    HelloReceived,
    MessageInvalid,
    MessageReceived,
    Session,
    SessionConfig,
    SessionEvent,
    SessionFailed,
    admission_refusal,
    keep_new_connection,
)
from ian.p2p.transport import (
    RawConnection,
    SecureChannel,
    TlsCredentials,
    TlsTransport,
    Transport,
    TransportListener,
)
from ian.rate_limit import BucketTable
from ian.storage.datadir import DataDir

__all__ = [
    "RESERVED_TYPES",
    "Handler",
    "P2PService",
    "P2PTuning",
    "PeerConnected",
    "PeerDisconnected",
    "PeerListener",
    "PeerStatus",
]

log = logging.getLogger("ian.p2p")


def _agent() -> str:
    try:
        return f"ian/{importlib.metadata.version('ian-node')}"
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "ian/dev"


STATUS_MIN_INTERVAL_S = 0.1  # height gossip: at most ten a second (P2PService.status_min_interval)

#: Message types the switch answers itself; :meth:`P2PService.on` refuses them.
RESERVED_TYPES = frozenset({"hello", "goodbye", "ping", "pong", "error"})


@dataclass(frozen=True, slots=True)
class P2PTuning:
    """Knobs that are not operator settings (tests shorten the timers). Seconds throughout.
    The switch, its connections and peer exchange (:mod:`ian.p2p.pex`) read them.

    Memory a remote peer can make the node hold (``F`` = ``Settings.max_frame_bytes``, 16 MiB by
    default; ``H`` = ``max_frame_bytes_before_hello`` of the session, 64 KiB):

    - before its hello: one partial frame, ``< 4 + H`` bytes per connection, and at most
      ``max_pending_handshakes`` such connections: 64 * 64 KiB = 4 MiB per node;
    - after hello, receiving: one partial frame ``< 4 + F`` per peer;
    - sending: queued frames ``<= send_queue_bytes`` per peer (plus one frame when the queue
      was empty), ``<= send_budget_bytes`` for all peers together (plus one frame); replies
      that wait for room are held by their handler task. Handlers that build big replies are
      registered with a per-peer limit (``get_blocks``: 2), so at most that many big frames
      ``<= F`` wait per peer; the others are small (the reader stops while slots are taken).

    Worst case per peer ≈ ``F + send_queue_bytes + 2 * F`` (defaults: 16 + 64 + 32 MiB),
    per node ≈ ``max_peers * 3 * F + send_budget_bytes + 4 MiB``. Measured: a peer asking for
    100 replies of ~1.5 MB and never reading grows the node's RSS by ~90 MiB. A peer
    that keeps its own queue full longer than ``send_stall_timeout`` is disconnected and
    charged ``RATE_LIMIT_VIOLATION``.
    """

    handshake_timeout: float = 5.0  # TCP connect, TLS, and the hello exchange, each
    ping_interval: float = 30.0  # ping a peer that has been silent this long
    idle_timeout: float = 60.0  # drop a peer silent this long
    request_timeout: float = 10.0
    send_timeout: float = 10.0  # one frame to a stuck peer; then the connection is dropped
    rate: float = 200.0  # messages per second per peer
    burst: float = 400.0
    reconnect_base: float = 1.0  # pex: seed/peer redial backoff, base * 2**(failures-1), jittered
    reconnect_cap: float = 60.0
    exchange_interval: float = 30.0  # pex: ask peers for peers
    maintenance_interval: float = 2.0  # switch: enforce bans; pex: flush the peer book, redial
    max_inflight_per_peer: int = 32  # concurrent handler tasks per peer (backpressure beyond)
    send_queue_frames: int = 1024  # queued frames per peer; a broadcast to a full queue drops it
    # bytes of queued frames per peer: a reply/request waits for room, a broadcast that does not
    # fit drops the peer (as a full frame queue does)
    send_queue_bytes: int = 64 * 1024 * 1024
    # bytes of queued frames to all peers: a reply/request waits, a broadcast skips the peer
    send_budget_bytes: int = 256 * 1024 * 1024
    # a frame waiting this long for room in its peer's own queue: the peer is dropped, charged
    send_stall_timeout: float = 5.0  # < send_timeout: the stall (charged) is seen first
    max_pending_handshakes: int = 64  # inbound connections not yet past hello
    close_grace: float = 1.0  # time to flush queued frames and the goodbye when closing
    agent: str = field(default_factory=_agent)


@dataclass(frozen=True, slots=True)
class PeerConnected:
    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A peer announced a new height (hello, status or block announce)."""

    node_id: str
    height: int
    head_hash: str


PeerListener = Callable[[PeerConnected | PeerDisconnected | PeerStatus], None]
Handler = Callable[[PeerInfo, Message], Awaitable[Message | None]]
_M = TypeVar("_M", bound=Message)


#: IPs whose banned identities are counted at once (oldest forgotten first)
MAX_TRACKED_BAN_IPS = 10_000


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class P2PService:
    """The node's P2P endpoint. See the module docstring for wiring and contracts.

    ``height_provider`` returns ``(height, head_hash_bytes)`` of the local chain (for hello and
    status); ``is_sequencer`` says whether this node orders blocks (in hello). ``transport``
    reaches peers; by default TCP + TLS with the certificate in ``datadir.certs_dir`` (raises
    :class:`~ian.errors.IdentityError` if that pair is unusable).
    """

    def __init__(
        self,
        settings: Settings,
        identity: Identity,
        datadir: DataDir,
        peer_book: PeerBook,
        metrics: NodeMetrics,
        *,
        height_provider: Callable[[], tuple[int, bytes]] = lambda: (0, bytes(32)),
        is_sequencer: Callable[[], bool] = lambda: False,
        tuning: P2PTuning | None = None,
        transport: Transport | None = None,
        chain_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.node_id = identity.node_id
        self.datadir = datadir
        self.peer_book = peer_book
        self.metrics = metrics
        self.tuning = tuning or P2PTuning()
        self._height_provider = height_provider
        self._is_sequencer = is_sequencer
        self.transport: Transport = transport or TlsTransport(
            TlsCredentials(datadir.certs_dir, identity)
        )
        self._session_config = SessionConfig(
            node_id=self.node_id,
            network_id=settings.network_id,
            max_frame_bytes=settings.max_frame_bytes,
            chain_id=chain_id,
        )
        self._max_peers = settings.max_peers
        self._send_budget = SendBudget(self.tuning.send_budget_bytes)
        self._buckets = BucketTable(self.tuning.rate, self.tuning.burst, max_keys=10_000)
        self._handlers: dict[str, Handler] = {}
        self._per_peer: dict[str, int] = {}  # msg_type -> concurrent handlers per peer
        self._inline: set[str] = set()  # msg_types handled in the reader (see on())
        self._listeners: list[PeerListener] = []
        self._peers: dict[str, Connection] = {}
        self._inbound_per_ip: Counter[str] = Counter()
        # IP -> {banned node id: when}: K of them ban the IP (see _note_banned_identity)
        self._banned_ids_by_ip: dict[str, dict[str, float]] = {}
        self._pending_handshakes = 0
        self._tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._bound: tuple[str, int] | None = None
        self._last_status: tuple[int, bytes] | None = None
        self._last_status_at = -math.inf
        #: seconds between two status announcements, at least (see :meth:`announce_status`)
        self.status_min_interval = STATUS_MIN_INTERVAL_S

    # ------------------------------------------------------------------ registration

    def on(
        self,
        msg_type: str,
        handler: Callable[[PeerInfo, _M], Awaitable[Message | None]],
        *,
        per_peer: int | None = None,
        inline: bool = False,
    ) -> None:
        """Handle incoming ``msg_type`` messages (requests and notifications, not replies).

        ``handler`` takes the message class registered for ``msg_type`` (``_M``): only such
        messages are dispatched to it. ``per_peer`` caps how many of them run at once for one
        peer (for handlers that build big replies: each holds its reply until it is queued);
        beyond it the peer is not read until one finishes.

        ``inline`` runs the handler in the peer's reader, without a task of its own: for a
        handler that only hands the message on (it never waits for a peer, a disk or a lock
        held long). The peer is not read while it runs, its messages are handled in the order
        they came, and it costs neither a task nor the handler slots (``per_peer`` is 1).

        The handler's return value, if not None, is sent back as the reply. One handler per
        type; registering again replaces it. Reserved types (:data:`RESERVED_TYPES`): hello,
        goodbye, ping, pong, error.
        """
        if msg_type not in MESSAGE_TYPES:
            raise ValueError(f"unknown message type {msg_type!r}")
        if msg_type in RESERVED_TYPES:
            raise ValueError(f"{msg_type!r} is handled by the switch itself")
        if inline and per_peer is not None:
            raise ValueError("an inline handler runs one message at a time: no per_peer")
        # Dispatch is by type name and decoding builds that type's class, so the handler only
        # ever gets an _M; the table holds handlers of every message type side by side.
        self._handlers[msg_type] = cast(Handler, handler)
        if inline:
            self._inline.add(msg_type)
        else:
            self._inline.discard(msg_type)
        if per_peer is not None:
            if per_peer < 1:
                raise ValueError("per_peer must be at least 1")
            self._per_peer[msg_type] = per_peer
        else:
            self._per_peer.pop(msg_type, None)

    def add_task(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``task()`` in the background while :meth:`run` runs (started once the listener is
        bound, cancelled when the switch stops). Register before :meth:`run`."""
        self._tasks.append(task)

    def add_listener(self, listener: PeerListener) -> None:
        """Call ``listener(event)`` for PeerConnected / PeerDisconnected / PeerStatus."""
        self._listeners.append(listener)

    def remove_listener(self, listener: PeerListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, event: PeerConnected | PeerDisconnected | PeerStatus) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("P2P listener %r failed on %s", listener, type(event).__name__)

    # ------------------------------------------------------------------ introspection

    @property
    def bound_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the listener is bound to, once running."""
        return self._bound

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def chain_id(self) -> str | None:
        """The chain id hellos carry and check (None until the node pins a genesis)."""
        return self._session_config.chain_id

    def set_chain_id(self, chain_id: str) -> None:
        """The node pinned its genesis: new handshakes carry and check ``chain_id``; connected
        peers of another chain are dropped (without a score change)."""
        self._session_config = replace(self._session_config, chain_id=chain_id)
        for conn in list(self._peers.values()):
            if conn.chain_id and conn.chain_id != chain_id:
                conn.close("chain")

    @property
    def cert_info(self) -> CertInfo:
        """The certificate new connections present."""
        return self.transport.cert_info

    def peers(self) -> list[PeerInfo]:
        """Connected peers (handshake complete), oldest connection first."""
        return sorted((c.info() for c in self._peers.values()), key=lambda p: p.connected_since)

    def is_connected(self, node_id: str) -> bool:
        """Whether a connection to ``node_id`` is registered (it may be closing)."""
        return node_id in self._peers

    async def wait_disconnected(self, node_id: str) -> None:
        """Return once no connection to ``node_id`` is registered (at once if none is)."""
        while (conn := self._peers.get(node_id)) is not None:
            await conn.closed.wait()

    def best_height(self) -> int:
        """Highest chain height any connected peer announced; 0 without peers."""
        return max((c.height for c in self._peers.values()), default=0)

    def advertised_address(self) -> str | None:
        """What we put in hello's ``listen_addr``: ``p2p_advertise``, else the bound address
        (an unspecified host such as 0.0.0.0 is replaced by the receiver with our IP)."""
        if self.settings.p2p_advertise:
            return self.settings.p2p_advertise
        if self._bound is None:
            return None
        return str(PeerAddress(host=self._bound[0], port=self._bound[1]))

    # ------------------------------------------------------------------ control

    def configure(
        self,
        *,
        max_peers: int | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> None:
        """Change limits live. Lowering ``max_peers`` below the current count disconnects the
        most recently connected peers."""
        if max_peers is not None:
            if max_peers < 1:
                raise ValueError("max_peers must be at least 1")
            self._max_peers = max_peers
            excess = len(self._peers) - max_peers
            if excess > 0:
                newest = sorted(self._peers.values(), key=lambda c: -c.connected_since)
                for conn in newest[:excess]:
                    conn.close("max_peers lowered")
        if rate is not None or burst is not None:
            new_rate = self._buckets.rate if rate is None else rate
            new_burst = self._buckets.burst if burst is None else burst
            if new_rate <= 0 or new_burst < 1:
                raise ValueError("rate must be > 0 and burst >= 1")
            self._buckets.configure(new_rate, new_burst)

    @property
    def max_peers(self) -> int:
        return self._max_peers

    @property
    def rate_limit(self) -> tuple[float, float]:
        """(messages per second, burst) each peer may send."""
        return self._buckets.rate, self._buckets.burst

    def reload_tls(self) -> CertInfo:
        """Re-read ``certs/``: new connections present the new certificate, established ones
        stay up. Raises :class:`~ian.errors.IdentityError` (old pair kept) if it is unusable."""
        info = self.transport.reload()
        log.info("P2P certificate reloaded: fingerprint %s", info.fingerprint_sha256)
        return info

    def disconnect(self, node_id: str, reason: str = "disconnected by operator") -> bool:
        """Close the connection to ``node_id`` with a goodbye; False if not connected."""
        conn = self._peers.get(node_id)
        if conn is None:
            return False
        conn.close(reason)
        return True

    def report(self, node_id: str, event: PeerEvent) -> Verdict:
        """Charge or credit a peer for something a handler found later (e.g. a failed sync);
        a DISCONNECT/BAN verdict closes its connection."""
        verdict = self.peer_book.record(node_id, event)
        conn = self._peers.get(node_id)
        if conn is not None:
            self._apply_verdict(conn, verdict)
        return verdict

    # ------------------------------------------------------------------ messaging

    def _connection(self, node_id: str) -> Connection:
        conn = self._peers.get(node_id)
        if conn is None or not conn.open:
            raise PeerNotConnectedError(f"not connected to {node_id}")
        return conn

    async def send(self, node_id: str, message: Message) -> None:
        """Send a notification. Waits (at most ``send_timeout``) while the peer's queue is
        full; raises :class:`PeerNotConnectedError` when not connected."""
        conn = self._connection(node_id)
        _, frame = conn.frame(message)
        with anyio.move_on_after(self.tuning.send_timeout) as scope:
            await self._enqueue(conn, frame)
        if scope.cancelled_caught:
            conn.close("send queue stuck")
            raise PeerNotConnectedError(f"peer {node_id} is not reading")

    async def request(
        self,
        node_id: str,
        message: Message,
        timeout: float | None = None,  # noqa: ASYNC109 - part of the documented API
    ) -> Message:
        """Send ``message`` and wait for the reply body.

        Raises :class:`PeerNotConnectedError` (not connected, or disconnected while waiting),
        :class:`RequestTimeoutError` (no reply in ``timeout`` s, default
        ``P2PTuning.request_timeout``), :class:`RemoteError` (the peer answered ``error``).
        """
        conn = self._connection(node_id)
        timeout = self.tuning.request_timeout if timeout is None else timeout
        request_id, frame = conn.frame(message)
        pending = PendingRequest()
        conn.pending[request_id] = pending
        try:
            with anyio.fail_after(timeout):
                await self._enqueue(conn, frame)
                await pending.event.wait()
        except TimeoutError:
            raise RequestTimeoutError(
                f"{message.TYPE} to {node_id} got no reply within {timeout} s"
            ) from None
        finally:
            conn.pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        reply = pending.reply.message
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message)
        return reply

    async def _enqueue(self, conn: Connection, frame: bytes) -> None:
        """:meth:`Connection.enqueue` (a peer that stalls its send budget is charged when its
        connection is cleaned up, see :meth:`_cleanup`)."""
        await conn.enqueue(frame)

    async def broadcast(self, message: Message, exclude: Iterable[str] = ()) -> int:
        """Queue ``message`` to every connected peer not in ``exclude``, never waiting: a peer
        whose queue is full is disconnected instead. Returns how many peers it was queued to."""
        skip = set(exclude)
        sent = 0
        for node_id, conn in list(self._peers.items()):
            if node_id in skip or not conn.open:
                continue
            try:
                conn.enqueue_nowait(conn.frame(message)[1])
                sent += 1
            except P2PError as exc:
                log.debug("broadcast of %s to %s skipped: %s", message.TYPE, node_id, exc)
        return sent

    def announce_status(self) -> None:
        """Gossip our height (call after applying a block); also done periodically.

        At most one status per :attr:`status_min_interval`: a node applying hundreds of blocks a
        second (catching up) must not flood its peers, whose rate limits would then refuse
        its sync requests. A skipped announcement is sent by the next maintenance tick.
        """
        now = anyio.current_time()
        if now - self._last_status_at < self.status_min_interval:
            return
        self._last_status_at = now
        height, head = self._height_provider()
        self._last_status = (height, head)
        status = Status(height=height, head_hash=head.hex())
        for conn in list(self._peers.values()):
            if conn.open:
                with contextlib.suppress(P2PError):
                    conn.enqueue_nowait(conn.frame(status)[1])

    # ------------------------------------------------------------------ running

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, serve connections, enforce bans, run the services' tasks; until cancelled.

        ``task_status.started((host, port))`` once the listener is bound. On cancellation every
        peer gets a goodbye (best effort, bounded), connections close and the peer book is saved.
        """
        listener = await self.transport.listen(self.settings.p2p_host, self.settings.p2p_port)
        self._bound = listener.address
        log.info("P2P listening on %s:%d as node %s", *self._bound, self.node_id)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(listener.serve, self._accept, tg)
                tg.start_soon(self._maintenance)
                for task in self._tasks:
                    tg.start_soon(task)
                task_status.started(self._bound)
        finally:
            self._tg = None
            await self._close_listener(listener)

    async def _close_listener(self, listener: TransportListener) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await listener.aclose()
            try:
                self.peer_book.save()
            except Exception:
                log.exception("could not save the peer book")

    async def connect(self, address: PeerAddress | str, *, node_id: str | None = None) -> str:
        """Dial ``address`` and complete the handshake; returns the peer's node id.

        ``node_id``: the id we expect (the peer's certificate must prove it). Returns at once if
        that node is connected. Raises :class:`HandshakeError` (``reason`` says why: banned,
        self, full, duplicate, identity, tls, timeout, connect, network, ...) or
        :class:`P2PError` when the switch is not running.
        """
        tg = self._tg
        if tg is None:
            raise P2PError("the P2P service is not running")
        addr = parse_peer_address(address) if isinstance(address, str) else address
        if node_id is not None and node_id in self._peers:
            return node_id
        if node_id is not None and (why := self.peer_book.ban_reason(node_id=node_id)):
            raise HandshakeError(f"not dialling {node_id}: {why}", reason="banned")
        literal = _ip_literal(addr.host)
        if literal and (why := self.peer_book.ban_reason(ip=literal)):
            raise HandshakeError(f"not dialling {addr}: {why}", reason="banned")
        timeout = self.tuning.handshake_timeout
        raw = await self.transport.dial(addr.host, addr.port, connect_timeout=timeout)
        ip = raw.remote_ip
        if why := self.peer_book.ban_reason(ip=ip):
            await raw.aclose()
            raise HandshakeError(f"not dialling {addr}: {why}", reason="banned")
        channel = await raw.authenticate(
            server=False, expected_node_id=node_id, handshake_timeout=timeout
        )
        try:
            connected: str = await tg.start(
                partial(self._run_connection, channel, Direction.OUTBOUND, ip, str(addr))
            )
            return connected
        except HandshakeError as exc:
            if exc.reason == "duplicate" and channel.peer.node_id in self._peers:
                return channel.peer.node_id  # the other connection to that node won
            raise

    # ------------------------------------------------------------------ accepting

    async def _accept(self, raw: RawConnection) -> None:
        ip = raw.remote_ip
        if why := self.peer_book.ban_reason(ip=ip):
            log.debug("refused connection from %s: %s", ip, why)
            await raw.aclose()
            return
        if (
            self._inbound_per_ip[ip] >= self.settings.max_peers_per_ip
            or self._pending_handshakes >= self.tuning.max_pending_handshakes
        ):
            log.debug("refused connection from %s: per-IP or handshake limit", ip)
            await raw.aclose()
            return
        self._inbound_per_ip[ip] += 1
        try:
            self._pending_handshakes += 1
            try:
                channel = await raw.authenticate(
                    server=True,
                    expected_node_id=None,
                    handshake_timeout=self.tuning.handshake_timeout,
                )
            finally:
                self._pending_handshakes -= 1
            await self._run_connection(channel, Direction.INBOUND, ip, None)
        except HandshakeError as exc:
            log.debug("inbound connection from %s failed: %s", ip, exc)
        except Exception:
            log.exception("inbound connection from %s crashed", ip)
        finally:
            self._inbound_per_ip[ip] -= 1
            if self._inbound_per_ip[ip] <= 0:
                del self._inbound_per_ip[ip]

    # ------------------------------------------------------------------ one connection

    def _hello(self) -> Hello:
        height, head = self._height_provider()
        return Hello(
            network_id=self.settings.network_id,
            protocol_version=PROTOCOL_VERSION,
            node_id=self.node_id,
            height=height,
            head_hash=head.hex(),
            listen_addr=self.advertised_address(),
            agent=self.tuning.agent[:128],
            sequencer=bool(self._is_sequencer()),
            chain_id=self._session_config.chain_id,
        )

    async def _run_connection(
        self,
        channel: SecureChannel,
        direction: Direction,
        ip: str,
        dialled: str | None,
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handshake, register, serve until closed. Reports the node id through
        ``task_status`` once registered; raises :class:`HandshakeError` before that."""
        peer_id = channel.peer.node_id
        session = Session(
            self._session_config,
            direction=direction,
            peer_node_id=peer_id,
            now=anyio.current_time(),
        )
        conn = Connection(
            channel, session, ip=ip, address=dialled, tuning=self.tuning, budget=self._send_budget
        )
        handshake_timeout = self.tuning.handshake_timeout
        registered = False
        farewell: str | None = None
        try:
            existing = self._peers.get(peer_id)
            refusal = admission_refusal(
                local_id=self.node_id,
                peer_id=peer_id,
                direction=direction,
                ban_reason=self.peer_book.ban_reason(node_id=peer_id),
                existing=existing.session.direction if existing else None,
                peer_count=len(self._peers),
                max_peers=self._max_peers,
            )
            if refusal is not None:
                await conn.send_direct(session.close(refusal), handshake_timeout)
                raise HandshakeError(f"refused {peer_id}: {refusal}", reason=refusal)
            await conn.send_direct(session.start(self._hello()), handshake_timeout)
            hello, leftover = await self._await_hello(conn)
            self._apply_hello(conn, hello)
            try:
                registered = self._register(conn)
            except HandshakeError as exc:
                await conn.send_direct(session.close(exc.reason), handshake_timeout)
                raise
            task_status.started(peer_id)
            await conn.serve(partial(self._on_event, conn), leftover)
        except anyio.get_cancelled_exc_class():
            farewell = "shutdown"  # only the switch's own cancellation reaches here
            raise
        except HandshakeError as exc:
            farewell = exc.reason
            raise
        except Exception:
            farewell = "internal error"
            if not registered:
                raise
            log.exception("connection to %s crashed", peer_id)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup(conn, registered, farewell)

    async def _await_hello(self, conn: Connection) -> tuple[Hello, list[SessionEvent]]:
        """Read until the peer's hello; events that arrived after it are returned."""
        try:
            with anyio.fail_after(self.tuning.handshake_timeout):
                while True:
                    data = await conn.stream.receive()
                    events = conn.session.receive_data(data, anyio.current_time())
                    for i, event in enumerate(events):
                        if isinstance(event, HelloReceived):
                            self._count("hello")
                            return event.hello, events[i + 1 :]
                        if isinstance(event, GoodbyeReceived):
                            self._count("goodbye")
                            raise HandshakeError(
                                f"peer {conn.node_id} refused: {event.reason}",
                                reason=event.reason or "refused",
                            )
                        if isinstance(event, SessionFailed):
                            self._charge_failure(conn, event.error)
                            await conn.send_direct(
                                conn.session.close(self._goodbye_reason(event.error)),
                                self.tuning.handshake_timeout,
                            )
                            raise HandshakeError(
                                f"handshake with {conn.node_id} failed: {event.error}",
                                reason=getattr(event.error, "reason", "protocol"),
                            )
        except TimeoutError:
            raise HandshakeError(
                f"no hello from {conn.node_id} within {self.tuning.handshake_timeout} s",
                reason="timeout",
            ) from None
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise HandshakeError(
                f"{conn.node_id} closed the connection during the handshake", reason="closed"
            ) from exc

    @staticmethod
    def _goodbye_reason(error: P2PError) -> str:
        reason = error.reason if isinstance(error, HandshakeError) else "protocol violation"
        return f"{reason}: {error.message}"[:256]

    def _apply_hello(self, conn: Connection, hello: Hello) -> None:
        conn.height = hello.height
        conn.head_hash = hello.head_hash
        conn.agent = hello.agent
        conn.sequencer = hello.sequencer
        conn.chain_id = hello.chain_id
        if conn.address is None and hello.listen_addr is not None:
            listen = parse_peer_address(hello.listen_addr)
            host = listen.host
            # A node bound to 0.0.0.0 advertises that; the address it reached us from is the
            # one to dial. Loopback advertisements from non-loopback peers are useless too.
            unspecified = ipaddress.ip_address(host).is_unspecified if _ip_literal(host) else False
            if unspecified:
                host = conn.ip
            conn.address = str(replace(listen, host=host))

    def _register(self, conn: Connection) -> bool:
        existing = self._peers.get(conn.node_id)
        if existing is not None:
            if not keep_new_connection(
                self.node_id,
                conn.node_id,
                existing=existing.session.direction,
                new=conn.session.direction,
            ):
                raise HandshakeError(f"already connected to {conn.node_id}", reason="duplicate")
            existing.close("duplicate")
        elif len(self._peers) >= self._max_peers:
            raise HandshakeError(f"peer limit {self._max_peers} reached", reason="full")
        self._peers[conn.node_id] = conn
        self.peer_book.on_connected(conn.node_id, conn.address or "")
        log.info(
            "peer %s connected (%s, %s)",
            conn.node_id,
            conn.session.direction.value,
            conn.address or conn.ip,
        )
        if existing is None:
            self._emit(PeerConnected(conn.info()))
        return True

    async def _cleanup(self, conn: Connection, registered: bool, farewell: str | None) -> None:
        await conn.finish(farewell)
        if conn.stall_error is not None:  # it did not read: charged once
            self._charge_failure(conn, conn.stall_error)
        if registered and self._peers.get(conn.node_id) is conn:
            del self._peers[conn.node_id]
            self.peer_book.on_disconnected(conn.node_id)
            log.info("peer %s disconnected: %s", conn.node_id, conn.close_reason)
            self._emit(PeerDisconnected(conn.node_id, conn.close_reason or "closed"))
        await conn.release()

    # ------------------------------------------------------------------ incoming messages

    def _count(self, msg_type: str) -> None:
        self.metrics.messages_received.labels(msg_type).inc()

    def _charge_failure(self, conn: Connection, error: P2PError) -> None:
        if isinstance(error, ProtocolViolation):
            self.metrics.invalid_messages.inc()
        if error.score_event is not None:
            self.peer_book.record(conn.node_id, PeerEvent[error.score_event])
        log.info("peer %s: %s", conn.node_id, error)

    def _apply_verdict(self, conn: Connection, verdict: Verdict) -> None:
        if verdict is Verdict.BAN:
            self._note_banned_identity(conn)
            conn.close("banned")
        elif verdict is Verdict.DISCONNECT:
            conn.close("score too low")

    def _note_banned_identity(self, conn: Connection) -> None:
        """K identities banned from one IP within the ban period ban the IP itself (for
        ``ban_seconds``): fresh identities are free, addresses are not. Refuses new connections
        from it; peers already connected from it are judged by their own scores."""
        limit = self.settings.ban_ip_after
        if limit <= 0:
            return
        now = anyio.current_time()
        window = self.peer_book.ban_seconds
        seen = self._banned_ids_by_ip.setdefault(conn.ip, {})
        seen[conn.node_id] = now
        for node_id, when in list(seen.items()):
            if now - when > window:
                del seen[node_id]
        if len(seen) >= limit:
            del self._banned_ids_by_ip[conn.ip]
            reason = f"{len(seen)} identities from this address banned"
            try:
                self.peer_book.ban(conn.ip, seconds=window, reason=reason)
            except IanError as exc:  # e.g. an address the ban parser refuses
                log.warning("could not ban %s: %s", conn.ip, exc)
                return
            log.warning("banned IP %s: %s", conn.ip, reason)
        while len(self._banned_ids_by_ip) > MAX_TRACKED_BAN_IPS:
            del self._banned_ids_by_ip[next(iter(self._banned_ids_by_ip))]

    def _reply(self, conn: Connection, request_id: int, message: Message) -> None:
        with contextlib.suppress(P2PError):
            conn.enqueue_nowait(conn.frame(message, re=request_id)[1])

    async def _on_event(
        self, conn: Connection, event: SessionEvent, tg: anyio.abc.TaskGroup
    ) -> None:
        if isinstance(event, MessageReceived):
            await self._on_message(conn, event.envelope, tg)
        elif isinstance(event, MessageInvalid):
            err = event.error
            self._count(err.message_type or "unknown")
            self.metrics.invalid_messages.inc()
            verdict = self.peer_book.record(conn.node_id, PeerEvent.INVALID_MESSAGE)
            log.info("peer %s sent an invalid message: %s", conn.node_id, err)
            if err.message_type in REQUEST_TYPES and err.message_id is not None:
                self._reply(
                    conn,
                    err.message_id,
                    Error(code="invalid_message", message=err.message[:1024]),
                )
            self._apply_verdict(conn, verdict)
        elif isinstance(event, GoodbyeReceived):
            self._count("goodbye")
            conn.close(f"peer said goodbye: {event.reason}", goodbye=False)
        elif isinstance(event, SessionFailed):
            self._charge_failure(conn, event.error)
            conn.close(self._goodbye_reason(event.error))
        elif isinstance(event, HelloReceived):  # pragma: no cover - the session forbids it
            raise AssertionError("hello after the handshake")

    def _over_rate(self, conn: Connection, envelope: Envelope) -> bool:
        now = anyio.current_time()
        if self._buckets.take(conn.node_id, now) == 0.0:
            return False
        self.metrics.rate_limit_violations.inc()
        if now - conn.last_rate_charge >= 1.0:
            conn.last_rate_charge = now
            verdict = self.peer_book.record(conn.node_id, PeerEvent.RATE_LIMIT_VIOLATION)
            self._apply_verdict(conn, verdict)
        if envelope.re is None and envelope.type in REQUEST_TYPES:
            self._reply(conn, envelope.id, Error(code="rate_limited", message="slow down"))
        return True

    async def _on_message(
        self, conn: Connection, envelope: Envelope, tg: anyio.abc.TaskGroup
    ) -> None:
        message = envelope.message
        self._count(envelope.type)
        conn.last_seen = time.time()
        if self._over_rate(conn, envelope):
            return
        if envelope.re is not None:
            pending = conn.pending.get(envelope.re)
            if pending is not None and not pending.event.is_set():
                pending.reply = envelope
                pending.event.set()
            return  # late replies (after a timeout) are not the peer's fault
        if isinstance(message, Ping):
            self._reply(conn, envelope.id, Pong(nonce=message.nonce))
            return
        if isinstance(message, Pong):
            return
        self.peer_book.record(conn.node_id, PeerEvent.VALID_MESSAGE)
        if isinstance(message, Status):
            self._peer_height(conn, message.height, message.head_hash)
        elif isinstance(message, BlockAnnounce):
            header = message.block.header
            if header.height > conn.height:
                self._peer_height(conn, header.height, message.block.hash)
        handler = self._handlers.get(envelope.type)
        if handler is None:
            if envelope.type in REQUEST_TYPES:
                self._reply(
                    conn, envelope.id, Error(code="unsupported", message=f"no {envelope.type}")
                )
            return
        if envelope.type in self._inline:
            await self._handle(conn, envelope, handler)
            return
        # Waiting for a slot stops reading from this peer: backpressure, not unbounded tasks.
        limit = self._per_peer.get(envelope.type)
        type_slots = conn.type_slots(envelope.type, limit) if limit is not None else None
        if type_slots is not None:
            await type_slots.acquire()
        try:
            await conn.handler_slots.acquire()
        except BaseException:
            if type_slots is not None:
                type_slots.release()
            raise
        tg.start_soon(self._run_handler, conn, envelope, handler, type_slots)

    async def _run_handler(
        self,
        conn: Connection,
        envelope: Envelope,
        handler: Handler,
        type_slots: anyio.Semaphore | None,
    ) -> None:
        """Run ``handler`` and queue its reply. The peer's handler slot is held until the reply
        is queued, so a peer that does not read its replies stops being read (backpressure)."""
        try:
            await self._handle(conn, envelope, handler)
        finally:
            conn.handler_slots.release()
            if type_slots is not None:
                type_slots.release()

    async def _handle(self, conn: Connection, envelope: Envelope, handler: Handler) -> None:
        try:
            reply = await handler(conn.info(), envelope.message)
        except InvalidMessage as exc:
            self.metrics.invalid_messages.inc()
            verdict = self.peer_book.record(conn.node_id, PeerEvent.INVALID_MESSAGE)
            log.info("peer %s: %s", conn.node_id, exc)
            self._apply_verdict(conn, verdict)
            reply = Error(code="invalid_message", message=exc.message[:1024])
        except IanError as exc:
            reply = Error(code=exc.code[:64], message=exc.message[:1024])
        except Exception:
            log.exception("handler for %s from %s failed", envelope.type, conn.node_id)
            reply = Error(code="internal", message="handler failed")
        if reply is not None and conn.open:
            try:
                _, frame = conn.frame(reply, re=envelope.id)
                # At most send_stall_timeout for the peer's own budget, send_timeout for the rest.
                t = self.tuning
                with anyio.move_on_after(t.send_timeout + t.send_stall_timeout):
                    await self._enqueue(conn, frame)
            except P2PError as exc:
                log.debug("reply to %s not sent: %s", conn.node_id, exc)

    def _peer_height(self, conn: Connection, height: int, head_hash: str) -> None:
        conn.height = height
        conn.head_hash = head_hash
        self._emit(PeerStatus(conn.node_id, height, head_hash))

    # ------------------------------------------------------------------ housekeeping

    async def _maintenance(self) -> None:
        """Every ``maintenance_interval``: drop banned peers, send a held-back status."""
        while True:
            await anyio.sleep(self.tuning.maintenance_interval)
            self._enforce_bans()
            if self._height_provider() != self._last_status:
                self.announce_status()  # one that the throttle held back

    def _enforce_bans(self) -> None:
        for conn in list(self._peers.values()):
            why = self.peer_book.ban_reason(node_id=conn.node_id, ip=conn.ip)
            if why is not None and conn.open:
                log.info("dropping banned peer %s: %s", conn.node_id, why)
                conn.close("banned")
