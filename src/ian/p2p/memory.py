"""The in-memory twin of :class:`ian.p2p.transport.TlsTransport`: no sockets, no TLS.

A :class:`MemoryNetwork` maps ``(host, port)`` to listeners; each node gets a
:class:`MemoryTransport` on it (``network.transport(certs_dir, identity, ip=...)``). A dial
creates a pair of anyio memory object streams. Authentication exchanges the two sides'
:class:`~ian.certs.CertInfo` (loaded from each node's real ``certs/``, so node ids and
fingerprints are the ones TLS would prove) and enforces ``expected_node_id`` exactly like TLS:
:class:`HandshakeError` with reason ``identity``, ``timeout`` or ``tls`` (the other side closed
during the handshake). Everything is deterministic: no ports are bound, nothing leaves the
process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ian.certs import CertInfo, load_certificate
from ian.errors import ConfigError
from ian.identity import Identity
from ian.p2p.errors import HandshakeError
from ian.p2p.transport import RawConnection, SecureChannel, TransportListener

__all__ = ["MemoryByteStream", "MemoryNetwork", "MemoryTransport"]

#: Chunks in flight per direction before ``send`` waits (like a socket's buffer).
CHUNKS_IN_FLIGHT = 256
FIRST_PORT = 20000


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe. ``receive`` returns at most ``max_bytes`` (the rest is
    kept for the next call); ``EndOfStream`` once the other end closed and everything was read.
    ``send`` waits while :data:`CHUNKS_IN_FLIGHT` chunks are unread; after the other end closed
    it discards the data (as TCP buffers it). After this end closed, ``receive`` raises
    ``BrokenResourceError`` and ``send`` ``ClosedResourceError``, as ``TlsStream`` does."""

    def __init__(
        self,
        send: MemoryObjectSendStream[bytes],
        receive: MemoryObjectReceiveStream[bytes],
        on_close: Callable[[], None],
    ) -> None:
        self._send = send
        self._receive = receive
        self._on_close = on_close
        self._buffer = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._buffer:
            try:
                self._buffer = await self._receive.receive()
            except anyio.ClosedResourceError as exc:  # as TlsStream reports a closed transport
                raise anyio.BrokenResourceError("stream closed") from exc
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        if not item:
            return
        # After the other end closed, this succeeds like a TCP write into the socket buffer; the
        # loss shows on this end's receive (EndOfStream), as it would over TCP.
        with contextlib.suppress(anyio.BrokenResourceError):
            await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        self._on_close()
        await anyio.lowlevel.checkpoint()


class _Link:
    """The shared state of one in-memory connection: who has authenticated, who closed."""

    def __init__(self) -> None:
        self.certs: dict[bool, CertInfo] = {}  # server? -> the certificate that side presented
        self.closed = False
        self._changed = anyio.Event()

    def notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_for(self, server: bool) -> CertInfo | None:
        """The certificate of the side ``server``, once presented; None if the link closed."""
        while server not in self.certs and not self.closed:
            await self._changed.wait()
        return None if self.closed else self.certs[server]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.notify()


class _MemoryConnection:
    """One side of a link before authentication (:class:`~ian.p2p.transport.RawConnection`)."""

    def __init__(
        self,
        link: _Link,
        stream: MemoryByteStream,
        *,
        server: bool,
        local: MemoryTransport,
        remote_ip: str,
    ) -> None:
        self._link = link
        self._stream = stream
        self._server = server
        self._local = local
        self.remote_ip = remote_ip

    async def authenticate(
        self, *, server: bool, expected_node_id: str | None, handshake_timeout: float
    ) -> SecureChannel:
        if server != self._server:
            raise ValueError("authenticate(server=...) must match the side of the connection")
        try:
            if self._link.closed:
                raise HandshakeError("peer closed the connection during TLS", reason="tls")
            self._link.certs[server] = self._local.cert_info
            self._link.notify()
            with anyio.move_on_after(handshake_timeout):
                peer = await self._link.wait_for(not server)
                if peer is None:
                    raise HandshakeError("peer closed the connection during TLS", reason="tls")
                if expected_node_id is not None and peer.node_id != expected_node_id:
                    raise HandshakeError(
                        f"peer certificate refused: it names {peer.node_id}, "
                        f"not {expected_node_id}",
                        reason="identity",
                    )
                return SecureChannel(self._stream, peer)
            raise HandshakeError(f"TLS handshake took over {handshake_timeout} s", reason="timeout")
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


