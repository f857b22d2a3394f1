"""One peer's framed session over an authenticated channel, and its tasks.

A :class:`Connection` owns the :class:`~ian.p2p.session.Session` (sans-I/O framing and hello
rules), the channel from the transport, a bounded send queue, and the three tasks run by
:meth:`Connection.serve`:

- the **writer** sends queued frames (each within ``send_timeout``), then the goodbye;
- the **reader** feeds received bytes to the session and hands each event to the switch;
- the **pinger** pings a silent peer and closes an idle one.

:meth:`Connection.close` starts closing (idempotent): the queue is closed, waiting requests fail
with :class:`PeerNotConnectedError`, and within ``close_grace`` the goodbye is flushed and the
tasks are cancelled. Policy (what a message means, scoring, admission) is the switch's.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ian.p2p.errors import (
    P2PError,
    PeerNotConnectedError,
    SendBudgetExhaustedError,
    SendStalledError,
)
from ian.p2p.messages import Envelope, Message, Ping
from ian.p2p.session import Session, SessionEvent, SessionState
from ian.p2p.transport import SecureChannel

if TYPE_CHECKING:
    from ian.p2p.switch import P2PTuning

__all__ = ["Connection", "EventHandler", "PeerInfo", "PendingRequest", "SendBudget"]

#: What the reader hands each session event to, with the connection's task group (handler tasks
#: started there end with the connection).
EventHandler = Callable[[SessionEvent, anyio.abc.TaskGroup], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Snapshot of one connected peer. Times are epoch seconds; ``address`` is the peer's
    dialable ``tcp://host:port`` when known (dialled, or advertised in its hello)."""

    node_id: str
    address: str | None
    remote_ip: str
    direction: str
    connected_since: float
    last_seen: float
    height: int
    head_hash: str
    agent: str
    sequencer: bool
    protocol_version: int
    cert_fingerprint: str
    #: the chain id its hello named (None: it has not pinned a genesis yet)
    chain_id: str | None = None


class PendingRequest:
    """A request waiting for its reply: ``event`` is set with ``reply`` or ``error``."""

    __slots__ = ("error", "event", "reply")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reply: Envelope | None = None
        self.error: P2PError | None = None


