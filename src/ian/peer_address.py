"""Peer addresses (``tcp://host:port``): parsing and the canonical form, without pydantic.

Settings (:mod:`ian.config`, which re-exports these names), the P2P switch, the API's peer
routes and the Tau bridge parse addresses here; so does ``ian_ops.light_config``, which checks
the configuration of a read command without loading pydantic.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ian.errors import ConfigError

__all__ = [
    "HOSTNAME_RE",
    "PEER_FORM",
    "PeerAddress",
    "PeerAddressError",
    "check_host",
    "parse_peer_address",
]

PEER_FORM = "tcp://host:port (IPv6 as tcp://[addr]:port)"
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class PeerAddressError(ConfigError, ValueError):
    """A peer address that is not ``tcp://host:port``; also a ``ValueError`` for validators."""


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A dialable P2P address; ``str()`` gives the canonical ``tcp://host:port`` form."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def check_host(host: str) -> str:
    """Return ``host`` normalised (lower-case name or canonical IP); raise ``ValueError``."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOSTNAME_RE.match(host):
        raise ValueError(f"{host!r} is not a valid host name or IP address")
    return host.lower()


def parse_peer_address(text: str) -> PeerAddress:
    """Parse ``tcp://host:port`` (``tcp://`` may be omitted; IPv6 hosts in brackets).

    Raises :class:`PeerAddressError` (a ``ConfigError`` and a ``ValueError``) with a one-line
    reason for another scheme, an empty host, a missing, non-numeric or out-of-range port.
    """

    def bad(reason: str) -> PeerAddressError:
        return PeerAddressError(f"invalid peer address {text!r}: {reason}; expected {PEER_FORM}")

    if not isinstance(text, str):
        raise bad("not a string")
    raw = text.strip()
    if not raw:
        raise bad("empty")
    rest = raw
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        if scheme.lower() != "tcp":
            raise bad(f"scheme {scheme!r} is not supported")
    if any(ch in rest for ch in "/?#@ \t"):
        raise bad("unexpected path, credentials or spaces")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise bad("unclosed '[' around the IPv6 host")
        host, after = rest[1:end], rest[end + 1 :]
        if not after.startswith(":"):
            raise bad("missing port")
        port_text = after[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        colons = rest.count(":")
        if colons == 0:
            raise bad("missing port")
        if colons > 1:
            raise bad("IPv6 hosts must be in brackets")
        host, port_text = rest.split(":", 1)
        if not host:
            raise bad("empty host")
        try:
            host = check_host(host)
        except ValueError as exc:
            raise bad(str(exc)) from None
    if not port_text:
        raise bad("missing port")
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise bad(f"port {port} is out of range 1..65535")
    return PeerAddress(host=host, port=port)