class _MemoryListener:
    def __init__(
        self, network: MemoryNetwork, address: tuple[str, int], owner: MemoryTransport
    ) -> None:
        self._network = network
        self.owner = owner
        self.address = address
        self._incoming: MemoryObjectSendStream[_MemoryConnection]
        self._accepted: MemoryObjectReceiveStream[_MemoryConnection]
        self._incoming, self._accepted = anyio.create_memory_object_stream[_MemoryConnection](
            math.inf
        )

    def deliver(self, conn: _MemoryConnection) -> None:
        self._incoming.send_nowait(conn)

    async def serve(
        self,
        handler: Callable[[RawConnection], Awaitable[None]],
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        async def handle(conn: RawConnection) -> None:
            await handler(conn)

        async for conn in self._accepted:
            task_group.start_soon(handle, conn)

    async def aclose(self) -> None:
        self._network.unbind(self.address, self)
        self._incoming.close()
        # Connections that were never accepted are refused, as a closed socket would be.
        while True:
            try:
                conn = self._accepted.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            await conn.aclose()
        self._accepted.close()


class MemoryNetwork:
    """An in-process network: ``(host, port)`` -> listener. Ports for ``port=0`` are handed out
    in increasing order from :data:`FIRST_PORT`, so runs are reproducible."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, int], _MemoryListener] = {}
        self._next_port = FIRST_PORT

    def transport(
        self, certs_dir: Path, identity: Identity, *, ip: str = "127.0.0.1"
    ) -> MemoryTransport:
        """A node's transport; it dials from ``ip`` and presents the certificate in
        ``certs_dir`` (checked against ``identity``, as :class:`TlsCredentials` does)."""
        return MemoryTransport(self, certs_dir, identity, ip=ip)

    def bind(self, host: str, port: int, owner: MemoryTransport) -> _MemoryListener:
        if port == 0:
            while (host, self._next_port) in self._listeners:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if (host, port) in self._listeners:
            raise ConfigError(
                f"cannot listen on {host}:{port} for P2P: Address already in use",
                fix="stop whatever holds the port or set IAN_P2P_PORT",
            )
        listener = _MemoryListener(self, (host, port), owner)
        self._listeners[(host, port)] = listener
        return listener

    def unbind(self, address: tuple[str, int], listener: _MemoryListener) -> None:
        if self._listeners.get(address) is listener:
            del self._listeners[address]

    def connect(self, host: str, port: int, dialler: MemoryTransport) -> _MemoryConnection:
        # A listener bound to the unspecified address takes connections to any host.
        listener = self._listeners.get((host, port)) or self._listeners.get(("0.0.0.0", port))
        if listener is None:
            raise HandshakeError(
                f"cannot connect to {host}:{port}: connection refused", reason="connect"
            )
        link = _Link()
        a_send, b_receive = anyio.create_memory_object_stream[bytes](CHUNKS_IN_FLIGHT)
        b_send, a_receive = anyio.create_memory_object_stream[bytes](CHUNKS_IN_FLIGHT)
        client_stream = MemoryByteStream(a_send, a_receive, link.close)
        server_stream = MemoryByteStream(b_send, b_receive, link.close)
        listener.deliver(
            _MemoryConnection(
                link, server_stream, server=True, local=listener.owner, remote_ip=dialler.ip
            )
        )
        return _MemoryConnection(
            link, client_stream, server=False, local=dialler, remote_ip=listener.owner.ip
        )


class MemoryTransport:
    """A node's :class:`~ian.p2p.transport.Transport` on a :class:`MemoryNetwork`."""

    def __init__(
        self, network: MemoryNetwork, certs_dir: Path, identity: Identity, *, ip: str
    ) -> None:
        self.network = network
        self.certs_dir = Path(certs_dir)
        self.identity = identity
        self.ip = ip
        self._cert_info = load_certificate(self.certs_dir, identity)

    @property
    def cert_info(self) -> CertInfo:
        return self._cert_info

    def reload(self) -> CertInfo:
        self._cert_info = load_certificate(self.certs_dir, self.identity)
        return self._cert_info

    async def listen(self, host: str, port: int) -> TransportListener:
        await anyio.lowlevel.checkpoint()
        return self.network.bind(host, port, self)

    async def dial(self, host: str, port: int, *, connect_timeout: float) -> RawConnection:
        await anyio.lowlevel.checkpoint()
        return self.network.connect(host, port, self)
