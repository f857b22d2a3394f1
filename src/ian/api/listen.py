"""Listening sockets the node binds itself (so port 0 works and the bound port is known)."""

from __future__ import annotations

import socket

from ian.errors import ConfigError


def listen(host: str, port: int, *, purpose: str, setting: str) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (port 0 = any free port).

    A port that cannot be bound is a ConfigError naming ``purpose`` and the ``setting`` to change.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} for {purpose}: {exc.strerror}",
            fix=f"stop whatever holds the port or set {setting}",
        ) from None
    sock.setblocking(False)
    return sock
