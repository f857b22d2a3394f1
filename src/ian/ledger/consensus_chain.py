"""Where consensus meets the chain, on a network of several authorities.

The consensus log (:mod:`ian.consensus`) orders opaque payloads; the chain (store, MMRs,
leaderboards) is what clients see. A ``data`` block's payload is one chain block (its P2P wire
document as JSON), signed by the authority that led when it was built.

- The leader builds a chain block on its *applied* state (every committed block applied, none
  pending: :meth:`ConsensusDriver.ready_to_propose`), or on top of the blocks it proposed in
  this term that are still waiting for their commit (up to ``max_in_flight``, the
  ``consensus_in_flight`` setting), proposes it
  and waits: its submitters are answered only once the block is committed by a majority of
  authorities and applied here (:meth:`ChainBridge.commit_batch`). The in-memory state keeps
  each block's changes meanwhile, one undo layer per block (nothing reads them: views are
  published on apply), so applying its own block costs the leader one write, not a second
  evaluation; any other block to apply first undoes them all, and a block that fails to
  commit undoes itself and every block built on it.
- Every node — leader, authorities and followers alike — applies committed blocks in order
  through :meth:`ChainBridge.apply`: it re-executes the chain block and writes it, exactly as a
  follower verifies a block today, and checks its signer is an authority at that height.
- A committed payload that fails those checks is skipped, by every node alike (the checks are
  deterministic), and counted: a faulty or hostile authority cannot stop the chain with one.
- Applying is idempotent: a block already in the store (applied before a crash, and the
  applied mark lost with it) is recognised by its hash and not applied twice.
- The consensus log, fsynced by a majority before any answer, is the durable record; the chain
  store is derived from it, so its commits are not fsynced (``Store(durable_commits=False)``):
  after a crash, blocks the store lost are applied again from the log (:func:`applied_mark`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread

from ian.chain.blocks import Block, InvalidBlockError
from ian.chain.contributions import Contribution
from ian.chain.evaluation import BatchEvaluator, Evaluation
from ian.chain.state import ChainState, Outcome
from ian.consensus import (
    Accepted,
    BlockKind,
    DurableState,
    Redirect,
    Rejected,
    Role,
    Unavailable,
)
from ian.consensus import Block as ConsensusBlock
from ian.errors import EvaluationError, StoreError, UnavailableError
from ian.identity import Identity
from ian.ledger.block_apply import apply_blocks
from ian.ledger.consensus_driver import ConsensusDriver
from ian.ledger.sequencer import BatchResult, build_block, evaluate_new, stored_packs
from ian.p2p import messages as msg
from ian.storage.store import NewEntry, Store

__all__ = ["ChainBridge", "applied_mark", "block_from_payload", "payload_of"]

log = logging.getLogger("ian.consensus")


def payload_of(block: Block) -> bytes:
    """A chain block as a consensus payload: its wire document, compact JSON."""
    return msg.encode_block(block)


def block_from_payload(payload: bytes) -> Block:
    """The chain block in a payload; :class:`InvalidBlockError` when it is not one."""
    try:
        return msg.decode_block(payload)
    except Exception as exc:  # InvalidMessage, a bad entry: all mean "not a block"
        raise InvalidBlockError(f"payload is not a chain block: {exc}") from None


def applied_mark(durable: DurableState, chain_height: int) -> int:
    """Where applying must resume so the chain store misses nothing: the consensus log's
    applied mark, lowered past every data block above the store's height (a store restored
    from an older backup, or repaired). Blocks the store already holds are recognised by hash
    when applied again, so erring low costs time, never a double apply."""
    h = top = min(durable.applied_height, durable.height)
    while h > 0:
        block = durable.block(h)
        if block.kind is BlockKind.DATA:
            try:
                height = block_from_payload(block.payload).height
            except InvalidBlockError:
                height = None  # skipped when it was applied: nothing of it is in the store
            if height is not None:
                if height <= chain_height:
                    return top
                top = h - 1  # the store lacks this one: apply again from here
        h -= 1
    return top


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A block this leader proposed, waiting for its commit."""

    block: Block
    entries: list[NewEntry]
    term: int


