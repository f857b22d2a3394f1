"""Runs the sans-I/O consensus core (:mod:`ian.consensus`) on a node: the I/O edge around it.

One task feeds the core its events, one at a time — ticks from the clock, ``consensus`` P2P
messages from authenticated peers, client proposals, and ``Persisted`` after each append — and
performs the actions it returns, in order. Durable actions go to the :class:`ConsensusLog`
(fsynced) before any later action of the same step, so a vote or an ack never leaves the node
before what it promises is on disk. Sends never wait: each peer has a small bounded outbox, and
a message that does not fit is dropped (the core retries; Raft tolerates loss). ``Apply``
actions hand each committed block, once and in order, to the ``apply`` callback — consecutive
ones together, so a catching-up node writes many blocks in one transaction — then record the
applied height; a proposal is answered only after its block has been applied here. An ``apply`` that
raises stops the driver: a committed block this node cannot apply needs an operator, not a retry.

Authorities exchange every consensus message; a non-authority (a learner: the node's followers)
may only answer the leader's certified blocks (``AppendResponse`` with ``learner``), and only
while the core counts it as a learner (:meth:`ConsensusDriver.set_learners`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from msgspec import Raw

from ian.consensus import (
    Action,
    Answer,
    AppendBlocks,
    AppendLog,
    AppendResponse,
    Apply,
    AuthorityChange,
    Block,
    CertifiedBlocks,
    ConsensusCore,
    Durable,
    DurableState,
    Event,
    ForkDetected,
    ForkEvidence,
    Outcome,
    Persisted,
    Propose,
    ProposeChange,
    Received,
    Restart,
    Role,
    RoleChanged,
    Send,
    Tick,
    Unavailable,
)
from ian.consensus import Message as ConsensusMessage
from ian.consensus.codec import decode_json, encode_json
from ian.consensus.errors import CodecError
from ian.errors import StoreError, UnavailableError
from ian.p2p.connection import PeerInfo
from ian.p2p.errors import InvalidMessage, P2PError
from ian.p2p.messages import Consensus
from ian.p2p.switch import P2PService
from ian.storage.consensus_log import ConsensusLog

__all__ = ["ConsensusDriver", "ConsensusView"]

log = logging.getLogger("ian.consensus")

INBOX_EVENTS = 1024  # events waiting for the core; a message beyond it is dropped
#: bytes of received block payloads waiting for the core (decoded blocks are new objects);
#: a message that would go over it is dropped. Outboxes hold references to the core's own
#: blocks (no copies), encoded one message at a time, so they need no byte bound of their own.
INBOX_BYTES = 64 * 1024 * 1024
OUTBOX_MESSAGES = 64  # messages waiting for one peer; beyond it they are dropped
MARK_INTERVAL_S = 1.0  # the applied mark is saved at least this often while blocks apply


@dataclass(frozen=True, slots=True)
class ConsensusView:
    """What operators see: role, term and the proved leader (None: unknown)."""

    role: Role
    term: int
    leader: str | None
    commit_height: int
    forked: bool


def _answered(outcome: Outcome) -> Callable[[], Awaitable[Outcome]]:
    async def answer() -> Outcome:
        return outcome

    return answer


class _Waiter:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: Outcome | None = None


class ConsensusDriver:
    """Drives ``core`` with the node's clock, switch and consensus log."""

    def __init__(
        self,
        *,
        core: ConsensusCore,
        log_store: ConsensusLog,
        state: DurableState,
        switch: P2PService,
        apply: Callable[[list[Block]], Awaitable[None]],
        tick_interval: float = 0.05,
        on_fork: Callable[[ForkEvidence], None] | None = None,
    ) -> None:
        self.core = core
        self.log_store = log_store
        self._state = state  # what the log held at start-up (fed to the core as a Restart)
        self._last_leader: str | None = None
        self.switch = switch
        self._apply_blocks = apply
        self._on_fork = on_fork
        self.tick_interval = tick_interval
        self._events_in: MemoryObjectSendStream[Event]
        self._events_out: MemoryObjectReceiveStream[Event]
        self._events_in, self._events_out = anyio.create_memory_object_stream[Event](INBOX_EVENTS)
        self._outboxes: dict[str, MemoryObjectSendStream[ConsensusMessage]] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._ids = itertools.count(1)
        self.inbox_bytes = 0  # see INBOX_BYTES
        self._tg: TaskGroup | None = None
        self.dropped_messages = 0
        self.leader_changes = 0
        self.elections = 0
        self._stepped = anyio.Event()  # set (and replaced) after every step
        self._running = False
        self._connected: frozenset[str] = frozenset()
        self._members = frozenset(core.authorities())
        #: the height through which ``apply`` has returned (the core counts a block applied
        #: when it hands it out, before the callback has run)
        self.applied_through = core.applied_height
        self._unsaved_mark: int | None = None  # applied, not yet saved in the log (_apply)
        self._mark_saved_at = 0.0
        switch.on(Consensus.TYPE, self._on_message, inline=True)

    # ------------------------------------------------------------------ views

    def view(self) -> ConsensusView:
        c = self.core
        return ConsensusView(c.role, c.term, c.leader_id, c.commit_height, c.forked)

    def ready_to_propose(self) -> bool:
        """This node leads and has applied its whole log: a block built on the applied state
        now is built on the state every node will have when it applies that block."""
        c = self.core
        return c.role is Role.LEADER and not c.forked and self.applied_through == c.last_height

    async def wait_step(self) -> bool:
        """Wait for the next step of the core; False at once when the driver is not running."""
        if not self._running:
            return False
        await self._stepped.wait()
        return self._running

    def set_learners(self, connected: set[str]) -> None:
        """The node's connected peers: the non-authorities among them are learners, which a
        leader sends certified blocks (recomputed when the authority set changes, so a removed
        authority learns of its removal at once)."""
        self._connected = frozenset(connected)
        members = self.core.authorities().keys()
        learners = self._connected - members
        if learners != self.core.learners:
            self.core.set_learners(learners)
        # A gone follower's outbox and delivery task go with it (authorities' stay: the core
        # keeps sending to them, and they come back).
        for gone in [p for p in self._outboxes if p not in self._connected and p not in members]:
            self._outboxes.pop(gone).close()

    # ------------------------------------------------------------------ inputs

    async def propose(self, payload: bytes) -> Outcome:
        """Propose ``payload``; returns once it is committed *and applied here*, or refused
        (:class:`~ian.consensus.Redirect`, :class:`~ian.consensus.Unavailable`, ...)."""
        return await self.enqueue_proposal(payload)()

    def enqueue_proposal(self, payload: bytes) -> Callable[[], Awaitable[Outcome]]:
        """:meth:`propose` in two steps: queued now (proposals reach the log in the order they
        are queued), answered by awaiting the returned function. Raises
        :class:`~ian.errors.UnavailableError` when the queue is full."""
        return self._enqueue(lambda request_id: Propose(request_id, payload))

    async def propose_change(self, change: AuthorityChange) -> Outcome:
        """Add or remove one authority (leader only); answered like :meth:`propose`."""
        return await self._enqueue(lambda request_id: ProposeChange(request_id, change))()

    def _enqueue(self, make: Callable[[str], Event]) -> Callable[[], Awaitable[Outcome]]:
        if not self._running:
            return _answered(Unavailable(1.0))
        request_id = f"p{next(self._ids)}"
        waiter = self._waiters[request_id] = _Waiter()
        try:
            self._events_in.send_nowait(make(request_id))
        except anyio.WouldBlock:
            del self._waiters[request_id]
            raise UnavailableError("consensus is busy", retry_after=1.0) from None

        async def answer() -> Outcome:
            await waiter.done.wait()
            assert waiter.outcome is not None
            return waiter.outcome

        return answer

    async def _on_message(self, peer: PeerInfo, message: Consensus) -> None:
        # Authorities take part; a learner only answers certified blocks: a stranger cannot
        # fill the inbox that the authorities' messages need.
        authority = peer.node_id in self.core.authorities()
        if not authority and peer.node_id not in self.core.learners:
            raise InvalidMessage("consensus messages are for authorities only")
        try:
            decoded = decode_json(message.msg)
        except CodecError as exc:
            raise InvalidMessage(str(exc)) from None
        if not authority and not (isinstance(decoded, AppendResponse) and decoded.learner):
            raise InvalidMessage("a learner may only answer certified blocks")
        size = _payload_bytes(decoded)
        if self.inbox_bytes + size > INBOX_BYTES:
            self.dropped_messages += 1
            return
        try:
            self._events_in.send_nowait(Received(peer.node_id, decoded))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.dropped_messages += 1  # full, or the driver has stopped
            return
        self.inbox_bytes += size

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                # Committed blocks not yet applied before a crash are applied first.
                await self._perform(self.core.step(Restart(self._state, anyio.current_time())))
                self._running = True
                tg.start_soon(self._ticker)
                task_status.started()
                async with self._events_out:
                    async for event in self._events_out:
                        if isinstance(event, Received):
                            self.inbox_bytes -= _payload_bytes(event.message)
                        await self._step(event)
        finally:
            # Stopped (shutting down, or an apply failed): nobody waits for a step any more.
            self._running = False
            if self._unsaved_mark is not None:
                with contextlib.suppress(StoreError):  # a lagging mark costs a re-apply only
                    self.log_store.set_applied(self._unsaved_mark)
            for waiter in self._waiters.values():
                waiter.outcome = Unavailable(1.0)
                waiter.done.set()
            self._waiters.clear()
            self._stepped.set()

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(self.tick_interval)
            # The core is behind when the inbox is full: the next tick carries the time anyway.
            with contextlib.suppress(anyio.WouldBlock):
                self._events_in.send_nowait(Tick(anyio.current_time()))

    async def _step(self, event: Event) -> None:
        await self._perform(self.core.step(event))
        members = frozenset(self.core.authorities())
        if members != self._members:
            self._members = members
            self.set_learners(set(self._connected))
        self._stepped.set()
        self._stepped = anyio.Event()

    async def _perform(self, actions: list[Action]) -> None:
        persisted: list[Persisted] = []
        applying: list[Block] = []
        durable: list[Durable] = []  # made durable together, in order, in one thread hop
        for action in actions:
            if isinstance(action, Durable):
                if applying:
                    await self._apply(applying)
                    applying = []
                durable.append(action)
                if isinstance(action, AppendLog) and action.blocks:
                    last = action.blocks[-1]
                    persisted.append(Persisted(last.height, last.hash))
                continue
            if durable:  # what follows (a send, an answer, an apply) may rely on it
                await self._make_durable(durable)
                durable = []
            if isinstance(action, Apply):
                applying.append(action.block)
                continue
            if applying:
                await self._apply(applying)
                applying = []
            if isinstance(action, Send):
                self._send(action.to, action.message)
            elif isinstance(action, RoleChanged):
                self._on_role(action)
            elif isinstance(action, ForkDetected):
                log.critical("fork evidence at height %d: applying stopped", action.evidence.height)
                if self._on_fork is not None:
                    self._on_fork(action.evidence)
            elif isinstance(action, Answer):
                waiter = self._waiters.pop(action.request_id, None)
                if waiter is not None:
                    waiter.outcome = action.outcome
                    waiter.done.set()
        if durable:
            await self._make_durable(durable)
        if applying:
            await self._apply(applying)
        for event in persisted:
            await self._step(event)

    async def _make_durable(self, actions: list[Durable]) -> None:
        """Each action durable in order (one thread hop for all); the applied mark goes along
        when it moved (see :meth:`_apply`)."""
        learner = self.core.role is Role.LEARNER
        mark, self._unsaved_mark = self._unsaved_mark, None

        def perform() -> None:
            for action in actions:
                self.log_store.perform(action, learner=learner)
            if mark is not None:
                self.log_store.set_applied(mark)

        await anyio.to_thread.run_sync(perform)
        if mark is not None:
            self._mark_saved_at = anyio.current_time()

    async def _apply(self, blocks: list[Block]) -> None:
        await self._apply_blocks(blocks)
        self.applied_through = blocks[-1].height
        # The applied mark is saved with the next durable action, or here once a second when
        # none comes: after a crash, blocks above a lagging mark are applied again, which the
        # chain recognises by hash (ChainBridge.apply), so it costs time, never correctness.
        self._unsaved_mark = self.applied_through
        if anyio.current_time() - self._mark_saved_at >= MARK_INTERVAL_S:
            await self._save_mark()

    async def _save_mark(self) -> None:
        mark, self._unsaved_mark = self._unsaved_mark, None
        if mark is not None:
            await anyio.to_thread.run_sync(self.log_store.set_applied, mark)
            self._mark_saved_at = anyio.current_time()

    def _on_role(self, change: RoleChanged) -> None:
        if change.role is Role.CANDIDATE:
            self.elections += 1
        if change.leader is not None and change.leader != self._last_leader:
            self.leader_changes += 1
            self._last_leader = change.leader
        log.info("consensus: %s in term %d, leader %s", change.role, change.term, change.leader)

    # ------------------------------------------------------------------ sending

    def _send(self, to: str, message: ConsensusMessage) -> None:
        outbox = self._outboxes.get(to)
        if outbox is None:
            send, receive = anyio.create_memory_object_stream[ConsensusMessage](OUTBOX_MESSAGES)
            self._outboxes[to] = outbox = send
            assert self._tg is not None
            self._tg.start_soon(self._deliver, to, receive)
        try:
            outbox.send_nowait(message)
        except anyio.WouldBlock:
            self.dropped_messages += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # Its delivery task ended (shutting down): drop this message, start afresh next time.
            self.dropped_messages += 1
            del self._outboxes[to]

    async def _deliver(self, to: str, outbox: MemoryObjectReceiveStream[ConsensusMessage]) -> None:
        async with outbox:
            async for message in outbox:
                try:
                    await self.switch.send(to, Consensus(msg=Raw(encode_json(message))))
                except P2PError:
                    self.dropped_messages += 1  # not connected now: the core sends again


def _payload_bytes(message: ConsensusMessage) -> int:
    """What a received message's blocks hold in payload bytes (the part that can be large)."""
    blocks = message.blocks if isinstance(message, AppendBlocks | CertifiedBlocks) else ()
    return sum(len(b.payload) for b in blocks)
