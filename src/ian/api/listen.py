"""Listening sockets the node binds itself (so port 0 works and the bound port is known)."""

from __future__ import annotations

import socket

from ian.errors import ConfigError


def listen(
    host: str, port: int, *, purpose: str, setting: str, reuse_port: bool = False
) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (port 0 = any free port).

    ``reuse_port``: SO_REUSEPORT, so that more sockets of this user can listen on the same
    port, the kernel spreading new connections over them (see :func:`listen_group`).
    A port that cannot be bound is a ConfigError naming ``purpose`` and the ``setting`` to change.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def listen_group(
    host: str, port: int, count: int, *, purpose: str, setting: str
) -> list[socket.socket]:
    """``count`` listening sockets on one ``host:port`` (port 0: the first one picks it), one
    per process that accepts: the kernel spreads new connections evenly over them, where
    processes sharing one socket take them in whatever order they wake up. Without
    SO_REUSEPORT (not Linux), the one socket ``count`` times."""
    if count <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        sock = listen(host, port, purpose=purpose, setting=setting)
        return [sock] * max(1, count)
    if port:
        # SO_REUSEPORT would also let this group join another process's group on the port
        # (another node of the same user): a plain bind first fails on any listener there.
        listen(host, port, purpose=purpose, setting=setting).close()
    socks = [listen(host, port, purpose=purpose, setting=setting, reuse_port=True)]
    bound = socks[0].getsockname()[1]
    try:
        for _ in range(count - 1):
            socks.append(listen(host, bound, purpose=purpose, setting=setting, reuse_port=True))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
