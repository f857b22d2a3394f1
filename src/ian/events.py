"""The node's event bus: what happened, fanned out to bounded per-subscriber queues.

Publishers (sequencer outcomes, applied blocks, peers, sync, the Tau bridge) call
:meth:`EventBus.publish`; readers (the WebSocket stream on ``ws_port``, see
:mod:`ian.api.ws`) iterate a :class:`Subscription`. Every event is an envelope::

    {"topic": "block", "type": "applied", "ts": <epoch s, float>, "seq": <int>, "data": {...}}

``seq`` increases by one per published event on this bus (whatever the topic), so a client
filtering topics sees gaps but never a reordering. Topics and their types:

=============== ==================================== ===============================================
topic           types                                data
=============== ==================================== ===============================================
``contribution`` ``accepted``, ``rejected``           goal_id, log_index, score, rejection_type,
                                                     reason, contribution_hash, pack_hash,
                                                     contributor_id, source (``sequencer`` or
                                                     ``block``: a follower learns accepted ones from
                                                     blocks and has no score for them). Never the
                                                     pack parameters.
``block``       ``applied``                          height, hash, parent_hash, timestamp_ms,
                                                     entries (count), goals (goal_id → log_size,
                                                     log_root, leaderboard_size, leaderboard_root)
``peer``        ``connected``, ``disconnected``,     node_id, address, reason
                ``banned``
``sync``        ``state``, ``diverged``,             state/previous; height, rolled_back_to,
                ``repaired``                         blocks_removed
``tau``         ``breaker``, ``commit``,             state/previous; goal_id, seq, log_size,
                ``commit_failed``                    height, commit_hash, error
=============== ==================================== ===============================================

Back-pressure: each subscription holds at most ``queue_size`` events. A subscriber that falls
that far behind is *dropped* — closed with :attr:`Subscription.closed_reason` set — rather than
buffered without bound; publishing never blocks and never waits for a reader.

Threading: :meth:`EventBus.publish` must be called on the event loop's thread (it is cheap and
does no I/O). Code running in a worker thread hops first, e.g.
``anyio.from_thread.run_sync(bus.publish, topic, type_, data)``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ian.chain.blocks import Block
    from ian.chain.state import Outcome

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "TOPICS",
    "Event",
    "EventBus",
    "Publish",
    "Subscription",
    "block_contributions",
    "block_data",
    "outcome_event",
    "publish_block_contributions",
]

log = logging.getLogger("ian.events")

TOPICS: frozenset[str] = frozenset({"contribution", "block", "peer", "sync", "tau"})
DEFAULT_QUEUE_SIZE = 1024

Publish = Callable[[str, str, dict[str, Any]], None]
"""``publish(topic, type, data)``: what services are handed instead of the whole bus."""


@dataclass(frozen=True, slots=True)
class Event:
    """One published event; :attr:`json` is encoded once and shared by every subscriber."""

    topic: str
    type: str
    ts: float
    seq: int
    data: dict[str, Any]
    json: str = field(default="", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "type": self.type,
            "ts": self.ts,
            "seq": self.seq,
            "data": self.data,
        }


class Subscription:
    """An async iterator over the events of some topics, fed by :meth:`EventBus.publish`.

    Iteration ends when the subscription is closed: by :meth:`close` (or leaving ``async with``),
    by :meth:`EventBus.close`, or because the subscriber fell ``queue_size`` events behind. In
    the last two cases :attr:`closed_reason` says why and pending events are discarded.
    """

    def __init__(self, bus: EventBus, topics: frozenset[str], queue_size: int) -> None:
        self.topics = topics
        self.closed_reason: str | None = None
        self._bus = bus
        self._queue: collections.deque[Event] = collections.deque()
        self._queue_size = queue_size
        self._closed = False
        # Created lazily on the loop: one for the (single) reader, one for wait_closed().
        self._wakeup: anyio.Event | None = None
        self._closed_event: anyio.Event | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _offer(self, event: Event) -> bool:
        """Queue ``event``; False (nothing queued) when the queue is full."""
        if len(self._queue) >= self._queue_size:
            return False
        self._queue.append(event)
        self._wake()
        return True

    def _end(self, reason: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.closed_reason = reason
        if reason is not None:
            self._queue.clear()
        self._wake()
        if self._closed_event is not None:
            self._closed_event.set()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def close(self) -> None:
        """Unsubscribe (idempotent); events already queued can still be read."""
        self._bus._remove(self)
        self._end(None)

    async def wait_closed(self) -> None:
        """Return once the subscription is closed (for whatever reason)."""
        if self._closed:
            return
        if self._closed_event is None:
            self._closed_event = anyio.Event()
        await self._closed_event.wait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of events to subscriptions; see the module docstring for the contract."""

    def __init__(
        self, *, queue_size: int = DEFAULT_QUEUE_SIZE, clock: Callable[[], float] = time.time
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.queue_size = queue_size
        self._clock = clock
        self._seq = 0
        self._subs: list[Subscription] = []
        self._closed_reason: str | None = None
        self.dropped = 0  # subscribers dropped for being too slow, since start

    @property
    def seq(self) -> int:
        """The ``seq`` of the last published event (0 before any)."""
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(self, topics: Iterable[str] = TOPICS) -> Subscription:
        """A new subscription to ``topics`` (all when empty). Raises ValueError naming unknown
        topics; a subscription to a closed bus is closed at once."""
        wanted = frozenset(topics) or TOPICS
        unknown = wanted - TOPICS
        if unknown:
            raise ValueError(
                f"unknown topic(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOPICS))}"
            )
        sub = Subscription(self, wanted, self.queue_size)
        if self._closed_reason is not None:
            sub._end(self._closed_reason)
        else:
            self._subs.append(sub)
        return sub

    def wants(self, topic: str) -> bool:
        """Whether a subscriber wants ``topic`` now: if not, its events need not be built (a
        follower applies thousands of entries a second), only counted with :meth:`skip`."""
        return any(topic in sub.topics for sub in self._subs)

    def skip(self, count: int) -> None:
        """Number ``count`` events that nobody wanted as if they were published, so ``seq``
        still counts every event whether it was built or not."""
        self._seq += count

    def publish(self, topic: str, type_: str, data: dict[str, Any]) -> None:
        """Stamp and deliver one event; never blocks. Call on the event loop's thread.

        ``data`` must be JSON-serialisable and is not copied: do not mutate it afterwards. It is
        encoded once, and only when some subscriber wants ``topic``. Subscribers whose queue is
        full are dropped (closed with a reason).
        """
        if topic not in TOPICS:
            raise ValueError(f"unknown topic {topic!r}")
        self._seq += 1
        targets = [sub for sub in self._subs if topic in sub.topics]
        if not targets:
            return
        ts = self._clock()
        doc = {"topic": topic, "type": type_, "ts": ts, "seq": self._seq, "data": data}
        event = Event(topic, type_, ts, self._seq, data, json.dumps(doc, separators=(",", ":")))
        slow = [sub for sub in targets if not sub._offer(event)]
        for sub in slow:
            self._remove(sub)
            self.dropped += 1
            sub._end(f"too slow: {self.queue_size} events queued and unread")
            log.info("dropped a slow event subscriber (%d events behind)", self.queue_size)

    def close(self, reason: str = "the node is shutting down") -> None:
        """End every subscription with ``reason``; later publishes reach nobody."""
        self._closed_reason = reason
        subs, self._subs = self._subs, []
        for sub in subs:
            sub._end(reason)

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)


