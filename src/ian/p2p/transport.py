"""The transport interface of the P2P layer, and its real implementation: TCP + mutual TLS 1.3.

The switch (:mod:`ian.p2p.switch`) reaches peers only through a :class:`Transport`. Connecting is
two steps, so that bans and per-IP limits are enforced before the expensive handshake:

- ``listen(host, port)`` / ``dial(host, port)`` give a :class:`RawConnection`: the remote IP is
  known, nobody is authenticated yet;
- ``RawConnection.authenticate(...)`` gives a :class:`SecureChannel`: a byte stream plus the
  peer's verified certificate (its node id and fingerprint).

:class:`TlsTransport` is the real one (this module is the only one that touches sockets);
:class:`ian.p2p.memory.MemoryTransport` is its in-process twin for tests.

The rest of this docstring is about TLS.

Why pyOpenSSL: the stdlib ``ssl`` module cannot request a client certificate without a CA to
verify it against, and IAN has no CA. pyOpenSSL lets both sides demand a certificate
(``VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT``) with a verify callback that accepts it, so trust is
decided after the handshake by :func:`ian.certs.verify_node_certificate` (the certificate must be
signed by, and carry, the Ed25519 identity key of the node id it names).

TLS runs over anyio TCP streams through memory BIOs (``SSL.Connection(ctx, None)``): OpenSSL never
sees the socket, so everything stays inside the anyio event loop and cancellation works normally.

- :class:`TlsCredentials` holds this node's certificate pair as an ``SSL.Context``;
  :meth:`TlsCredentials.reload` builds a new context from the files on disk. Connections made
  afterwards present the new certificate; established ones keep theirs.
- :func:`tls_handshake` upgrades a TCP stream (either role) to a :class:`TlsStream` and verifies
  the peer's certificate; :func:`connect_tcp` and :func:`open_listener` make the TCP streams.

There is no plaintext fallback: a peer that does not complete TLS 1.3 with a certificate within
the handshake timeout is dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL

from ian.certs import CertInfo, load_certificate, verify_node_certificate
from ian.errors import ConfigError, IdentityError
from ian.identity import Identity
from ian.p2p.errors import HandshakeError

__all__ = [
    "RawConnection",
    "SecureChannel",
    "TlsCredentials",
    "TlsStream",
    "TlsTransport",
    "Transport",
    "TransportListener",
    "connect_tcp",
    "listener_address",
    "open_listener",
    "remote_ip",
    "tls_handshake",
]

_READ_CHUNK = 65536
#: Private keys OpenSSL can sign TLS handshakes with (what ``Context.use_privatekey`` takes).
_TLS_KEY_TYPES = (
    dsa.DSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    rsa.RSAPrivateKey,
)


def _accept_any_certificate(*_args: Any) -> bool:
    # Chain building fails for self-signed node certificates; trust is decided after the
    # handshake by verify_node_certificate, so OpenSSL's own verdict is deliberately ignored.
    return True


class TlsCredentials:
    """This node's TLS certificate pair, loaded from ``certs_dir`` and checked against
    ``identity``. Raises :class:`IdentityError` when the pair is unusable."""

    def __init__(self, certs_dir: Path, identity: Identity) -> None:
        self.certs_dir = Path(certs_dir)
        self.identity = identity
        self.context, self.cert_info = self._build()

    def reload(self) -> CertInfo:
        """Re-read the pair; new connections use it from now on. On any problem the old pair
        stays in use and :class:`IdentityError` is raised."""
        self.context, self.cert_info = self._build()
        return self.cert_info

    def _build(self) -> tuple[SSL.Context, CertInfo]:
        info = load_certificate(self.certs_dir, self.identity)
        cert_pem = (self.certs_dir / "node_cert.pem").read_bytes()
        key_pem = (self.certs_dir / "node_key.pem").read_bytes()
        # load_certificate read the files too; a rotation in between would mix two pairs.
        if verify_node_certificate(cert_pem).fingerprint_sha256 != info.fingerprint_sha256:
            raise IdentityError(
                f"{self.certs_dir} changed while it was being read", fix="reload again"
            )
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, _TLS_KEY_TYPES):
            raise IdentityError(f"{self.certs_dir}: {type(key).__name__} cannot sign for TLS")
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        try:
            ctx.use_certificate(cert)
            ctx.use_privatekey(key)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise IdentityError(f"{self.certs_dir}: certificate and key do not match") from exc
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
        # Connections are long-lived and authenticated per connection: no resumption state.
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        return ctx, info


class TlsStream(anyio.abc.ByteStream):
    """A TLS connection over an anyio byte stream. Made by :func:`tls_handshake`.

    ``peer`` describes the verified peer certificate. ``send`` may be called from several tasks
    (they are serialised); ``receive`` from one task at a time. ``receive`` never waits for a
    sender, so two peers both blocked on full send buffers cannot deadlock each other's reads.
    """

    def __init__(self, transport: anyio.abc.ByteStream, conn: SSL.Connection) -> None:
        self._transport = transport
        self._conn = conn
        self._send_lock = anyio.Lock()
        self._outbuf = bytearray()
        self._closed = False
        self.peer: CertInfo | None = None

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._transport.extra_attributes

    # -- plumbing between the memory BIO and the transport

    def _collect_output(self) -> None:
        while True:
            try:
                chunk = self._conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                return
            if not chunk:
                return
            self._outbuf += chunk

    async def _drain_locked(self) -> None:
        """Send everything queued; caller holds the send lock. Loops because a receiver may
        queue more (e.g. a TLS key-update answer) while we wait on the socket."""
        while self._outbuf:
            data = bytes(self._outbuf)
            self._outbuf.clear()
            await self._transport.send(data)

    async def _handshake(self) -> None:
        while True:
            try:
                self._conn.do_handshake()
                break
            except SSL.WantReadError:
                pass
            self._collect_output()
            async with self._send_lock:
                await self._drain_locked()
            try:
                data = await self._transport.receive(_READ_CHUNK)
            except anyio.EndOfStream:
                raise HandshakeError(
                    "peer closed the connection during TLS", reason="tls"
                ) from None
            self._conn.bio_write(data)
        self._collect_output()
        async with self._send_lock:
            await self._drain_locked()

    # -- ByteStream

    async def receive(self, max_bytes: int = _READ_CHUNK) -> bytes:
        """Decrypted bytes; ``anyio.EndOfStream`` on close, ``BrokenResourceError`` on TLS
        errors or a reset connection."""
        while True:
            try:
                data = self._conn.recv(max_bytes)
            except SSL.WantReadError:
                data = None
            except SSL.ZeroReturnError:
                raise anyio.EndOfStream from None
            except SSL.Error as exc:
                raise anyio.BrokenResourceError(f"TLS error: {exc}") from exc
            self._collect_output()
            if self._outbuf and not self._send_lock.locked():
                async with self._send_lock:
                    await self._drain_locked()
            if data:
                return data
            try:
                chunk = await self._transport.receive(_READ_CHUNK)
            except (OSError, anyio.ClosedResourceError) as exc:
                raise anyio.BrokenResourceError(str(exc)) from exc
            self._conn.bio_write(chunk)

    async def send(self, item: bytes) -> None:
        async with self._send_lock:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                self._conn.sendall(item)
            except SSL.Error as exc:
                raise anyio.BrokenResourceError(f"TLS error: {exc}") from exc
            self._collect_output()
            try:
                await self._drain_locked()
            except OSError as exc:
                raise anyio.BrokenResourceError(str(exc)) from exc

    async def send_eof(self) -> None:
        """Send TLS close_notify (the TCP connection stays open for reading)."""
        async with self._send_lock:
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
            self._collect_output()
            await self._drain_locked()

    async def aclose(self) -> None:
        """Best-effort close_notify (bounded, shielded), then close the socket."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(0.5, shield=True):
            try:
                self._conn.shutdown()
                self._collect_output()
                if self._outbuf:
                    await self._transport.send(bytes(self._outbuf))
            except (SSL.Error, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        await self._transport.aclose()


async def tls_handshake(
    transport: anyio.abc.ByteStream,
    credentials: TlsCredentials,
    *,
    server: bool,
    expected_node_id: str | None = None,
    handshake_timeout: float = 5.0,
) -> TlsStream:
    """Run the TLS 1.3 handshake in either role and verify the peer's node certificate.

    Returns the stream with ``peer`` set. On any failure the transport is closed and
    :class:`HandshakeError` raised (``reason``: ``tls``, ``timeout`` or ``identity``).
    """
    conn = SSL.Connection(credentials.context, None)
    if server:
        conn.set_accept_state()
    else:
        conn.set_connect_state()
    stream = TlsStream(transport, conn)
    try:
        try:
            with anyio.fail_after(handshake_timeout):
                await stream._handshake()
        except TimeoutError:
            raise HandshakeError(
                f"TLS handshake took over {handshake_timeout} s", reason="timeout"
            ) from None
        except SSL.Error as exc:
            raise HandshakeError(f"TLS handshake failed: {exc}", reason="tls") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise HandshakeError(f"connection lost during TLS: {exc}", reason="tls") from None
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is None:  # cannot happen with VERIFY_FAIL_IF_NO_PEER_CERT; fail closed anyway
            raise HandshakeError("peer presented no certificate", reason="identity")
        try:
            stream.peer = verify_node_certificate(
                cert.public_bytes(serialization.Encoding.DER), expected_node_id=expected_node_id
            )
        except IdentityError as exc:
            raise HandshakeError(
                f"peer certificate refused: {exc.message}", reason="identity"
            ) from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await transport.aclose()
        raise
    return stream


async def connect_tcp(
    host: str, port: int, *, connect_timeout: float = 5.0
) -> anyio.abc.SocketStream:
    """A TCP connection; :class:`HandshakeError` (reason ``connect``) when it cannot be made."""
    try:
        with anyio.fail_after(connect_timeout):
            return await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError) as exc:
        raise HandshakeError(f"cannot connect to {host}:{port}: {exc}", reason="connect") from None


