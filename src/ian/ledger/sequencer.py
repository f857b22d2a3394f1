"""The sequencer: orders accepted contributions into signed, durable blocks (group commit).

Submissions queue up; one loop takes everything waiting (up to ``max_entries``), evaluates and
applies it in a worker thread (off the event loop), writes one block in one transaction, and only
then answers every submitter. Under light load a block holds one contribution and answers within
one fsync; under heavy load blocks grow and the fsync cost is shared, and the next block waits
briefly (``linger``) for as many submissions as the last one held before it is cut.

With an evaluation pool of several workers (:mod:`ian.ledger.evaluation_pool`) a batch is
evaluated first, in the workers, then sealed; and the batch behind it, when submissions are
waiting, is taken and sent to the workers before the current one is sealed, so its evaluation
overlaps the current block's building and fsync. Evaluation needs no chain state, so the blocks are
the same as without a pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ian.chain import blocks
from ian.chain.blocks import Block, BlockHeader
from ian.chain.contributions import Contribution
from ian.chain.evaluation import BatchEvaluator, Evaluation, evaluate_batch
from ian.chain.state import ChainState, Outcome, execute
from ian.errors import IanError, UnavailableError
from ian.identity import Identity
from ian.ledger.evaluation_pool import BatchEvaluation, EvaluationPool
from ian.storage.store import NewEntry, Store

if TYPE_CHECKING:
    from ian.chain.state import GoalState

log = logging.getLogger("ian.ledger.sequencer")


#: called on the event loop with a contribution's outcome, or the error that stopped it
OnDone = Callable[[Outcome | None, BaseException | None], None]


class _Pending:
    __slots__ = ("contribution", "done", "error", "on_done", "outcome", "size")

    def __init__(self, contribution: Contribution, on_done: OnDone | None = None) -> None:
        self.contribution = contribution
        self.size = contribution.wire_size()  # bytes it will take in a block on the wire
        #: set when answered (for submit); None when ``on_done`` is told instead (enqueue)
        self.done = anyio.Event() if on_done is None else None
        self.on_done = on_done
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None

    def finish(self, outcome: Outcome | None, error: BaseException | None = None) -> None:
        self.outcome, self.error = outcome, error
        if self.done is not None:
            self.done.set()
            return
        assert self.on_done is not None
        try:
            self.on_done(outcome, error)
        except Exception:
            log.exception("answering a contribution failed")


class _Evaluating:
    """A batch's evaluation running in the pool's workers, duplicates left out
    (:func:`evaluate_new`): those found in the store (``stored``) when the chain's head was
    ``head``, and those repeated in the batch."""

    __slots__ = ("_evaluation", "_sources", "head", "stored")

    def __init__(
        self,
        sources: list[int],
        evaluation: BatchEvaluation | None,
        stored: dict[str, set[bytes]],
        head: bytes,
    ) -> None:
        self._sources = sources
        self._evaluation = evaluation
        self.stored = stored
        self.head = head

    def result(self) -> list[Evaluation | None]:
        """One evaluation per contribution of the batch (may raise EvaluationError)."""
        evaluated = self._evaluation.result() if self._evaluation is not None else []
        return _spread(self._sources, evaluated)

    def stored_now(self, head: bytes, last: Block | None) -> dict[str, set[bytes]] | None:
        """``stored`` as it is now that the head is ``head``: the same if no block was written
        since; with the packs of ``last`` if it is the one block written since; else None
        (unknown: look again)."""
        if head == self.head:
            return self.stored
        if last is None or last.hash != head or last.header.parent_hash != self.head:
            return None
        now = {g: set(packs) for g, packs in self.stored.items()}
        for c in last.entries:
            if c.goal_id in now:
                now[c.goal_id].add(c.pack_hash)
        return now


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: list[Outcome]
    block: Block | None


def stored_packs(
    store: Store, contributions: Sequence[Contribution], *, writer: bool = True
) -> dict[str, set[bytes]]:
    """The packs of ``contributions`` already accepted in ``store``, by goal (every goal of the
    batch is a key): one batched query per goal of the batch, usually one.

    ``writer=True`` (the writer connection) only from the thread that writes the blocks."""
    by_goal: dict[str, list[bytes]] = {}
    for c in contributions:
        by_goal.setdefault(c.goal_id, []).append(c.pack_hash)
    return {g: store.has_packs(g, hs, writer=writer) for g, hs in by_goal.items()}


def _to_evaluate(
    contributions: Sequence[Contribution], known: Mapping[str, set[bytes]]
) -> tuple[list[int], list[Contribution]]:
    """For each contribution, where its evaluation comes from: its own index (evaluate it), -1
    (a pack in ``known``: a duplicate, not evaluated), or the index of the first contribution
    of the same pack earlier in the batch (not evaluated again: the same pack evaluates the
    same, and if that one is accepted this one is a duplicate); and the contributions to
    evaluate, in order."""
    first: dict[tuple[str, bytes], int] = {}
    sources: list[int] = []
    for i, c in enumerate(contributions):
        if c.pack_hash in known.get(c.goal_id, ()):
            sources.append(-1)
        else:
            sources.append(first.setdefault((c.goal_id, c.pack_hash), i))
    return sources, [c for i, c in enumerate(contributions) if sources[i] == i]


def _spread(
    sources: Sequence[int], evaluated: Sequence[Evaluation | None]
) -> list[Evaluation | None]:
    """One evaluation per contribution from those of the evaluated ones (see
    :func:`_to_evaluate`)."""
    it = iter(evaluated)
    out: list[Evaluation | None] = []
    for i, source in enumerate(sources):
        if source == i:
            out.append(next(it))
        else:
            out.append(None if source < 0 else out[source])
    return out


def evaluate_new(
    goals: Mapping[str, GoalState],
    contributions: Sequence[Contribution],
    known: Mapping[str, set[bytes]],
    evaluator: BatchEvaluator | None = None,
) -> list[Evaluation | None]:
    """:func:`~ian.chain.evaluation.evaluate_batch` for what can be accepted only: a
    contribution whose pack is in ``known`` (already accepted, by goal) gets None, one whose
    pack came earlier in the batch gets that one's evaluation, the rest are evaluated.

    :func:`build_block` decides duplicates before it looks at an evaluation, and evaluates
    in-line a contribution that is not one and got None, so the block is the same as with
    :func:`~ian.chain.evaluation.evaluate_batch` even if ``known`` is out of date."""
    sources, todo = _to_evaluate(contributions, known)
    return _spread(sources, evaluate_batch(goals, todo, evaluator) if todo else [])


def build_block(
    state: ChainState,
    identity: Identity,
    contributions: list[Contribution],
    *,
    store: Store | None = None,
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    parent: Block | None = None,
    unstored_packs: dict[str, set[bytes]] | None = None,
    evaluations: Sequence[Evaluation | None] | None = None,
    stored: Mapping[str, set[bytes]] | None = None,
) -> tuple[list[Outcome], Block | None, list[NewEntry]]:
    """Decide every contribution and, if any is accepted, make the signed block for them.

    ``evaluations`` (one per contribution, from :func:`ian.chain.evaluation.evaluate_batch`,
    e.g. made in a pool, or :func:`evaluate_new`) are used instead of evaluating here; the
    block is the same. A None among them is evaluated here.
    Mutates ``state`` (call ``state.begin()`` first so the caller can roll back).
    Duplicates of already-accepted packs (in ``store``, in ``unstored_packs`` or earlier in
    this batch) are refused. ``stored``: :func:`stored_packs` of these contributions in
    ``store``, looked up just before on this thread (``store`` is then not queried again).
    The block follows the state's head, or ``parent`` when given (a block built but not yet
    stored, whose changes ``state`` holds).
    """
    if evaluations is not None and len(evaluations) != len(contributions):
        raise ValueError("one evaluation per contribution is needed")
    outcomes: list[Outcome] = []
    accepted: list[NewEntry] = []
    known: dict[str, set[bytes]] = {}
    if stored is not None:
        known = {g: set(packs) for g, packs in stored.items()}
    elif store is not None:
        known = stored_packs(store, contributions)
    for gid, packs in (unstored_packs or {}).items():
        known[gid] = known.get(gid, set()) | packs
    for i, c in enumerate(contributions):
        seen = known.setdefault(c.goal_id, set())
        if c.pack_hash in seen:
            outcomes.append(
                Outcome(
                    accepted=False,
                    goal_id=c.goal_id,
                    reason=f"agent pack {c.pack_hash.hex()} was already accepted for {c.goal_id}",
                    rejection_type="duplicate",
                )
            )
            continue
        outcome = execute(state, c, evaluations[i] if evaluations is not None else None)
        outcomes.append(outcome)
        if outcome.accepted:
            seen.add(c.pack_hash)
            accepted.append(NewEntry.accepted(c, outcome))
    if not accepted:
        return outcomes, None, []
    if parent is None:
        height, parent_hash, parent_ms = state.height, state.head_hash, state.head_timestamp_ms
    else:
        height, parent_hash = parent.height, parent.hash
        parent_ms = parent.header.timestamp_ms
    header = BlockHeader(
        height=height + 1,
        parent_hash=parent_hash,
        timestamp_ms=max(now_ms(), parent_ms),
        sequencer=identity.node_id,
        sequencer_key=identity.public_key,
        entries_hash=blocks.entries_hash([e.contribution_hash for e in accepted]),
        goals={gid: state.goals[gid].roots() for gid in state.touched()},
    )
    block_hash = header.hash()
    block = Block(
        header=header,
        hash=block_hash,
        signature=identity.sign(block_hash),
        entries=tuple(e.contribution for e in accepted),
    )
    return outcomes, block, accepted


def seal_block(
    state: ChainState,
    store: Store,
    identity: Identity,
    contributions: list[Contribution],
    *,
    evaluator: BatchEvaluator | None = None,
    evaluations: Sequence[Evaluation | None] | None = None,
    stored: Mapping[str, set[bytes]] | None = None,
) -> BatchResult:
    """Decide ``contributions``, write the block of the accepted ones durably and advance the
    head: the sequencer's step (also how tools build a chain offline). Evaluates the batch first
    (through ``evaluator``, a pool, when given; or takes its ``evaluations``, made beforehand),
    then builds the block. Duplicates (packs in ``store`` or earlier in the batch) are found
    first, with one query, and not evaluated (:func:`evaluate_new`); ``stored``, when given,
    is that query's answer, up to date (made with ``evaluations``). All or nothing: on any
    failure the in-memory state is rolled back and the error raised."""
    if evaluations is None:
        if stored is None:
            stored = stored_packs(store, contributions)
        evaluations = evaluate_new(state.goals, contributions, stored, evaluator)
    state.begin()
    try:
        outcomes, block, entries = build_block(
            state, identity, contributions, store=store, evaluations=evaluations, stored=stored
        )
        if block is not None:
            store.append_block(block, entries)
            state.height = block.height
            state.head_hash = block.hash
            state.head_timestamp_ms = block.header.timestamp_ms
    except BaseException:
        state.rollback()
        raise
    state.begin()
    return BatchResult(outcomes=outcomes, block=block)


class Sequencer:
    """Owns the write path of the chain on the node that orders blocks."""

    def __init__(
        self,
        state: ChainState,
        store: Store,
        identity: Identity,
        *,
        max_entries: int = 1000,
        max_block_bytes: int = 16 * 1024 * 1024,
        on_batch: Callable[[BatchResult, float], None] | None = None,
        commit: Callable[[list[Contribution]], Awaitable[BatchResult]] | None = None,
        in_flight: int = 1,
        linger: float = 0.0,
        evaluator: BatchEvaluator | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.identity = identity
        self.max_entries = max_entries
        # A block must fit in one P2P frame to replicate: seal it before it outgrows one.
        self.max_block_bytes = max_block_bytes
        self._carry: _Pending | None = None
        # Bound what waiting submissions hold in memory, not just how many there are.
        self.max_queued_bytes = 4 * max_block_bytes
        self._queued_bytes = 0
        self._on_batch = on_batch
        #: how a batch becomes a block: by default sealed here (one authority); on a network
        #: of several, proposed and committed by a majority (ChainBridge.commit_batch)
        self._commit = commit
        #: batches handed to ``commit`` and not answered yet, at most (sealing here: one)
        self._slots = anyio.Semaphore(max(1, in_flight) if commit is not None else 1)
        #: how long (seconds) a batch may wait, at most, for as many submissions as the last
        #: one held (see :meth:`_linger`)
        self.linger = linger
        self._last_batch = 0
        #: set on each submission while a batch lingers
        self._arrived: anyio.Event | None = None
        #: where batches are evaluated (an EvaluationPool); None: in the worker thread
        self.evaluator = evaluator
        self._send, self._receive = anyio.create_memory_object_stream[_Pending](
            max_buffer_size=100_000
        )
        self._closed = False
        #: the last block sealed here (worker thread)
        self._sealed: Block | None = None

    async def submit(self, contribution: Contribution) -> Outcome:
        """Queue ``contribution``; returns once it is rejected or durably accepted."""
        pending = self._queue(_Pending(contribution))
        assert pending.done is not None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

    def enqueue(self, contribution: Contribution, on_done: OnDone) -> None:
        """Queue ``contribution`` without waiting: ``on_done`` is called, on the event loop,
        once it is rejected or durably accepted (or could not be). Raises what :meth:`submit`
        raises before queueing (the queue is full, the node is shutting down)."""
        self._queue(_Pending(contribution, on_done))

    def _queue(self, pending: _Pending) -> _Pending:
        if self._closed:
            raise UnavailableError("the node is shutting down")
        if self._queued_bytes + pending.size > self.max_queued_bytes:
            raise UnavailableError("the sequencer queue is full", retry_after=1.0)
        try:
            self._send.send_nowait(pending)
            self._queued_bytes += pending.size
            if self._arrived is not None:
                self._arrived.set()
        except anyio.WouldBlock:
            raise UnavailableError("the sequencer queue is full", retry_after=1.0) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise UnavailableError("the node is shutting down") from None
        return pending

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop taking submissions; already-queued ones are still processed by :meth:`run`."""
        self._closed = True
        self._send.close()
        if self._arrived is not None:
            self._arrived.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._commit is not None:
            await self._run_commits()
        else:
            await self._run_sealing()

    async def _run_commits(self) -> None:
        """A leader of several authorities: up to ``in_flight`` batches proposed at once."""
        async with self._receive, anyio.create_task_group() as tg:
            while True:
                await self._slots.acquire()
                first = self._next_nowait()
                if first is None:
                    try:
                        first = await self._receive.receive()
                    except anyio.EndOfStream:
                        self._slots.release()
                        return
                # Shielded: ``first`` is taken, so it is finished and answered (the wait is short).
                with anyio.CancelScope(shield=True):
                    await self._linger()
                tg.start_soon(self._process_in_slot, self._take(first))

    async def _linger(self) -> None:
        """Under load, wait up to :attr:`linger` for as many submissions as the last batch held
        (or a full block), so that a block is not cut just before they arrive.

        A block's submitters are answered together, once it is durable (on a majority, with
        several authorities); clients that send again at once arrive a moment later, and
        without this the first of them would take the free slot alone, the others waiting for
        a whole block behind it — blocks of 1 and of 31, for 32 clients, in turn (measured).
        Each block has a fixed cost (signing, hashing, a transaction, an fsync) and, with several
        authorities, every node a round of messages and a verification: full blocks are what
        makes the node fast. The wait ends as soon as enough are queued; after a batch of one
        (light load) there is none."""
        want = min(self._last_batch, self.max_entries)
        if self.linger <= 0 or want < 2:
            return
        with anyio.move_on_after(self.linger):
            while (
                1 + self._waiting() < want  # 1: the batch's first, already out of the queue
                and self._queued_bytes < self.max_block_bytes
                and not self._closed
            ):
                self._arrived = anyio.Event()
                await self._arrived.wait()
        self._arrived = None

    def _waiting(self) -> int:
        """Submissions queued and not taken."""
        return self._receive.statistics().current_buffer_used + (self._carry is not None)

    async def _process_in_slot(self, batch: list[_Pending]) -> None:
        # Shielded: a batch that was taken is finished and answered even during shutdown.
        with anyio.CancelScope(shield=True):
            try:
                await self._process(batch, None)
            finally:
                self._slots.release()

    async def _run_sealing(self) -> None:
        """One authority: batches sealed here one after the other."""
        #: the next batch, taken while the current one was sealed, and its evaluation (already
        #: running in the pool's workers)
        ahead: tuple[list[_Pending], _Evaluating | None] | None = None
        async with self._receive:
            while True:
                first: _Pending | None = None
                if ahead is None:
                    first, self._carry = self._carry, None
                    if first is None:
                        try:
                            first = await self._receive.receive()
                        except anyio.EndOfStream:
                            return
                # Shielded: a batch that was taken is finished and answered even during shutdown.
                with anyio.CancelScope(shield=True):
                    if ahead is not None:
                        (batch, evaluating), ahead = ahead, None
                    else:
                        assert first is not None
                        await self._linger()
                        batch = self._take(first)
                        evaluating = await self._start_evaluation(batch)
                    if evaluating is not None:
                        # Pipelined: what is already waiting is evaluated by the workers while
                        # this batch is built and written (evaluation needs no chain state).
                        nxt = self._next_nowait()
                        if nxt is not None:
                            upcoming = self._take(nxt)
                            ahead = (upcoming, await self._start_evaluation(upcoming))
                    await self._process(batch, evaluating)

    def _next_nowait(self) -> _Pending | None:
        if self._carry is not None:
            first, self._carry = self._carry, None
            return first
        try:
            return self._receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return None

    def _take(self, first: _Pending) -> list[_Pending]:
        """A batch starting with ``first``: what is queued, up to the block limits."""
        batch = [first]
        size = first.size
        while len(batch) < self.max_entries:
            try:
                nxt = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            size += nxt.size
            if size > self.max_block_bytes:
                self._carry = nxt  # first of the next block
                break
            batch.append(nxt)
        self._queued_bytes -= sum(p.size for p in batch)
        self._last_batch = len(batch)
        return batch

    async def _start_evaluation(self, batch: list[_Pending]) -> _Evaluating | None:
        """Start evaluating ``batch`` in the pool's workers, when this node seals its own blocks
        with a pool of several workers; None: it is evaluated when it is sealed.

        Duplicates (packs stored, or earlier in the batch) are left out. The store is read in a
        worker thread of this loop, which never runs at the same time as :meth:`_apply_batch`
        (the writer connection has one user at a time); a batch taken ahead is looked up
        before the block in front of it is written, so a duplicate of that block is evaluated
        for nothing (and still refused when the block is built)."""
        pool = self.evaluator
        if self._commit is not None or not isinstance(pool, EvaluationPool) or not pool.parallel:
            return None
        contributions = [p.contribution for p in batch]
        if all(c.evaluated is not None for c in contributions):
            return None  # evaluated on the way in (API fronts): nothing for the workers
        return await anyio.to_thread.run_sync(self._submit_evaluation, pool, contributions)

    def _submit_evaluation(
        self, pool: EvaluationPool, contributions: list[Contribution]
    ) -> _Evaluating:
        """Worker thread: the duplicates of ``contributions`` found, the rest sent to ``pool``."""
        head = self.state.head_hash
        stored = stored_packs(self.store, contributions)
        sources, todo = _to_evaluate(contributions, stored)
        evaluation = pool.submit(self.state.goals, todo) if todo else None
        return _Evaluating(sources, evaluation, stored, head)

    async def _process(self, batch: list[_Pending], evaluating: _Evaluating | None) -> None:
        started = time.perf_counter()
        contributions = [p.contribution for p in batch]
        try:
            if self._commit is not None:
                result = await self._commit(contributions)
            else:
                result = await anyio.to_thread.run_sync(
                    self._apply_batch, contributions, evaluating
                )
        except UnavailableError as exc:
            for p in batch:
                p.finish(None, exc)
            return
        except IanError as exc:
            log.error("block commit failed: %s", exc)
            error = UnavailableError(f"could not commit the block: {exc.message}")
            for p in batch:
                p.finish(None, error)
            return
        except Exception as exc:
            log.exception("block commit failed")
            error = UnavailableError(f"could not commit the block: {exc}")
            for p in batch:
                p.finish(None, error)
            return
        for p, outcome in zip(batch, result.outcomes, strict=True):
            p.finish(outcome)
        if self._on_batch is not None:
            self._on_batch(result, time.perf_counter() - started)

    def _apply_batch(
        self, contributions: list[Contribution], evaluating: _Evaluating | None = None
    ) -> BatchResult:
        """Worker thread: :func:`seal_block` on the node's state and store."""
        evaluations = stored = None
        if evaluating is not None:
            evaluations = evaluating.result()
            stored = evaluating.stored_now(self.state.head_hash, self._sealed)
        result = seal_block(
            self.state,
            self.store,
            self.identity,
            contributions,
            evaluator=self.evaluator,
            evaluations=evaluations,
            stored=stored,
        )
        if result.block is not None:
            self._sealed = result.block
        return result