class ChainBridge:
    """Applies committed blocks to the chain and turns a leader's batches into proposals."""

    def __init__(
        self,
        *,
        state: ChainState,
        store: Store,
        identity: Identity,
        driver: ConsensusDriver,
        on_applied: Callable[[Block], None],
        ready_timeout: float = 2.0,
        max_in_flight: int = 1,
        evaluator: BatchEvaluator | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.identity = identity
        self.driver = driver
        self._on_applied = on_applied
        self.ready_timeout = ready_timeout
        #: where batches and re-executed blocks are evaluated (an EvaluationPool); None: here
        self.evaluator = evaluator
        #: held while the chain state is being changed (an apply) or read for a build
        self._lock = anyio.Lock()
        self.skipped_blocks = 0  # committed payloads that were not valid chain blocks
        #: the blocks this leader built and proposed, oldest first, their changes held in the
        #: state (one undo layer each, see above)
        self._pending: list[_InFlight] = []
        self.max_in_flight = max_in_flight

    @property
    def in_flight(self) -> int:
        """Blocks this leader proposed whose commit it has not seen yet."""
        return len(self._pending)

    # -- every node ---------------------------------------------------------------------------
    async def apply(self, blocks: list[ConsensusBlock]) -> None:
        """The driver's ``apply``: committed consensus blocks, in order."""
        work: list[tuple[bytes, dict[str, bytes], int]] = []
        for block in blocks:
            if block.kind is BlockKind.DATA:
                authorities = self.driver.core.authorities_at(block.height)
                work.append((block.payload, authorities, block.height))
            elif block.change is not None:
                log.warning(
                    "authority change committed at height %d: %s %s",
                    block.height,
                    block.change.op,
                    block.change.node_id,
                )
        if not work:
            return
        async with self._lock:
            applied = await anyio.to_thread.run_sync(self._apply_payloads, work)
        for chain_block in applied:
            self._on_applied(chain_block)

    def _apply_payloads(self, work: list[tuple[bytes, dict[str, bytes], int]]) -> list[Block]:
        """Worker thread: verify and write the chain blocks in ``work`` — consecutive valid ones
        in one transaction — skipping what was applied before and what is not valid; the
        blocks written."""
        todo: list[tuple[Block, int]] = []
        for payload, authorities, height in work:
            try:
                block = block_from_payload(payload)
                signer = block.header.sequencer
                if authorities.get(signer) != block.header.sequencer_key:
                    raise InvalidBlockError(
                        f"chain block {block.height} is signed by {signer[:12]}…, not an authority"
                    )
            except InvalidBlockError as exc:
                self._skip(height, exc)
                continue
            todo.append((block, height))
        written: list[Block] = []
        while todo:
            block, height = todo[0]
            if self._pending:
                own, entries = self._pending[0].block, self._pending[0].entries
                if block.hash == own.hash and block.height == self.state.height + 1:
                    self.store.append_block(block, entries)  # evaluated when it was built
                    self.state.height, self.state.head_hash = block.height, block.hash
                    self.state.head_timestamp_ms = block.header.timestamp_ms
                    self.state.settle_oldest()
                    self._pending.pop(0)
                    written.append(block)
                    todo.pop(0)
                    continue
                self._discard_pending()
            if block.height <= self.state.height:
                todo.pop(0)
                if self.store.block_hash(block.height) != block.hash:
                    self._skip(height, InvalidBlockError(
                        f"chain block {block.height} is not the one this node holds there"
                    ))  # fmt: skip
                continue  # else applied before a crash lost the applied mark
            run = [b for b, _ in todo]
            try:
                done, error = apply_blocks(
                    self.state, self.store, run, sequencer=None, evaluator=self.evaluator
                )
            except EvaluationError as exc:
                # The workers failed before anything was decided; committed blocks must still
                # be applied, in order: evaluate them here, as without a pool.
                log.error("evaluation workers failed, re-executing in this process: %s", exc)
                done, error = apply_blocks(self.state, self.store, run, sequencer=None)
            written.extend(run[:done])
            del todo[:done]
            if error is not None:
                self._skip(todo[0][1], error)
                todo.pop(0)
        return written

    def _discard_pending(self, start: int = 0) -> None:
        """Undo the changes of the blocks this leader built from ``start`` on (another block
        comes first, or a proposal failed: the blocks built on it go with it)."""
        self.state.rollback(keep=start)
        del self._pending[start:]

    def _skip(self, height: int, exc: InvalidBlockError) -> None:
        self.skipped_blocks += 1
        log.error("committed block %d skipped: %s", height, exc)

    # -- the leader ---------------------------------------------------------------------------
    async def commit_batch(self, contributions: list[Contribution]) -> BatchResult:
        """The sequencer's step on a leader: decide, build, propose, wait for the commit.

        Batches may overlap (up to :attr:`max_in_flight`): a block is built on top of the ones
        still waiting for their commit, so the next block is on its way while the authorities
        store the last one. Proposals enter the log in the order their blocks were built."""
        if self.driver.core.role is not Role.LEADER:
            raise UnavailableError("no leader is ready to take contributions", retry_after=1)
        # Evaluation needs only the goals (fixed by the genesis), not the applied state: it runs
        # before the lock, so committed blocks are applied meanwhile.
        evaluations = await anyio.to_thread.run_sync(self._evaluate, contributions)
        deadline = anyio.current_time() + self.ready_timeout
        while True:
            async with self._lock:
                if self._can_build():
                    outcomes, block = await anyio.to_thread.run_sync(
                        self._build, contributions, evaluations
                    )
                    if block is None:
                        return BatchResult(outcomes=outcomes, block=None)
                    try:
                        answer = self.driver.enqueue_proposal(payload_of(block))
                    except BaseException:
                        await anyio.to_thread.run_sync(self._discard_from, block)
                        raise
                    break
            stepped = False
            if self.driver.core.role is Role.LEADER:
                with anyio.move_on_after(deadline - anyio.current_time()):
                    stepped = await self.driver.wait_step()
            if not stepped:
                raise UnavailableError("no leader is ready to take contributions", retry_after=1)
        outcome = await answer()
        if not isinstance(outcome, Accepted):
            async with self._lock:
                await anyio.to_thread.run_sync(self._discard_from, block)
        if isinstance(outcome, Accepted):
            if self.store.block_hash(block.height) != block.hash:
                raise UnavailableError("the committed block was not applied here", retry_after=1)
            return BatchResult(outcomes=outcomes, block=block)
        if isinstance(outcome, Redirect):
            raise UnavailableError(
                f"leadership moved to {outcome.leader} before the block committed; retry",
                retry_after=0.5,
            )
        if isinstance(outcome, Unavailable):
            raise UnavailableError(
                "leadership was lost before the block committed (it may still commit: a retry "
                "is refused as a duplicate if it did)",
                retry_after=outcome.retry_after,
            )
        assert isinstance(outcome, Rejected)
        raise StoreError(f"the block was refused: {outcome.reason}")

    def _evaluate(self, contributions: list[Contribution]) -> list[Evaluation | None]:
        """Worker thread, lock not held: the evaluations of ``contributions``, duplicates left
        out (:func:`~ian.ledger.sequencer.evaluate_new`): packs in the store (read on the
        reader connection: an apply may be using the writer), in this leader's blocks in
        flight, or earlier in the batch. What changes before the block is built (an apply, a
        block in flight discarded) is caught by :meth:`_build`, which decides duplicates
        again and evaluates a contribution that got None and is not one."""
        known = stored_packs(self.store, contributions, writer=False)
        for p in list(self._pending):  # a snapshot: the list changes under the lock only
            for c in p.block.entries:
                if c.goal_id in known:
                    known[c.goal_id].add(c.pack_hash)
        return evaluate_new(self.state.goals, contributions, known, self.evaluator)

    def _can_build(self) -> bool:
        """(Lock held) Whether a block built now lands where every node will apply it: on the
        applied state with the whole log applied, or on this term's blocks still in flight."""
        core = self.driver.core
        if self._pending:
            return (
                core.role is Role.LEADER
                and not core.forked
                and core.term == self._pending[-1].term  # else they fail: their batches undo them
                and len(self._pending) < self.max_in_flight
            )
        return self.driver.ready_to_propose()

    def _build(
        self, contributions: list[Contribution], evaluations: list[Evaluation | None]
    ) -> tuple[list[Outcome], Block | None]:
        """Worker thread: the block for ``contributions`` on the applied state and the blocks
        in flight; its changes stay in the state (an undo layer) until it is applied or
        discarded."""
        term = self.driver.core.term
        if self._pending:
            self.state.push()
            parent: Block | None = self._pending[-1].block
            unstored: dict[str, set[bytes]] = {}
            for p in self._pending:
                for e in p.entries:
                    unstored.setdefault(e.contribution.goal_id, set()).add(e.contribution.pack_hash)
        else:
            self.state.begin()
            parent, unstored = None, {}
        keep = len(self._pending)
        try:
            outcomes, block, entries = build_block(
                self.state,
                self.identity,
                contributions,
                store=self.store,
                parent=parent,
                unstored_packs=unstored,
                evaluations=evaluations,
            )
        except BaseException:
            self._discard_pending(keep)
            raise
        if block is None:
            self._discard_pending(keep)
        else:
            self._pending.append(_InFlight(block, entries, term))
        return outcomes, block

    def _discard_from(self, block: Block) -> None:
        """Worker thread: ``block`` failed to commit: undo it and the blocks built on it."""
        for i, p in enumerate(self._pending):
            if p.block.hash == block.hash:
                self._discard_pending(i)
                return