async def open_listener(host: str, port: int) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    """A TCP listener (port 0 = any free port); a port that cannot be bound is a ConfigError."""
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} for P2P: {exc.strerror}",
            fix="stop whatever holds the port or set IAN_P2P_PORT",
        ) from None


def listener_address(listener: anyio.abc.Listener[Any]) -> tuple[str, int]:
    """``(host, port)`` the listener is bound to (the first one, for multi-address hosts)."""
    addr = listener.extra(SocketAttribute.local_address)
    return str(addr[0]), int(addr[1])


def remote_ip(stream: anyio.TypedAttributeProvider) -> str:
    """The peer's IP address in canonical form (IPv4-mapped IPv6 shown as IPv4).

    :class:`HandshakeError` (``connect``) when the socket has none any more: a peer that hung
    up between connect/accept and this call (seen under load) is a failed connection, never
    an error that escapes into the node. Once a connection is lost, uvloop's transport has no
    socket any more and anyio's lookup fails on None (AttributeError): the same failure."""
    try:
        addr = stream.extra(SocketAttribute.remote_address)
    except (anyio.TypedAttributeLookupError, OSError, AttributeError):
        raise HandshakeError(
            "the connection closed before it could be used", reason="connect"
        ) from None
    ip = ipaddress.ip_address(addr[0] if isinstance(addr, tuple) else str(addr))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


