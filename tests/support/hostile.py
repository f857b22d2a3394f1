"""A peer with a valid certificate (a fresh identity) that says and sends what a test wants:
the hostile side of the P2P integration tests."""

from __future__ import annotations

import json
from typing import Any

import anyio

from ian.config import Settings
from ian.p2p.frames import encode_frame
from ian.p2p.messages import PROTOCOL_VERSION, Hello
from ian.p2p.session import (
    Direction,
    GoodbyeReceived,
    HelloReceived,
    MessageReceived,
    Session,
    SessionConfig,
)
from ian.p2p.transport import TlsCredentials, TlsStream, connect_tcp, tls_handshake

MAX_FRAME = Settings().max_frame_bytes  # the node's default


class RefusedAtHello(ConnectionError):
    """The node closed the connection before hello; ``goodbye`` is its reason, if it gave one."""

    def __init__(self, goodbye: str | None) -> None:
        super().__init__(f"refused at hello: {goodbye}")
        self.goodbye = goodbye


class HostilePeer:
    """A peer with a valid certificate that completed hello with the node."""

    def __init__(self, stream: TlsStream, session: Session) -> None:
        self.stream = stream
        self.session = session
        self.goodbye: str | None = None
        self.pongs = 0

    @classmethod
    async def connect(
        cls, host: str, port: int, creds: TlsCredentials, **hello: Any
    ) -> HostilePeer:
        """Connect and complete hello; ``hello`` overrides fields of ours (height, sequencer,
        chain_id, ...)."""
        sock = await connect_tcp(host, port)
        stream = await tls_handshake(sock, creds, server=False)
        assert stream.peer is not None
        session = Session(
            SessionConfig(
                node_id=creds.identity.node_id, network_id="ian-local", max_frame_bytes=MAX_FRAME
            ),
            direction=Direction.OUTBOUND,
            peer_node_id=stream.peer.node_id,
        )
        fields: dict[str, Any] = {
            "network_id": "ian-local",
            "protocol_version": PROTOCOL_VERSION,
            "node_id": creds.identity.node_id,
            "height": 0,
            "head_hash": "00" * 32,
            "agent": "hostile/1",
        }
        await stream.send(session.start(Hello(**(fields | hello))))
        peer = cls(stream, session)
        try:
            with anyio.fail_after(5):
                while not isinstance(await peer._next_event(), HelloReceived):
                    pass
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            await stream.aclose()
            raise RefusedAtHello(peer.goodbye) from exc
        return peer

    async def _next_event(self) -> object:
        while True:
            events = self.session.receive_data(await self.stream.receive(), 0.0)
            for event in events:
                if isinstance(event, GoodbyeReceived):
                    self.goodbye = event.reason
                elif isinstance(event, MessageReceived) and event.envelope.type == "pong":
                    self.pongs += 1
            if events:
                return events[0]

    async def until_closed(self, within: float) -> float:
        """Read (and count pongs) until the node closes; the seconds it took (at most
        ``within``, else TimeoutError)."""
        started = anyio.current_time()
        with anyio.fail_after(within):
            try:
                while True:
                    await self._next_event()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        return anyio.current_time() - started

    async def answer(self, reply: Any) -> None:
        """Serve requests until the node closes: ``reply(envelope)`` returns the raw frame to
        send back (built with :func:`frame`, ``re=envelope.id``) or None for silence."""
        try:
            while True:
                events = self.session.receive_data(await self.stream.receive(), 0.0)
                for event in events:
                    if isinstance(event, MessageReceived):
                        data = reply(event.envelope)
                        if data is not None:
                            await self.stream.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def request(self, data: bytes, msg_id: int, within: float = 10) -> Any:
        """Send a request frame (built with ``msg_id``) and return the reply's envelope."""
        await self.stream.send(data)
        with anyio.fail_after(within):
            while True:
                events = self.session.receive_data(await self.stream.receive(), 0.0)
                for event in events:
                    if isinstance(event, MessageReceived) and event.envelope.re == msg_id:
                        return event.envelope

    async def aclose(self) -> None:
        await self.stream.aclose()


def frame(doc_type: str, body: dict[str, Any], msg_id: int = 99, re: int | None = None) -> bytes:
    """One raw frame of ``doc_type`` (no validation on our side: a liar sends anything)."""
    payload = json.dumps({"v": 1, "type": doc_type, "id": msg_id, "re": re, "body": body})
    return encode_frame(payload.encode(), MAX_FRAME)
