"""The event stream for clients: ``ws://HOST:WS_PORT/events`` (ARCHITECTURE §4, port 9001).

Protocol (JSON text messages)::

    client → {"type": "subscribe", "token": "<api token>", "topics": ["block", "peer"]}
    server → {"type": "subscribed", "topics": ["block", "peer"], "seq": <last seq so far>}
    server → {"topic": "block", "type": "applied", "ts": ..., "seq": ..., "data": {...}}  ...

The subscribe message must arrive within :data:`SUBSCRIBE_TIMEOUT_S` of the connection. The
token is the node's admin token (``IAN_API_TOKEN``, else the data dir's ``api_token`` file); a
node with no token refuses every client. ``topics`` missing or empty means every topic (see
:data:`ian.events.TOPICS`). Messages the client sends after subscribing are ignored.

Refusals send ``{"type": "error", "error": {"code", "message"}}`` and then close with:

===== ====================== =================================================================
code  error code             when
===== ====================== =================================================================
4400  ``bad_request``        not JSON, not a subscribe message, binary frame
4400  ``unknown_topic``      a topic that does not exist (the message lists the known ones)
4401  ``unauthorized``       no token in the subscribe message
4403  ``forbidden``          wrong token, or the node has no token at all
4408  ``subscribe_timeout``  no subscribe message in time
1013  ``too_many_clients``   :data:`MAX_CLIENTS` authenticated streams are open already (a
                             slot is taken only after the token checked out)
1008  (close only)           the client fell :data:`ian.events.DEFAULT_QUEUE_SIZE` events
                             behind and was dropped
1001  (close only)           the node is shutting down
===== ====================== =================================================================

Before the upgrade (plain HTTP answers): 403 when the client's address is banned
(``ian peers ban IP|CIDR``), 429 when :data:`MAX_PER_IP` connections from its address are open,
503 when :data:`MAX_PENDING` connections have not authenticated yet.

Why the ``websockets`` server rather than a second embedded uvicorn: this port serves one
WebSocket route and nothing else, and dropping a slow client needs the connection itself — if
the client stopped reading, even the close frame cannot be written, so after
:data:`CLOSE_TIMEOUT_S` the TCP connection is aborted (``transport.abort()``), which ASGI does not
expose. ``websockets`` also takes the socket the node binds (same start-up reporting as the
API), bounds the inbound message size and sends keepalive pings. Like uvicorn it needs the asyncio
backend, which the node uses. Compression is off: each event is encoded to JSON once and the same
text is written to every client.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ian.api.listen import listen
from ian.events import TOPICS, EventBus, Subscription

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.http11 import Request, Response

__all__ = [
    "CLOSE_TIMEOUT_S",
    "MAX_CLIENTS",
    "PATH",
    "SUBSCRIBE_TIMEOUT_S",
    "EventStreamServer",
]

log = logging.getLogger("ian.ws")

PATH = "/events"
MAX_CLIENTS = 64  # subscribed (authenticated) streams
MAX_PENDING = 64  # connections that have not authenticated yet
MAX_PER_IP = 8  # streams and pending connections from one client address
SUBSCRIBE_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
MAX_MESSAGE_BYTES = 16 * 1024  # a subscribe message is a token and a few topic names
PING_INTERVAL_S = 20.0

BAD_REQUEST = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
SUBSCRIBE_TIMEOUT = 4408
TOO_MANY_CLIENTS = 1013
TOO_SLOW = 1008
GOING_AWAY = 1001


class _Refused(Exception):
    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


class EventStreamServer:
    """Serves :class:`~ian.events.EventBus` subscriptions over WebSocket on ``host:port``.

    ``token()`` returns the token clients must present (None: refuse everyone). Run
    :meth:`serve` in a task group (reports the bound ``(host, port)``); :meth:`shutdown` closes
    every stream with 1001 and stops listening.
    """

    def __init__(
        self,
        bus: EventBus,
        token: Callable[[], str | None],
        host: str,
        port: int,
        *,
        max_clients: int = MAX_CLIENTS,
        max_pending: int = MAX_PENDING,
        max_per_ip: int = MAX_PER_IP,
        subscribe_timeout_s: float = SUBSCRIBE_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        banned: Callable[[str], str | None] = lambda ip: None,
    ) -> None:
        self.bus = bus
        self.token = token
        self.banned = banned
        self.max_pending = max_pending
        self.max_per_ip = max_per_ip
        self.pending = 0  # connections not authenticated yet
        self._per_ip: Counter[str] = Counter()
        self._preauthenticated: set[int] = set()  # connections whose upgrade carried the token
        self.host = host
        self.port = port
        self.max_clients = max_clients
        self.subscribe_timeout_s = subscribe_timeout_s
        self.close_timeout_s = close_timeout_s
        self.clients = 0  # authenticated, subscribed streams
        self._server: Server | None = None
        self._stop = anyio.Event()
        self._done = anyio.Event()

    # -- lifecycle ------------------------------------------------------------------------------
    async def serve(self, *, task_status: TaskStatus[tuple[str, int]]) -> None:
        from websockets.asyncio.server import serve

        sock = listen(self.host, self.port, purpose="the event stream", setting="IAN_WS_PORT")
        bound = sock.getsockname()[:2]
        try:
            self._server = await serve(
                self._handle,
                sock=sock,
                process_request=self._check_request,
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_INTERVAL_S,
                close_timeout=self.close_timeout_s,
                server_header=None,
                logger=_Quiet(log, {}),
            )
        except BaseException:
            sock.close()
            self._done.set()
            raise
        task_status.started((bound[0], bound[1]))
        try:
            await self._stop.wait()
            # No new connections; every open one gets 1001.
            self._server.close(code=GOING_AWAY, reason="the node is shutting down")
            with anyio.move_on_after(self.close_timeout_s + 1):
                await self._server.wait_closed()
        finally:
            self._server.close()
            self._done.set()

    async def shutdown(self) -> None:
        """Stop listening and close every stream (bounded by the close timeout)."""
        self._stop.set()
        if self._server is not None:
            await self._done.wait()

    # -- one connection -------------------------------------------------------------------------
    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: the path, a banned address (403), too many connections from one
        address (429) or too many unauthenticated ones (503). A slot among ``max_clients`` is
        taken only after the token checked out (:meth:`_handle`), so idle connections without
        a token cannot lock out a client that has one."""
        path = request.path.partition("?")[0]
        if path != PATH:
            return connection.respond(404, f"not found: the event stream is at {PATH}\n")
        ip = _ip(connection)
        why = self.banned(ip)
        if why is not None:
            return connection.respond(403, f"banned: {why}\n")
        if self._per_ip[ip] >= self.max_per_ip:
            return connection.respond(429, "too many event stream connections from this address\n")
        if self._header_token_ok(request):
            self._preauthenticated.add(id(connection))
        elif self.pending >= self.max_pending:
            return connection.respond(503, "too many event stream connections; retry later\n")
        return None

    def _header_token_ok(self, request: Request) -> bool:
        """``Authorization: Bearer <token>`` on the upgrade request: authenticated before any
        slot or pending place is taken (a client with the token is never crowded out)."""
        expected = self.token()
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if expected is None or scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), expected.encode())

    async def _handle(self, ws: ServerConnection) -> None:
        ip = _ip(ws)
        self._per_ip[ip] += 1
        preauthenticated = id(ws) in self._preauthenticated
        self._preauthenticated.discard(id(ws))
        self.pending += 1
        left_pending = False  # pending is decremented exactly once, on every path
        if preauthenticated:
            self.pending -= 1
            left_pending = True
        peer = _peer(ws)
        try:
            try:
                sub = await self._subscribe(ws, preauthenticated=preauthenticated)
            except _Refused as refused:
                log.info("event stream client %s refused: %s", peer, refused.message)
                if not left_pending:
                    self.pending -= 1
                    left_pending = True
                await self._refuse(ws, refused)
                return
            if not left_pending:
                self.pending -= 1
                left_pending = True
            if sub is None:
                return
            if self.clients >= self.max_clients:
                sub.close()
                await self._refuse(
                    ws,
                    _Refused(TOO_MANY_CLIENTS, "too_many_clients", "too many event stream clients"),
                )
                return
            self.clients += 1
            try:
                log.info(
                    "event stream client %s subscribed to %s", peer, ", ".join(sorted(sub.topics))
                )
                try:
                    await self._stream(ws, sub)
                finally:
                    sub.close()
                if sub.closed_reason is not None:
                    code = GOING_AWAY if self.bus.closed else TOO_SLOW
                    if code == TOO_SLOW:
                        log.info("event stream client %s dropped: %s", peer, sub.closed_reason)
                    await self._close(ws, code, sub.closed_reason)
            finally:
                self.clients -= 1
        finally:
            if not left_pending:
                self.pending -= 1
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    async def _subscribe(
        self, ws: ServerConnection, *, preauthenticated: bool = False
    ) -> Subscription | None:
        """Read and check the subscribe message; None when the client went away first."""
        from websockets.exceptions import ConnectionClosed

        raw: str | bytes | None = None
        with anyio.move_on_after(self.subscribe_timeout_s):
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                return None
        if raw is None:
            raise _Refused(
                SUBSCRIBE_TIMEOUT,
                "subscribe_timeout",
                f"no subscribe message within {self.subscribe_timeout_s:g}s",
            )
        if isinstance(raw, bytes):
            raise _Refused(BAD_REQUEST, "bad_request", "send the subscribe message as text")
        try:
            msg = json.loads(raw)
        except ValueError:
            raise _Refused(BAD_REQUEST, "bad_request", "the message is not JSON") from None
        if not isinstance(msg, dict) or msg.get("type") != "subscribe":
            raise _Refused(
                BAD_REQUEST,
                "bad_request",
                'expected {"type": "subscribe", "token": ..., "topics": [...]}',
            )
        expected = self.token()
        if expected is None:
            raise _Refused(
                FORBIDDEN, "forbidden", "this node has no API token: the event stream is closed"
            )
        given = msg.get("token")
        if given is None and preauthenticated:
            pass  # the upgrade request's Authorization header carried the token
        elif not isinstance(given, str) or not given:
            raise _Refused(UNAUTHORIZED, "unauthorized", "a token is required")
        elif not hmac.compare_digest(given.encode(), expected.encode()):
            raise _Refused(FORBIDDEN, "forbidden", "the token is wrong")
        topics = msg.get("topics") or []
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise _Refused(BAD_REQUEST, "bad_request", "topics must be a list of strings")
        unknown = sorted(set(topics) - TOPICS)
        if unknown:
            raise _Refused(
                BAD_REQUEST,
                "unknown_topic",
                f"unknown topic(s) {', '.join(unknown)}; known: {', '.join(sorted(TOPICS))}",
            )
        sub = self.bus.subscribe(topics)
        try:
            ack = {"type": "subscribed", "topics": sorted(sub.topics), "seq": self.bus.seq}
            await ws.send(json.dumps(ack))
        except ConnectionClosed:
            sub.close()
            return None
        return sub

    async def _stream(self, ws: ServerConnection, sub: Subscription) -> None:
        """Send events until the client leaves or the subscription ends (dropped, shutdown)."""
        from websockets.exceptions import ConnectionClosed

        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for event in sub:
                        await ws.send(event.json)
                tg.cancel_scope.cancel()

            async def client_reader() -> None:
                # Reading keeps pings and the close handshake flowing; content is ignored.
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:
                        pass
                tg.cancel_scope.cancel()

            async def dropped() -> None:
                # The pump may be stuck writing to a client that stopped reading.
                await sub.wait_closed()
                tg.cancel_scope.cancel()

            tg.start_soon(pump)
            tg.start_soon(client_reader)
            tg.start_soon(dropped)

    async def _refuse(self, ws: ServerConnection, refused: _Refused) -> None:
        from websockets.exceptions import ConnectionClosed

        doc = {"type": "error", "error": {"code": refused.code, "message": refused.message}}
        with anyio.move_on_after(self.close_timeout_s), contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(doc))
        await self._close(ws, refused.close_code, refused.message)

    async def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        """Close with ``code``; abort the TCP connection if that cannot finish in time."""
        with anyio.move_on_after(self.close_timeout_s) as scope:
            await ws.close(code, _reason(reason))
        if scope.cancelled_caught:
            ws.transport.abort()


class _Quiet(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' own INFO lines (listening, each connection closed) at DEBUG: the stream logs
    what matters (subscribed, refused, dropped) itself."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def _ip(connection: ServerConnection) -> str:
    addr = connection.remote_address
    return str(addr[0]) if addr else "unknown"


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if addr else "unknown"
