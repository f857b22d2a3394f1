"""A small Tau-compatible server for tests, demos and compose files (``ian tau serve-mock``).

It speaks the line protocol of :mod:`ian.tau.protocol` on one TCP port. For every
``sendtx <json>`` line it acts according to its current mode:

========  ==============================================================================
``ok``    record the transaction and reply ``SUCCESS <sha256 hex of the line>``
``fail``  reply ``ERROR mock Tau node told to fail``
``hang``  never reply (the connection stays open until the client gives up)
``close`` send half a line (``SUCC``) and close the connection
``long``  reply ``SUCCESS`` followed by more than 4 KiB on one line
========  ==============================================================================

The mode can be changed in-process (:meth:`MockTauServer.set_mode`) or by any client sending
``mode <name>\\r\\n`` on the same port (answer: ``OK mode <name>``), e.g.
``printf 'mode fail\\r\\n' | nc 127.0.0.1 12345``. ``sha256 of the line`` is over the line's
bytes without the line terminator.

The server counts connections, keeps every ``sendtx`` line and the transactions it
acknowledged, and lets tests await those counts (:meth:`MockTauServer.wait_until`) instead of
sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from ian.config import PeerAddress

__all__ = ["MODES", "MockTauServer"]

log = logging.getLogger("ian.tau.mock")

MODES = ("ok", "fail", "hang", "close", "long")
MAX_LINE_BYTES = 1 << 20


class MockTauServer:
    """An in-process mock Tau node; run :meth:`serve` in a task group.

    ``long_reply_bytes`` sizes the ``long`` reply; ``on_event`` (optional) receives a one-line
    description of every request and what was answered (``ian tau serve-mock`` prints them).
    """

    def __init__(
        self,
        mode: str = "ok",
        *,
        long_reply_bytes: int = 8192,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.mode = _check_mode(mode)
        self.long_reply_bytes = long_reply_bytes
        self.on_event = on_event
        self.connections = 0
        self.lines: list[bytes] = []
        self.acknowledged: list[dict[str, Any]] = []
        self.address: tuple[str, int] | None = None
        self._changed = anyio.Event()

    def set_mode(self, mode: str) -> None:
        """Switch behaviour for the next ``sendtx`` lines; ``ValueError`` for an unknown mode."""
        self.mode = _check_mode(mode)
        self._bump()

    @property
    def endpoint(self) -> str:
        """``tcp://host:port`` of the bound listener (after :meth:`serve` reported started)."""
        if self.address is None:
            raise RuntimeError("the mock Tau server is not listening yet")
        return str(PeerAddress(*self.address))

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 = a free port) until cancelled; reports ``(host, port)``."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            bound = listener.extra(SocketAttribute.local_port)
            self.address = (host, bound)
            self._event(f"mock Tau node listening on {self.endpoint} (mode {self.mode})")
            task_status.started(self.address)
            await listener.serve(self._handle)

    async def wait_until(self, predicate: Callable[[MockTauServer], bool]) -> None:
        """Return once ``predicate(self)`` holds; re-checked after every connection and line."""
        while not predicate(self):
            await self._changed.wait()

    # -- internals ----------------------------------------------------------------------------
    def _bump(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _event(self, text: str) -> None:
        log.debug("%s", text)
        if self.on_event is not None:
            self.on_event(text)

    async def _handle(self, stream: SocketStream) -> None:
        self.connections += 1
        self._bump()
        # A client that goes away mid-conversation is no error of the server's.
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self._converse(stream)

    async def _converse(self, stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        while True:
            try:
                raw = await reader.receive_until(b"\n", MAX_LINE_BYTES)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.DelimiterNotFound):
                return
            line = raw.rstrip(b"\r")
            if line.startswith(b"mode "):
                wanted = line[5:].decode("utf-8", "replace").strip()
                try:
                    self.set_mode(wanted)
                except ValueError as exc:
                    await stream.send(f"ERROR {exc}\r\n".encode())
                    continue
                self._event(f"mode set to {wanted}")
                await stream.send(f"OK mode {wanted}\r\n".encode())
                continue
            if not line.startswith(b"sendtx "):
                await stream.send(b"ERROR unknown command (expected sendtx or mode)\r\n")
                continue
            if not await self._sendtx(stream, line):
                return

    async def _sendtx(self, stream: SocketStream, line: bytes) -> bool:
        """Answer one sendtx line by mode; False when the connection must end."""
        self.lines.append(line)
        mode = self.mode
        self._bump()
        summary = _summary(line)
        if mode == "ok":
            try:
                tx = json.loads(line[len(b"sendtx ") :])
            except ValueError:
                self._event(f"sendtx {summary} -> ERROR invalid JSON")
                await stream.send(b"ERROR invalid JSON\r\n")
                return True
            digest = hashlib.sha256(line).hexdigest()
            self.acknowledged.append(tx)
            self._bump()
            self._event(f"sendtx {summary} -> SUCCESS {digest}")
            await stream.send(f"SUCCESS {digest}\r\n".encode())
            return True
        self._event(f"sendtx {summary} -> mode {mode}")
        if mode == "fail":
            await stream.send(b"ERROR mock Tau node told to fail\r\n")
            return True
        if mode == "close":
            await stream.send(b"SUCC")
            return False
        if mode == "long":
            await stream.send(b"SUCCESS " + b"x" * self.long_reply_bytes + b"\r\n")
            return True
        # hang: read and drop whatever comes until the client closes.
        try:
            while True:
                await stream.receive()
        except anyio.EndOfStream:
            return False


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def _summary(line: bytes) -> str:
    """A short description of a sendtx line (goal and log size when it is a commit)."""
    try:
        tx = json.loads(line[len(b"sendtx ") :])
        return f"{tx.get('type')} goal={tx.get('goal_id')} log_size={tx.get('log_size')}"
    except (ValueError, AttributeError):
        return f"{len(line)} bytes"
