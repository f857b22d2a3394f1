"""The per-connection protocol state machine: bytes in, events out, frames returned. No I/O.

Life of a session (both sides run the same machine)::

    NEW --start(hello)--> AWAIT_HELLO --peer hello ok--> OPEN
    AWAIT_HELLO / OPEN --goodbye received, failure, close()--> CLOSED

- Both sides send ``hello`` first, without waiting. Before the peer's hello only ``hello`` and
  ``goodbye`` are allowed; anything else is a :class:`ProtocolViolation`.
- The peer's hello must name our ``network_id``, our chain id (when both sides have pinned a
  genesis; a peer of another chain is refused without a score change), a supported protocol
  version, the node id of the
  certificate it presented in TLS (and the node id we dialled, if we knew it), and not our own id.
- After the handshake any message but ``hello`` is delivered; a second hello is a violation.
- A fatal problem yields a :class:`SessionFailed` event and moves to CLOSED; the caller sends
  ``close(reason)`` (a goodbye) and drops the connection. A known message with an invalid body
  yields :class:`MessageInvalid` and the session stays open (the caller scores the peer).

Admission decisions that need the service's state (bans, duplicates, capacity) are pure functions
here too (:func:`admission_refusal`, :func:`keep_new_connection`) so they are tested without
sockets; the service evaluates them right after TLS, before sending hello, because the peer's
node id is already proven by its certificate then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ian.p2p.errors import (
    HandshakeError,
    InvalidMessage,
    P2PError,
    ProtocolViolation,
)
from ian.p2p.frames import FrameDecoder, encode_frame
from ian.p2p.messages import (
    PROTOCOL_VERSION,
    Envelope,
    Goodbye,
    Hello,
    Message,
    decode_envelope,
    encode_envelope,
)

__all__ = [
    "MAX_FRAME_BYTES_BEFORE_HELLO",
    "Direction",
    "GoodbyeReceived",
    "HelloReceived",
    "MessageInvalid",
    "MessageReceived",
    "Session",
    "SessionConfig",
    "SessionEvent",
    "SessionFailed",
    "SessionState",
    "admission_refusal",
    "keep_new_connection",
]


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


#: Default limit of a frame before the peer's hello (a hello is a few hundred bytes).
MAX_FRAME_BYTES_BEFORE_HELLO = 64 * 1024


class SessionState(enum.Enum):
    NEW = "new"
    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session checks the peer's hello against."""

    node_id: str
    network_id: str
    max_frame_bytes: int
    #: the limit for the peer's first frame, the only one allowed before its hello (the hello or
    #: a goodbye): a larger announced length is a protocol violation at once, from the header
    max_frame_bytes_before_hello: int = MAX_FRAME_BYTES_BEFORE_HELLO
    #: the chain this node is on (None before it has pinned a genesis)
    chain_id: str | None = None
    protocol_versions: frozenset[int] = field(default=frozenset({PROTOCOL_VERSION}))


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The handshake completed: the session is OPEN."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class MessageReceived:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class MessageInvalid:
    """A known message type with an invalid body; the session stays open."""

    error: InvalidMessage


@dataclass(frozen=True, slots=True)
class GoodbyeReceived:
    reason: str


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """Fatal: the session is CLOSED. ``error.score_event`` says whether the peer is to blame."""

    error: P2PError


SessionEvent = HelloReceived | MessageReceived | MessageInvalid | GoodbyeReceived | SessionFailed