# -- translating node facts into event data (pure) ----------------------------------------------


def outcome_event(outcome: Outcome) -> tuple[str, dict[str, Any]]:
    """(type, data) of a ``contribution`` event for one of the sequencer's decisions."""
    return ("accepted" if outcome.accepted else "rejected"), {
        "goal_id": outcome.goal_id,
        "accepted": outcome.accepted,
        "log_index": outcome.log_index,
        "score": outcome.score,
        "rejection_type": outcome.rejection_type,
        "reason": outcome.reason[:300],
        "contribution_hash": (
            outcome.contribution_hash.hex() if outcome.contribution_hash is not None else None
        ),
        "source": "sequencer",
    }


def block_data(block: Block) -> dict[str, Any]:
    """Data of a ``block``/``applied`` event (no entry contents)."""
    h = block.header
    return {
        "height": h.height,
        "hash": block.hash.hex(),
        "parent_hash": h.parent_hash.hex(),
        "timestamp_ms": h.timestamp_ms,
        "entries": len(block.entries),
        "goals": {
            gid: {
                "log_size": r.log_size,
                "log_root": r.log_root.hex(),
                "leaderboard_size": r.leaderboard_size,
                "leaderboard_root": r.leaderboard_root.hex(),
            }
            for gid, r in sorted(h.goals.items())
        },
    }


def publish_block_contributions(bus: EventBus, block: Block) -> None:
    """Publish the ``contribution``/``accepted`` events of a block received from the network
    (:func:`block_contributions`). When no subscriber wants them, none is built, only counted
    (:meth:`EventBus.skip`): a catching-up follower applies thousands of entries a second."""
    if not bus.wants("contribution"):
        bus.skip(len(block.entries))
        return
    for data in block_contributions(block):
        bus.publish("contribution", "accepted", data)


def block_contributions(block: Block) -> list[dict[str, Any]]:
    """``contribution``/``accepted`` data for each entry of a block received from the network.

    A follower re-executes entries but does not keep their outcomes, so ``score`` and
    ``contribution_hash`` are None; ``log_index`` follows from the goal's log size after the
    block (its entries are the last ones appended, in block order).
    """
    per_goal: dict[str, int] = {}
    for c in block.entries:
        per_goal[c.goal_id] = per_goal.get(c.goal_id, 0) + 1
    next_index = {
        gid: block.header.goals[gid].log_size - n
        for gid, n in per_goal.items()
        if gid in block.header.goals
    }
    out: list[dict[str, Any]] = []
    for c in block.entries:
        index = next_index.get(c.goal_id)
        if index is not None:
            next_index[c.goal_id] = index + 1
        out.append(
            {
                "goal_id": c.goal_id,
                "accepted": True,
                "log_index": index,
                "score": None,
                "rejection_type": None,
                "reason": "",
                "contribution_hash": None,
                "pack_hash": c.pack_hash.hex(),
                "contributor_id": c.contributor_id,
                "height": block.height,
                "source": "block",
            }
        )
    return out
