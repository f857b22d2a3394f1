"""IAN peer-to-peer networking: mutual TLS 1.3, length-prefixed JSON frames, peer policy.

Modules (only :mod:`ian.p2p.transport` touches sockets)::

    errors     the P2P branch of the ian.errors hierarchy
    frames     incremental length-prefixed frame codec (no I/O)
    messages   wire message models, envelope codec, block/contribution converters (no I/O)
    session    per-connection handshake state machine and admission rules (no I/O)
    transport  TCP + pyOpenSSL TLS over anyio streams, certificate reload
    service    P2PService: listener, dialler, peer exchange, rate limits, scores, bans

The node wires :class:`P2PService` (see its module docstring).
"""

from __future__ import annotations

from ian.p2p.errors import (
    FrameTooLargeError,
    HandshakeError,
    InvalidMessage,
    P2PError,
    PeerNotConnectedError,
    ProtocolViolation,
    RemoteError,
    RequestTimeoutError,
)
from ian.p2p.service import (
    Handler,
    P2PService,
    P2PTuning,
    PeerConnected,
    PeerDisconnected,
    PeerInfo,
    PeerListener,
    PeerStatus,
)

__all__ = [
    "FrameTooLargeError",
    "Handler",
    "HandshakeError",
    "InvalidMessage",
    "P2PError",
    "P2PService",
    "P2PTuning",
    "PeerConnected",
    "PeerDisconnected",
    "PeerInfo",
    "PeerListener",
    "PeerNotConnectedError",
    "PeerStatus",
    "ProtocolViolation",
    "RemoteError",
    "RequestTimeoutError",
]