class Session:
    """One connection's protocol state. ``peer_node_id`` is the id proven by the peer's TLS
    certificate; ``expected_node_id`` the id we dialled, when known."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        direction: Direction,
        peer_node_id: str,
        expected_node_id: str | None = None,
        now: float = 0.0,
    ) -> None:
        self.config = config
        self.direction = direction
        self.peer_node_id = peer_node_id
        self.expected_node_id = expected_node_id
        self.state = SessionState.NEW
        self.peer_hello: Hello | None = None
        #: Time (caller's clock) of the last frame received; drives liveness.
        self.last_received = now
        self._decoder = FrameDecoder(
            config.max_frame_bytes, first_frame_bytes=config.max_frame_bytes_before_hello
        )
        self._next_id = 0
        self._goodbye_done = False  # we sent one, or the peer did: no (further) goodbye

    # -- outgoing

    def _frame(self, message: Message, re: int | None) -> tuple[int, bytes]:
        self._next_id += 1
        payload = encode_envelope(Envelope(id=self._next_id, re=re, message=message))
        return self._next_id, encode_frame(payload, self.config.max_frame_bytes)

    def start(self, hello: Hello) -> bytes:
        """Our hello frame; must be the first thing sent."""
        if self.state is not SessionState.NEW:
            raise RuntimeError(f"start() in state {self.state.value}")
        self.state = SessionState.AWAIT_HELLO
        return self._frame(hello, None)[1]

    def send(self, message: Message, *, re: int | None = None) -> tuple[int, bytes]:
        """Frame ``message`` (``re`` = id of the request it answers); returns ``(id, frame)``.

        Only in OPEN. Raises ``ValueError`` when the frame would exceed ``max_frame_bytes``.
        """
        if self.state is not SessionState.OPEN:
            raise RuntimeError(f"send() in state {self.state.value}")
        if isinstance(message, Hello | Goodbye):
            raise RuntimeError("hello and goodbye are sent by start() and close()")
        return self._frame(message, re)

    def close(self, reason: str) -> bytes | None:
        """Move to CLOSED; the goodbye frame to send, or None when a goodbye was already
        sent or received. (After a failure the session is CLOSED but still owes a goodbye.)"""
        self.state = SessionState.CLOSED
        if self._goodbye_done:
            return None
        self._goodbye_done = True
        return self._frame(Goodbye(reason=reason[:256]), None)[1]

    # -- incoming

    def _closed(self) -> bool:
        """Whether the session is CLOSED now (a call, so a type checker does not keep a state
        narrowed before ``_receive_frame`` changed it)."""
        return self.state is SessionState.CLOSED

    def receive_data(self, data: bytes, now: float) -> list[SessionEvent]:
        """Feed received bytes; events in order. Nothing is produced once CLOSED."""
        if self.state is SessionState.CLOSED:
            return []
        self.last_received = now
        events: list[SessionEvent] = []
        try:
            payloads = self._decoder.feed(data)
        except ProtocolViolation as exc:
            self.state = SessionState.CLOSED
            return [SessionFailed(exc)]
        for payload in payloads:
            event = self._receive_frame(payload)
            events.append(event)
            if self._closed():
                break  # nothing after a goodbye or a failure counts
        return events

    def _fail(self, error: P2PError) -> SessionFailed:
        self.state = SessionState.CLOSED
        return SessionFailed(error)

    def _receive_frame(self, payload: bytes) -> SessionEvent:
        try:
            envelope = decode_envelope(payload)
        except ProtocolViolation as exc:
            return self._fail(exc)
        except InvalidMessage as exc:
            if self.state is not SessionState.OPEN or exc.message_type in ("hello", "goodbye"):
                # Without a valid hello there is nothing to continue with.
                return self._fail(ProtocolViolation(exc.message))
            return MessageInvalid(exc)
        message = envelope.message
        if isinstance(message, Goodbye):
            self.state = SessionState.CLOSED
            self._goodbye_done = True
            return GoodbyeReceived(message.reason)
        if self.state is not SessionState.OPEN:
            if not isinstance(message, Hello):
                return self._fail(ProtocolViolation(f"{envelope.type} before hello"))
            return self._receive_hello(message)
        if isinstance(message, Hello):
            return self._fail(ProtocolViolation("second hello"))
        return MessageReceived(envelope)

    def _receive_hello(self, hello: Hello) -> SessionEvent:
        cfg = self.config
        if hello.network_id != cfg.network_id:
            return self._fail(
                HandshakeError(
                    f"peer is on network {hello.network_id!r}, we are on {cfg.network_id!r}",
                    reason="network",
                )
            )
        if cfg.chain_id and hello.chain_id and hello.chain_id != cfg.chain_id:
            return self._fail(
                HandshakeError(
                    f"peer is on chain {hello.chain_id[:16]}…, we are on {cfg.chain_id[:16]}…",
                    reason="chain",
                )
            )
        if hello.protocol_version not in cfg.protocol_versions:
            return self._fail(
                HandshakeError(
                    f"peer speaks protocol {hello.protocol_version}, "
                    f"we support {sorted(cfg.protocol_versions)}",
                    reason="version",
                )
            )
        if hello.node_id != self.peer_node_id:
            return self._fail(
                ProtocolViolation(
                    f"hello claims node {hello.node_id}, certificate is node {self.peer_node_id}"
                )
            )
        if self.expected_node_id is not None and hello.node_id != self.expected_node_id:
            return self._fail(
                HandshakeError(
                    f"dialled node {self.expected_node_id}, reached {hello.node_id}",
                    reason="identity",
                )
            )
        if hello.node_id == cfg.node_id:
            return self._fail(HandshakeError("connected to ourselves", reason="self"))
        self.peer_hello = hello
        self.state = SessionState.OPEN
        return HelloReceived(hello)

    # -- liveness

    def liveness(self, now: float, *, ping_interval: float, idle_timeout: float) -> str:
        """``"dead"`` when nothing arrived for ``idle_timeout`` s, ``"ping"`` when nothing
        arrived for ``ping_interval`` s, else ``"ok"``."""
        idle = now - self.last_received
        if idle >= idle_timeout:
            return "dead"
        if idle >= ping_interval:
            return "ping"
        return "ok"


def _dialler(local_id: str, remote_id: str, direction: Direction) -> str:
    return local_id if direction is Direction.OUTBOUND else remote_id


def keep_new_connection(
    local_id: str, remote_id: str, *, existing: Direction, new: Direction
) -> bool:
    """Duplicate resolution, identical on both ends: of two connections between the same pair,
    keep the one dialled by the lower node id; if both were dialled by the same side, keep the
    one that exists already. True = replace the existing connection with the new one."""
    existing_dialler = _dialler(local_id, remote_id, existing)
    new_dialler = _dialler(local_id, remote_id, new)
    if existing_dialler == new_dialler:
        return False
    return new_dialler == min(local_id, remote_id)


def admission_refusal(
    *,
    local_id: str,
    peer_id: str,
    direction: Direction,
    ban_reason: str | None,
    existing: Direction | None,
    peer_count: int,
    max_peers: int,
) -> str | None:
    """Why a connection to ``peer_id`` (proven by its certificate) must be refused, or None.

    Reasons: ``self``, ``banned``, ``duplicate`` (an existing connection wins the duplicate
    rule), ``full`` (``peer_count`` already at ``max_peers`` and no connection to replace).
    """
    if peer_id == local_id:
        return "self"
    if ban_reason is not None:
        return "banned"
    if existing is not None:
        if not keep_new_connection(local_id, peer_id, existing=existing, new=direction):
            return "duplicate"
        return None  # replaces the existing connection: the count does not grow
    if peer_count >= max_peers:
        return "full"
    return None