class SendBudget:
    """Bytes of frames queued (or being written) to all peers, against a node-wide ``limit``.

    Connections :meth:`take` bytes when a frame is queued and :meth:`give` them back once it is
    written or the connection is gone; waiters are woken by :meth:`changed` on every give.
    ``used`` never exceeds ``limit`` except by one frame taken while ``used`` was 0 (a frame
    larger than the whole budget must still be sendable).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("send budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0  #: the largest ``used`` seen (for tests and benchmarks)
        self._changed = anyio.Event()

    def fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    def take(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def give(self, size: int) -> None:
        if size:
            self.used -= size
            self._changed.set()
            self._changed = anyio.Event()

    async def changed(self) -> None:
        """Return after the next :meth:`give`."""
        await self._changed.wait()


class Connection:
    """One connection's I/O state; created by the switch for each authenticated channel.

    Send accounting: ``queued_bytes`` counts the frames queued to this peer and the one being
    written, against ``tuning.send_queue_bytes`` and the node-wide ``budget``; they are given
    back when written, and all at once when the connection is released.
    """

    def __init__(
        self,
        channel: SecureChannel,
        session: Session,
        *,
        ip: str,
        address: str | None,
        tuning: P2PTuning,
        budget: SendBudget | None = None,
    ) -> None:
        self.budget = budget if budget is not None else SendBudget(tuning.send_budget_bytes)
        self.queued_bytes = 0
        self.peak_queued_bytes = 0  #: the largest ``queued_bytes`` seen
        #: When the last frame waiting for this peer's own budget started to wait (None: none)
        self.stalled_since: float | None = None
        #: Set when the connection was closed because the peer did not read (a frame waited
        #: ``send_stall_timeout`` for room, or one write took ``send_timeout``); the switch
        #: charges the peer for it once, when the connection is cleaned up.
        self.stall_error: SendStalledError | None = None
        self.stream = channel.stream
        self.session = session
        self.node_id = session.peer_node_id
        self.ip = ip
        self.address = address
        self.fingerprint = channel.peer.fingerprint_sha256
        self.tuning = tuning
        self.connected_since = time.time()
        self.last_seen = self.connected_since
        self.height = 0
        self.head_hash = "00" * 32
        self.agent = ""
        self.sequencer = False
        self.chain_id: str | None = None
        self.pending: dict[int, PendingRequest] = {}
        self.out_send: MemoryObjectSendStream[bytes]
        self.out_recv: MemoryObjectReceiveStream[bytes]
        self.out_send, self.out_recv = anyio.create_memory_object_stream[bytes](
            tuning.send_queue_frames
        )
        self.scope: anyio.CancelScope | None = None
        self.closed = anyio.Event()
        self.close_reason: str | None = None
        self.goodbye: bytes | None = None
        self.handler_slots = anyio.Semaphore(tuning.max_inflight_per_peer)
        self._type_slots: dict[str, anyio.Semaphore] = {}
        self.last_ping = -math.inf
        self.last_rate_charge = -math.inf

    def type_slots(self, msg_type: str, limit: int) -> anyio.Semaphore:
        """The handler slots of one message type for this peer (see ``P2PService.on``)."""
        slots = self._type_slots.get(msg_type)
        if slots is None:
            slots = self._type_slots[msg_type] = anyio.Semaphore(limit)
        return slots

    def info(self) -> PeerInfo:
        return PeerInfo(
            node_id=self.node_id,
            address=self.address,
            remote_ip=self.ip,
            direction=self.session.direction.value,
            connected_since=self.connected_since,
            last_seen=self.last_seen,
            height=self.height,
            head_hash=self.head_hash,
            agent=self.agent,
            sequencer=self.sequencer,
            protocol_version=(
                self.session.peer_hello.protocol_version if self.session.peer_hello else 0
            ),
            cert_fingerprint=self.fingerprint,
            chain_id=self.chain_id,
        )

    @property
    def open(self) -> bool:
        return self.close_reason is None

    # ------------------------------------------------------------------ sending

    def frame(self, message: Message, re: int | None = None) -> tuple[int, bytes]:
        """``(message id, frame)`` for ``message``; :class:`PeerNotConnectedError` once closing,
        :class:`P2PError` if it is larger than the frame limit."""
        if not self.open or self.session.state is not SessionState.OPEN:
            raise PeerNotConnectedError(f"connection to {self.node_id} is closing")
        try:
            return self.session.send(message, re=re)
        except ValueError as exc:  # larger than max_frame_bytes
            raise P2PError(f"cannot send {message.TYPE}: {exc}") from None

    def _fits_peer(self, size: int) -> bool:
        return self.queued_bytes == 0 or self.queued_bytes + size <= self.tuning.send_queue_bytes

    def _take(self, size: int) -> None:
        self.queued_bytes += size
        self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        self.budget.take(size)

    def _give(self, size: int) -> None:
        size = min(size, self.queued_bytes)
        self.queued_bytes -= size
        self.budget.give(size)

    def enqueue_nowait(self, frame: bytes) -> None:
        """Queue without waiting. Over this peer's frame or byte limit the peer cannot keep up:
        it is closed (:class:`PeerNotConnectedError`). Over the node-wide budget the frame is
        dropped for this peer only (:class:`SendBudgetExhaustedError`); the peer stays."""
        if not self.open:
            raise PeerNotConnectedError(f"connection to {self.node_id} is closing")
        size = len(frame)
        if not self._fits_peer(size):
            self.close("send queue full")
            raise PeerNotConnectedError(f"peer {self.node_id} is not keeping up")
        if not self.budget.fits(size):
            raise SendBudgetExhaustedError(
                f"node send budget of {self.budget.limit} bytes is full; frame to "
                f"{self.node_id} dropped"
            )
        try:
            self.out_send.send_nowait(frame)
        except anyio.WouldBlock:
            self.close("send queue full")
            raise PeerNotConnectedError(f"peer {self.node_id} is not keeping up") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise PeerNotConnectedError(f"connection to {self.node_id} is closing") from None
        self._take(size)

    async def enqueue(self, frame: bytes) -> None:
        """Queue, waiting while this peer's queue (frames or bytes) or the node-wide budget is
        full; :class:`PeerNotConnectedError` once closing. A frame that waits for this peer's
        own byte budget longer than ``tuning.send_stall_timeout`` closes the connection and
        raises :class:`SendStalledError` (the peer does not read; the caller charges it)."""
        size = len(frame)
        deadline: float | None = None
        while True:
            if not self.open:
                raise PeerNotConnectedError(f"connection to {self.node_id} is closing")
            own = self._fits_peer(size)
            if own and self.budget.fits(size):
                break
            if not own:
                now = anyio.current_time()
                if deadline is None:
                    deadline = now + self.tuning.send_stall_timeout
                    if self.stalled_since is None:
                        self.stalled_since = now
                if now >= deadline:
                    self.stall_error = SendStalledError(
                        f"peer {self.node_id} held {self.queued_bytes} queued bytes for "
                        f"{self.tuning.send_stall_timeout} s without reading"
                    )
                    self.close("send budget stalled")
                    raise self.stall_error
            with anyio.move_on_after(self.tuning.send_stall_timeout / 4):
                await self.budget.changed()
        self._take(size)
        try:
            await self.out_send.send(frame)
        except BaseException as exc:
            self._give(size)
            if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError):
                raise PeerNotConnectedError(f"connection to {self.node_id} is closing") from None
            raise

    async def send_direct(self, frame: bytes | None, timeout: float) -> None:  # noqa: ASYNC109
        """Send before the writer task exists (hello, refusal goodbye); bounded by ``timeout``."""
        if frame is None:
            return
        with anyio.move_on_after(timeout):
            await self.stream.send(frame)

    # ------------------------------------------------------------------ closing

    def close(self, reason: str, *, goodbye: bool = True) -> None:
        """Start closing (idempotent): queued frames and a goodbye are flushed within
        ``close_grace`` seconds, then the connection's tasks are cancelled."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        frame = self.session.close(reason)
        self.goodbye = frame if goodbye else None
        self.out_send.close()
        for pending in self.pending.values():
            pending.error = PeerNotConnectedError(f"peer {self.node_id} disconnected: {reason}")
            pending.event.set()
        if self.scope is not None:
            self.scope.deadline = min(
                self.scope.deadline, anyio.current_time() + self.tuning.close_grace
            )

    async def finish(self, farewell: str | None) -> None:
        """Close for good (after :meth:`serve` or a failed handshake): with ``farewell``, say
        goodbye unless one was exchanged already. Never raises; :meth:`release` follows."""
        if farewell is not None and self.close_reason is None:
            goodbye = self.session.close(farewell)
            self.close(farewell, goodbye=False)
            if goodbye is not None:
                with anyio.move_on_after(self.tuning.close_grace), contextlib.suppress(Exception):
                    await self.stream.send(goodbye)
        self.close("closed", goodbye=False)

    async def release(self) -> None:
        """Close the channel and set :attr:`closed`. Never raises."""
        with contextlib.suppress(Exception):
            await self.stream.aclose()
        self._give(self.queued_bytes)  # frames never written
        self.closed.set()

    # ------------------------------------------------------------------ tasks

    async def serve(self, on_event: EventHandler, leftover: list[SessionEvent]) -> None:
        """Run writer, pinger and reader until the connection is closed. ``leftover``: events
        that arrived with the peer's hello, handled first."""
        async with anyio.create_task_group() as tg:
            self.scope = tg.cancel_scope
            if self.close_reason is not None:  # closed while registering
                self.scope.deadline = anyio.current_time() + self.tuning.close_grace
            tg.start_soon(self._writer)
            tg.start_soon(self._pinger)
            tg.start_soon(self._reader, on_event, leftover, tg)

    async def _writer(self) -> None:
        try:
            async with self.out_recv:
                async for frame in self.out_recv:
                    try:
                        with anyio.fail_after(self.tuning.send_timeout):
                            await self.stream.send(frame)
                    finally:
                        self._give(len(frame))
                    if self.queued_bytes == 0:
                        self.stalled_since = None
            if self.goodbye is not None:
                with anyio.move_on_after(self.tuning.close_grace):
                    await self.stream.send(self.goodbye)
        except TimeoutError:
            if self.open:
                self.stall_error = SendStalledError(
                    f"peer {self.node_id} read nothing for {self.tuning.send_timeout} s"
                )
            self.close("send failed: TimeoutError", goodbye=False)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            self.close(f"send failed: {type(e).__name__}", goodbye=False)
        finally:
            # The writer ends only after close(): the connection is over.
            assert self.scope is not None
            self.scope.cancel()

    async def _reader(
        self, on_event: EventHandler, leftover: list[SessionEvent], tg: anyio.abc.TaskGroup
    ) -> None:
        try:
            for event in leftover:
                await on_event(event, tg)
            while self.open:
                data = await self.stream.receive()
                for event in self.session.receive_data(data, anyio.current_time()):
                    await on_event(event, tg)
        except anyio.EndOfStream:
            self.close("connection closed by peer", goodbye=False)
        except anyio.BrokenResourceError as exc:
            self.close(f"connection lost: {exc}", goodbye=False)

    async def _pinger(self) -> None:
        t = self.tuning
        while self.open:
            now = anyio.current_time()
            last = self.session.last_received
            state = self.session.liveness(
                now, ping_interval=t.ping_interval, idle_timeout=t.idle_timeout
            )
            if state == "dead":
                self.close("idle timeout")
                return
            if state == "ping" and self.last_ping < last:  # one ping per silence
                self.last_ping = now
                with contextlib.suppress(P2PError):
                    self.enqueue_nowait(self.frame(Ping(nonce=random.getrandbits(63)))[1])
            wake = last + (t.idle_timeout if self.last_ping >= last else t.ping_interval)
            await anyio.sleep(max(0.01, wake - now))
