"""P2P failures, as a branch of the one :mod:`ian.errors` hierarchy.

::

    IanError
    └── P2PError                    anything the P2P layer reports on purpose
        ├── HandshakeError          TLS or hello failed, or the peer refused us (``reason``)
        ├── ProtocolViolation       fatal misbehaviour: bad frame/envelope, unknown type, wrong
        │   │                       order, hello that contradicts the certificate
        │   └── FrameTooLargeError  a frame header announced more than ``max_frame_bytes``
        ├── InvalidMessage          a known message type whose body does not validate
        ├── PeerNotConnectedError   no (longer a) connection to that node id
        │   └── SendStalledError    the peer held its send budget full too long (closed, charged)
        ├── SendBudgetExhaustedError  the node-wide send budget is full: a frame was not queued
        ├── RequestTimeoutError     no reply to a request within its deadline
        └── RemoteError             the peer answered a request with an ``error`` message

``score_event`` names the :class:`ian.p2p.peer_book.PeerEvent` member a failure charges to the peer
(``None`` = not the peer's fault). The P2P service maps it; this module does not import the peer
book so the codec and the session stay free of it.
"""

from __future__ import annotations

from ian.errors import IanError

__all__ = [
    "FrameTooLargeError",
    "HandshakeError",
    "InvalidMessage",
    "P2PError",
    "PeerNotConnectedError",
    "ProtocolViolation",
    "RemoteError",
    "RequestTimeoutError",
    "SendBudgetExhaustedError",
    "SendStalledError",
]


class P2PError(IanError):
    """Base of P2P failures. ``score_event`` is the PeerEvent name to record, or None."""

    code = "p2p"
    score_event: str | None = None


class HandshakeError(P2PError):
    """The connection could not be established; ``reason`` is a short machine-readable word
    (``tls``, ``timeout``, ``banned``, ``self``, ``duplicate``, ``full``, ``network``,
    ``chain``, ``version``, ``identity``, or the peer's goodbye reason)."""

    code = "p2p_handshake"

    def __init__(self, message: str, *, reason: str = "handshake", fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason


class ProtocolViolation(P2PError):
    """The peer broke the protocol; the connection must be closed."""

    code = "p2p_protocol_violation"
    score_event = "PROTOCOL_VIOLATION"


class FrameTooLargeError(ProtocolViolation):
    code = "p2p_frame_too_large"


class InvalidMessage(P2PError):
    """A known message type with an invalid body. Scored; the connection may stay open.

    Handlers raise it too (e.g. a block that fails verification) to charge the sending peer.
    """

    code = "p2p_invalid_message"
    score_event = "INVALID_MESSAGE"

    def __init__(
        self, message: str, *, message_type: str | None = None, message_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.message_type = message_type
        self.message_id = message_id


class PeerNotConnectedError(P2PError):
    code = "p2p_not_connected"


class SendStalledError(PeerNotConnectedError):
    """A frame waited longer than ``P2PTuning.send_stall_timeout`` for room in the peer's own
    send budget: the peer does not read what it asked for. The connection is closed."""

    code = "p2p_send_stalled"
    score_event = "RATE_LIMIT_VIOLATION"


class SendBudgetExhaustedError(P2PError):
    """The node-wide send budget (``P2PTuning.send_budget_bytes``) had no room for a frame
    that is never waited for (a broadcast, a pong); it was dropped for that peer."""

    code = "p2p_send_budget"


class RequestTimeoutError(P2PError):
    code = "p2p_timeout"


class RemoteError(P2PError):
    """The peer answered with ``error {code, message}``; ``remote_code`` is its code."""

    code = "p2p_remote_error"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"peer answered {remote_code}: {message}")
        self.remote_code = remote_code