# --------------------------------------------------------------------------- the interface


@dataclass(frozen=True, slots=True, eq=False)
class SecureChannel:
    """An authenticated connection: ``stream`` carries bytes (``send`` from any task, ``receive``
    from one; ``anyio.EndOfStream`` when the peer closed, ``anyio.BrokenResourceError`` when it was
    lost); ``peer`` is the peer's verified certificate, which proves its node id."""

    stream: anyio.abc.ByteStream
    peer: CertInfo


class RawConnection(Protocol):
    """A connection before authentication. Exactly one of ``authenticate`` / ``aclose`` is
    called; ``authenticate`` closes the connection itself when it fails."""

    @property
    def remote_ip(self) -> str:
        """The peer's IP in canonical form (IPv4-mapped IPv6 shown as IPv4)."""
        ...

    async def authenticate(
        self, *, server: bool, expected_node_id: str | None, handshake_timeout: float
    ) -> SecureChannel:
        """Prove identities both ways within ``handshake_timeout`` s. Raises :class:`HandshakeError`
        (``reason``: ``tls``, ``timeout`` or ``identity``, the latter when the peer is not
        ``expected_node_id``)."""
        ...

    async def aclose(self) -> None:
        """Drop the connection unauthenticated."""
        ...


class TransportListener(Protocol):
    """A bound listener; ``serve`` runs ``handler`` in ``task_group`` for each new connection
    until cancelled."""

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the listener is bound to."""
        ...

    async def serve(
        self,
        handler: Callable[[RawConnection], Awaitable[None]],
        task_group: anyio.abc.TaskGroup,
    ) -> None: ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    """How the switch reaches peers. ``cert_info`` is what new connections present; ``reload``
    re-reads it (raises :class:`IdentityError`, keeping the old one, when it is unusable)."""

    @property
    def cert_info(self) -> CertInfo: ...

    def reload(self) -> CertInfo: ...

    async def listen(self, host: str, port: int) -> TransportListener:
        """Bind (port 0 = any free port); a port that cannot be bound is a ConfigError."""
        ...

    async def dial(self, host: str, port: int, *, connect_timeout: float) -> RawConnection:
        """Connect within ``connect_timeout`` s; :class:`HandshakeError` (``connect``) if not."""
        ...


# --------------------------------------------------------------------------- TCP + TLS


class _TcpConnection:
    """A TCP connection awaiting the TLS handshake."""

    def __init__(self, sock: anyio.abc.SocketStream, credentials: TlsCredentials) -> None:
        self._sock = sock
        self._credentials = credentials
        self.remote_ip = remote_ip(sock)

    async def authenticate(
        self, *, server: bool, expected_node_id: str | None, handshake_timeout: float
    ) -> SecureChannel:
        stream = await tls_handshake(
            self._sock,
            self._credentials,
            server=server,
            expected_node_id=expected_node_id,
            handshake_timeout=handshake_timeout,
        )
        assert stream.peer is not None  # tls_handshake verified it
        return SecureChannel(stream, stream.peer)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._sock.aclose()


class _TcpListener:
    def __init__(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], credentials: TlsCredentials
    ) -> None:
        self._listener = listener
        self._credentials = credentials
        self.address = listener_address(listener)

    async def serve(
        self,
        handler: Callable[[RawConnection], Awaitable[None]],
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        async def accept(sock: anyio.abc.SocketStream) -> None:
            try:
                conn = _TcpConnection(sock, self._credentials)
            except (HandshakeError, OSError, ValueError):  # no usable remote address
                await sock.aclose()
                return
            await handler(conn)

        await self._listener.serve(accept, task_group=task_group)

    async def aclose(self) -> None:
        await self._listener.aclose()


class TlsTransport:
    """The real :class:`Transport`: TCP sockets and mutual TLS 1.3 with ``credentials``."""

    def __init__(self, credentials: TlsCredentials) -> None:
        self.credentials = credentials

    @property
    def cert_info(self) -> CertInfo:
        return self.credentials.cert_info

    def reload(self) -> CertInfo:
        return self.credentials.reload()

    async def listen(self, host: str, port: int) -> TransportListener:
        return _TcpListener(await open_listener(host, port), self.credentials)

    async def dial(self, host: str, port: int, *, connect_timeout: float) -> RawConnection:
        sock = await connect_tcp(host, port, connect_timeout=connect_timeout)
        try:
            return _TcpConnection(sock, self.credentials)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await sock.aclose()
            raise
