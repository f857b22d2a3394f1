"""Replication: one ordered chain on every node (ARCHITECTURE §6).

The sequencer announces each block it commits; followers verify and apply announced blocks,
fetch ranges they miss from any peer (blocks are self-authenticating), and forward
contributions to the sequencer.

Nothing a peer merely *says* moves this node (CONSENSUS.md "Safety rules"):

- heights count only when proven: the network height is the highest block whose signature by
  the chain's sequencer verified here (announced or fetched), never a hello, status or announce
  claim; a peer that claims blocks it cannot deliver is charged a failed sync;
- a block announce that is not signed by the sequencer is charged and ignored;
- there is no rollback by head-count. When our block at a height differs from a peer's, the
  peer's block must carry the sequencer's valid signature to count at all (else the peer is
  charged); two validly signed blocks at one height are **fork evidence**: the node keeps both,
  stops applying, reports ``FORKED`` and calls ``on_fork``. The only blocks this node ever drops
  on its own are blocks of *its own store* that the chain's sequencer did not sign (a data dir
  that ran as a sequencer of its own before it learned the network's genesis): ``DIVERGED``,
  then rolled back to the last block the sequencer signed and resynced.

Consensus state: ``ISOLATED`` (no peers), ``SYNCING`` (behind the proven network height),
``SYNCED``, ``DIVERGED`` (dropping blocks the sequencer did not sign), ``FORKED`` (fork evidence;
applying stopped). All chain writes on a follower go through one lock and one worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ian import errors
from ian.chain.blocks import Block, InvalidBlockError, ParentMismatchError, check_block_signature
from ian.chain.contributions import FRAME_OVERHEAD, Contribution
from ian.chain.evaluation import BatchEvaluator
from ian.chain.state import ChainState, Outcome
from ian.errors import IanError, RequestError, UnavailableError
from ian.events import Publish
from ian.ledger.block_apply import apply_blocks
from ian.p2p import messages as msg
from ian.p2p.connection import PeerInfo
from ian.p2p.errors import P2PError, RemoteError
from ian.p2p.peer_book import PeerEvent
from ian.p2p.pex import backoff
from ian.storage.store import Store

if TYPE_CHECKING:
    from ian.p2p.switch import P2PService

log = logging.getLogger("ian.sync")

SYNC_BATCH = 64
#: the most block bytes (entries' wire size) one get_blocks reply carries, at least one block;
#: a frame would allow 16 MiB. A catching-up follower applies a batch while it fetches the next,
#: so smaller batches start that overlap sooner and hold less: a fresh follower of 100,000
#: trivial contributions (1,000 a block) peaked at 138 MiB instead of 208 MiB and applied its
#: first block 0.6 s after connecting instead of 2.8 s (3 runs alternated, at 17,848/s vs
#: 16,384/s). Blocks of a few entries stay SYNC_BATCH to a reply.
SYNC_REPLY_BYTES = 4 * 1024 * 1024
FORWARD_TIMEOUT_S = 10.0


#: concurrent get_blocks handlers per peer (a syncing follower asks one batch at a time)
GET_BLOCKS_PER_PEER = 2


class Replicator:
    """Block propagation, sync, forwarding and divergence repair for one node."""

    def __init__(
        self,
        *,
        state: ChainState,
        store: Store,
        p2p: P2PService,
        is_sequencer: Callable[[], bool],
        sequencer_id: Callable[[], str | None],
        on_applied: Callable[[Block], None],
        on_rolled_back: Callable[[], None],
        reload_state: Callable[[], ChainState],  # a fresh state loaded from the store
        handle_forward: Callable[[Contribution, PeerInfo, str | None], Awaitable[Outcome]],
        record: Callable[[str, PeerEvent], object],
        max_frame_bytes: int = 16 * 1024 * 1024,
        reply_bytes: int = SYNC_REPLY_BYTES,
        publish: Publish | None = None,  # ``sync`` events (ian.events)
        on_fork: Callable[[dict[str, Any]], None] | None = None,  # fork evidence, both blocks
        forward_token: Callable[[], str | None] = lambda: None,  # sent with our forwards
        follows_blocks: Callable[[], bool] = lambda: True,
        evaluator: BatchEvaluator | None = None,  # where re-executed entries are evaluated
    ) -> None:
        self.state = state
        self.store = store
        self.p2p = p2p
        self.is_sequencer = is_sequencer
        self.sequencer_id = sequencer_id
        self._on_applied = on_applied
        self._on_rolled_back = on_rolled_back
        self._reload_state = reload_state
        self._handle_forward = handle_forward
        self._record = record
        self.max_frame_bytes = max_frame_bytes
        self.reply_bytes = reply_bytes
        self._write_lock = anyio.Lock()
        self._wake = anyio.Event()
        self.announced_height = 0  # highest height proven by a block the sequencer signed
        self.diverged = False
        #: fork evidence (two validly signed blocks at one height): applying has stopped
        self.fork_evidence: dict[str, Any] | None = None
        self._on_fork = on_fork
        self._forward_token = forward_token
        #: False on a network of several authorities: blocks arrive certified through the
        #: consensus driver, and announces, heights and get_blocks replies change nothing here
        #: (get_blocks is still served, from committed blocks only)
        self.follows_blocks = follows_blocks
        self.evaluator = evaluator
        self._disproven: dict[str, int] = {}  # node id -> a height it claimed and did not show
        # node id -> (monotonic time to ask it again, requests that failed on the way in a row)
        self._unasked: dict[str, tuple[float, int]] = {}
        self.last_divergence: dict[str, Any] | None = None
        self.synced_blocks = 0
        self._pending_check: int | None = None
        self._publish = publish
        self._published_state: str | None = None
        p2p.on(msg.BlockAnnounce.TYPE, self._on_announce)
        # Each reply may be a whole frame (16 MiB) held until queued: two per peer at a time.
        p2p.on(msg.GetBlocks.TYPE, self._on_get_blocks, per_peer=GET_BLOCKS_PER_PEER)
        p2p.on(msg.ContributionForward.TYPE, self._on_forward)
        p2p.on(msg.Status.TYPE, self._on_status, inline=True)

    # -- what the node shows --------------------------------------------------------------------
    @property
    def network_height(self) -> int:
        """Our height, or the highest height a block signed by the sequencer proved."""
        return max(self.state.height, self.announced_height)

    @property
    def consensus_state(self) -> str:
        if self.fork_evidence is not None:
            return "FORKED"
        if self.diverged:
            return "DIVERGED"
        if self.p2p.peer_count == 0:
            return "ISOLATED"
        if self.network_height > self.state.height:
            return "SYNCING"
        return "SYNCED"

    # -- sequencer side -------------------------------------------------------------------------
    async def announce(self, block: Block) -> None:
        """Gossip a block this node just committed (sequencer) or applied (relay)."""
        await self.p2p.broadcast(msg.BlockAnnounce(block=msg.block_to_doc(block)))

    async def _on_get_blocks(self, peer: PeerInfo, m: msg.GetBlocks) -> msg.Message:
        budget = max(0, min(self.max_frame_bytes, self.reply_bytes) - FRAME_OVERHEAD)
        # Read and converted in a worker thread: a reply of a few MiB takes the conversion
        # 5-30 ms, which the event loop spends on the API and other peers instead.
        docs = await anyio.to_thread.run_sync(
            lambda: [
                msg.block_to_doc(b)
                for b in self.store.blocks(m.from_height, m.max_blocks, max_bytes=budget)
            ]
        )
        return msg.Blocks(blocks=docs)

    async def _on_forward(self, peer: PeerInfo, m: msg.ContributionForward) -> msg.Message:
        if not self.is_sequencer():
            return msg.Error(code="not_sequencer", message="this node is not the sequencer")
        try:
            c = msg.contribution_from_doc(m.contribution)
            outcome = await self._handle_forward(c, peer, m.token)
        except RequestError as exc:
            return msg.Error(code=exc.code, message=exc.message[:1000])
        except IanError as exc:
            return msg.Error(code="invalid_input", message=exc.message[:1000])
        result = outcome.to_result()
        result["reason"] = result["reason"][: msg.MAX_REASON_CHARS]  # a longer one is refused
        return msg.ContributionResult(result=msg.ResultDoc(**result))

    # -- follower side: forwarding --------------------------------------------------------------
    async def forward(self, c: Contribution) -> Outcome:
        """Send ``c`` to the sequencer and return its durable answer."""
        target = self.sequencer_id()
        if target is None or all(p.node_id != target for p in self.p2p.peers()):
            raise UnavailableError("the sequencer is not reachable from this node", retry_after=2)
        try:
            reply = await self.p2p.request(
                target,
                msg.ContributionForward(
                    contribution=msg.contribution_to_doc(c), token=self._forward_token()
                ),
                timeout=FORWARD_TIMEOUT_S,
            )
        except RemoteError as exc:
            raise _remote_request_error(exc) from None
        except P2PError as exc:
            raise UnavailableError(f"forwarding to the sequencer failed: {exc.message}") from None
        if isinstance(reply, msg.Error):
            raise _remote_request_error(RemoteError(reply.code, reply.message))
        if not isinstance(reply, msg.ContributionResult):
            raise UnavailableError("the sequencer answered with an unexpected message")
        r = reply.result
        return Outcome(
            accepted=r.accepted,
            goal_id=c.goal_id,
            metrics=r.metrics,
            score=r.score,
            reason=r.reason,
            rejection_type=r.rejection_type,
            log_index=r.log_index,
            contribution_hash=(
                bytes.fromhex(r.contribution_hash) if r.contribution_hash is not None else None
            ),
        )

    # -- follower side: blocks ------------------------------------------------------------------
    async def _on_status(self, peer: PeerInfo, m: msg.Status) -> None:
        if m.height > self.state.height and self.follows_blocks():
            self._wake.set()
        return None

    async def _on_announce(self, peer: PeerInfo, m: msg.BlockAnnounce) -> None:
        if self.is_sequencer() or not self.follows_blocks():
            return None
        block = self._signed_block(m.block, peer.node_id, "block announce")
        if block is None:
            return None
        h = block.height
        self._prove_height(h)
        if h == self.state.height + 1:
            applied = await self._apply([block], peer.node_id)
            if applied:
                await self.announce(block)
        elif h > self.state.height + 1:
            self._wake.set()
        else:
            ours = self.store.block_hash(h)
            if ours is not None and ours != block.hash:
                await self.check_divergence(h)
        return None

    def _signed_block(self, doc: msg.BlockDoc, sender: str, what: str) -> Block | None:
        """The block of ``doc`` when the chain's sequencer signed it, else None; a sender of
        anything else (an unproven claim, an invalid entry) is charged. None without charge
        while the sequencer is unknown. See :func:`signed_blocks`."""
        sequencer = self.sequencer_id()
        if sequencer is None:
            return None
        blocks, error = signed_blocks([doc], sequencer)
        if error is not None:
            self._refuse(sender, what, error)
            return None
        return blocks[0]

    def _refuse(self, sender: str, what: str, error: Exception) -> None:
        log.warning("%s from %s ignored: %s", what, sender[:12], error)
        self._record(sender, PeerEvent.INVALID_MESSAGE)

    def _prove_height(self, height: int) -> None:
        if height > self.announced_height:
            self.announced_height = height

    async def _apply(self, blocks: list[Block], sender: str) -> int:
        """Apply consecutive blocks (one transaction for the batch); returns how many were
        applied. Scores the sender. The blocks come from :func:`signed_blocks`: their
        signatures are not checked again."""
        if self.sequencer_id() is None:
            # Nobody has told us who signs blocks yet (no genesis, no IAN_SEQUENCER): accepting
            # whatever a peer signed would let any peer feed us its own chain.
            log.info("not applying blocks yet: the sequencer is unknown (no genesis yet)")
            return 0
        if self.fork_evidence is not None:
            return 0  # applying stopped: an operator must look at the evidence
        async with self._write_lock:
            fresh = []
            for block in blocks:
                if block.height > self.state.height:
                    fresh.append(block)
                elif self.store.block_hash(block.height) != block.hash:
                    self._suspect_divergence(block.height)
                    return 0
            if not fresh:
                return 0
            try:
                applied, error = await anyio.to_thread.run_sync(
                    lambda: apply_blocks(
                        self.state,
                        self.store,
                        fresh,
                        sequencer=self.sequencer_id(),
                        evaluator=self.evaluator,
                        signatures_checked=True,
                    )
                )
            except errors.EvaluationError as exc:
                # Nothing was decided (the evaluation workers failed): not the sender's fault,
                # the blocks are fetched and applied again on a later round.
                log.warning("blocks from %s not applied yet: %s", sender[:12], exc)
                return 0
            for block in fresh[:applied]:
                self._on_applied(block)
            if applied:
                self._prove_height(fresh[applied - 1].height)
        if isinstance(error, ParentMismatchError):
            # The sender's chain and ours differ below this block: find out who is in the
            # minority before blaming anyone.
            self._suspect_divergence(self.state.height)
        elif error is not None:
            log.warning("rejected block from %s: %s", sender[:12], error)
            self._record(sender, PeerEvent.INVALID_MESSAGE)
        if applied:
            self._record(sender, PeerEvent.SUCCESSFUL_SYNC)
        return applied

    def _suspect_divergence(self, height: int) -> None:
        """Ask the sync loop to compare our block at ``height`` with the peers'."""
        self._pending_check = height
        self._wake.set()

    def wake(self) -> None:
        """Look for blocks now (e.g. a peer ahead of us just connected)."""
        self._wake.set()

    # -- sync loop ------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with anyio.move_on_after(1.0):
                await self._wake.wait()
            self._wake = anyio.Event()
            if not self.follows_blocks():
                continue
            self._note_state()
            if self.is_sequencer():
                continue
            if self._pending_check is not None:
                height, self._pending_check = self._pending_check, None
                await self.check_divergence(height)
            await self._sync_once()

    async def _sync_once(self) -> None:
        """Fetch and apply blocks while some peer is ahead, in bounded batches. The next batch
        is requested while the current one is being applied, so the serving peer's reading
        and encoding overlap with our verification."""
        target = self._best_peer()
        if target is None or target[1] <= self.state.height:
            return
        node_id, height = target
        if self.sequencer_id() is None or not await self._prove_claim(node_id, height):
            return
        if height <= self.state.height:
            # An announced block was applied while the claim was proven: asking for blocks
            # beyond the peer's height would get an empty reply, charged as a failed sync (a
            # follower of a busy sequencer banned it that way).
            return
        start = self.state.height + 1
        fetching = _Fetch(self._fetch(node_id, start))
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetching.run)
            while True:
                blocks = await fetching.result()
                if blocks is None:
                    return
                end = start + len(blocks)
                if end <= height:  # more to come from this peer: ask now
                    fetching = _Fetch(self._fetch(node_id, end))
                    tg.start_soon(fetching.run)
                applied = await self._apply(blocks, node_id)
                self.synced_blocks += applied
                if applied < len(blocks) or end > height:
                    tg.cancel_scope.cancel()
                    return
                start = end

    async def _fetch(self, node_id: str, start: int) -> list[Block] | None:
        """One batch of blocks from ``start``, checked for form; None (peer scored) if not."""
        try:
            reply = await self.p2p.request(
                node_id, msg.GetBlocks(from_height=start, max_blocks=SYNC_BATCH), timeout=30
            )
        except RemoteError as exc:
            # A peer that asks us to slow down (or is busy) did nothing wrong.
            log.info("sync from %s refused: %s", node_id[:12], exc.message)
            if exc.remote_code not in _NOT_BLAMED:
                self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        except P2PError as exc:
            log.info("sync from %s failed: %s", node_id[:12], exc.message)
            self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        if not isinstance(reply, msg.Blocks) or not reply.blocks:
            self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        sequencer = self.sequencer_id()
        if sequencer is None:
            return None
        # A batch of a few MiB takes tens of ms to convert: a worker thread's, not the event
        # loop's (which answers the API and other peers meanwhile).
        blocks, error = await anyio.to_thread.run_sync(signed_blocks, reply.blocks, sequencer)
        if error is not None:
            self._refuse(node_id, f"block {reply.blocks[len(blocks)].header.height}", error)
            return None
        if blocks[0].height != start:
            self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        return blocks

    def _best_peer(self) -> tuple[str, int] | None:
        """The peer claiming the highest height (hello/status: unsigned hints), skipping claims
        already disproven and peers to be asked again later. Forgets what it noted about peers
        no longer connected (:meth:`_forget_gone`)."""
        best: tuple[str, int] | None = None
        now = time.monotonic()
        peers = self.p2p.peers()
        self._forget_gone({p.node_id for p in peers})
        for p in peers:
            h = p.height
            if self._disproven.get(p.node_id, -1) >= h:
                continue
            if self._unasked.get(p.node_id, (0.0, 0))[0] > now:
                continue
            if best is None or h > best[1]:
                best = (p.node_id, h)
        return best

    def _forget_gone(self, connected: set[str]) -> None:
        """Drop the disproven claims and retry times of peers no longer connected: the maps
        hold connected peers only, however many identities come and go. One that comes back
        is asked again, and charged again if it still cannot show its block."""
        for noted in (self._disproven, self._unasked):
            for node_id in [n for n in noted if n not in connected]:
                del noted[node_id]

    async def _prove_claim(self, node_id: str, height: int) -> bool:
        """A peer says it holds ``height``: believe it (for the network height, readiness and
        sync) only when it hands over that block signed by the sequencer. A peer that cannot
        is charged and its claim ignored from then on. A request that fails on the way proves
        nothing either way: the peer is asked again later, after the redial backoff
        (:func:`ian.p2p.pex.backoff`: 0.5-1 s, doubling with each failure in a row, at most a
        minute), so a peer that lets every request time out holds the sync loop less and less
        often until its failed syncs ban it. (A follower whose request went out on a connection
        that dropped as a partition healed used to ignore the sequencer's height for good.)"""
        if height <= self.network_height:
            return True
        try:
            doc = await self._ask_block(node_id, height)
        except P2PError as exc:
            log.info("could not ask %s for block %d: %s", node_id[:12], height, exc.message)
            if not isinstance(exc, RemoteError) or exc.remote_code not in _NOT_BLAMED:
                self._record(node_id, PeerEvent.FAILED_SYNC)
            failures = self._unasked.get(node_id, (0.0, 0))[1] + 1
            delay = backoff(failures, self.p2p.tuning)
            self._unasked[node_id] = (time.monotonic() + delay, failures)
            return False
        self._unasked.pop(node_id, None)
        if doc is not None and self._signed_block(doc, node_id, f"block {height}") is not None:
            self._prove_height(height)
            return True
        if doc is None:
            log.info("peer %s claimed height %d but did not show that block", node_id[:12], height)
            self._record(node_id, PeerEvent.FAILED_SYNC)
        self._disproven[node_id] = height
        return False

    async def catch_up(self) -> int:
        """Fetch and apply, as a follower would, until no connected peer proves a height above
        ours (N = 1: the sequencer does this at start-up before it proposes, so a restored
        sequencer never re-sequences a height its followers hold). Returns blocks applied."""
        before = self.state.height
        while self.fork_evidence is None:
            height = self.state.height
            await self._sync_once()
            if self.state.height == height:
                break
        return self.state.height - before

    # -- divergence -----------------------------------------------------------------------------
    async def check_divergence(self, height: int) -> None:
        """Our block at ``height`` differs from what a peer sent. Believe signatures only:
        blocks of our own that the sequencer did not sign are dropped (``DIVERGED``, then
        resync); a peer block validly signed by the sequencer that differs from ours is fork
        evidence (``FORKED``: keep both, stop applying); anything else charges the sender."""
        sequencer = self.sequencer_id()
        if sequencer is None or self.is_sequencer() or self.store.block_hash(height) is None:
            return
        unsigned = await anyio.to_thread.run_sync(lambda: self._first_unsigned(height, sequencer))
        if unsigned is not None:
            await self._drop_unsigned(unsigned, sequencer)
            return
        ours = self.store.blocks(height, 1, max_bytes=self.max_frame_bytes)
        if not ours:
            return
        for p in list(self.p2p.peers()):
            doc = await self._remote_block(p.node_id, height)
            if doc is None or doc.hash == ours[0].hash.hex():
                continue
            theirs = self._signed_block(doc, p.node_id, f"block {height}")
            if theirs is None:
                continue
            self._fork(ours[0], theirs, p.node_id)
            return

    def _first_unsigned(self, upto: int, sequencer: str) -> int | None:
        """Lowest height ≤ ``upto`` of our store not signed by ``sequencer`` (blocks of another
        chain's sequencer form a prefix or a suffix of a store; binary search over the suffix)."""

        def signed(h: int) -> bool:
            row = self.store.block_header(h)
            return row is not None and row[0].sequencer == sequencer

        if not signed(1):
            return 1
        if signed(upto):
            return None
        lo, hi = 1, upto  # signed(lo), not signed(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if signed(mid):
                lo = mid
            else:
                hi = mid
        return hi

    async def _drop_unsigned(self, first_bad: int, sequencer: str) -> None:
        self.diverged = True
        self._emit("diverged", {"height": first_bad, "sequencer": sequencer})
        log.error(
            "DIVERGED: our blocks from height %d on are not signed by this chain's sequencer "
            "%s; dropping them",
            first_bad,
            sequencer,
        )
        removed = await self._roll_back_to(first_bad - 1)
        self.last_divergence = {
            "detected_at": time.time(),
            "height": first_bad,
            "rolled_back_to": first_bad - 1,
            "blocks_removed": removed,
        }
        log.warning("rolled back %d blocks to height %d; resyncing", removed, first_bad - 1)
        self.diverged = False
        self._emit("repaired", dict(self.last_divergence))
        self._wake.set()

    def _fork(self, ours: Block, theirs: Block, peer: str) -> None:
        evidence = {
            "detected_at": time.time(),
            "height": ours.height,
            "from_peer": peer,
            "ours": msg.doc_to_data(msg.block_to_doc(ours)),
            "theirs": msg.doc_to_data(msg.block_to_doc(theirs)),
        }
        self.fork_evidence = evidence
        log.critical(
            "FORKED: two blocks at height %d are both signed by the sequencer (ours %s, %s's "
            "%s); applying stopped, evidence kept",
            ours.height,
            ours.hash.hex()[:16],
            peer[:12],
            theirs.hash.hex()[:16],
        )
        self._emit(
            "forked",
            {"height": ours.height, "ours": ours.hash.hex(), "theirs": theirs.hash.hex()},
        )
        if self._on_fork is not None:
            self._on_fork(evidence)

    async def _roll_back_to(self, height: int) -> int:
        """Drop every block above ``height`` from the store and the in-memory state."""
        async with self._write_lock:
            removed = await anyio.to_thread.run_sync(lambda: self.store.truncate_above(height))
            # In place: the sequencer, intake and API hold references to this state.
            self.state.replace_with(self._reload_state())
        self._on_rolled_back()
        return removed

    async def force_resync(self) -> dict[str, Any]:
        """`ian node resync` on a running follower: drop the whole chain, fetch it again."""
        if self.is_sequencer():
            raise errors.ConflictError(
                "this node is the sequencer: its chain is the network's source and cannot be "
                "resynced from peers",
                fix="resync a follower; restore the sequencer from a backup instead",
            )
        removed = await self._roll_back_to(0)
        log.warning("resync requested: dropped %d blocks; fetching the chain again", removed)
        self._emit("resync", {"blocks_removed": removed})
        self._wake.set()
        return {"blocks_removed": removed, "peers": self.p2p.peer_count}

    # -- events -----------------------------------------------------------------------------------
    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        if self._publish is not None:
            self._publish("sync", type_, data)
        self._note_state()

    def _note_state(self) -> None:
        """Publish a ``sync``/``state`` event when the consensus state changed since the last
        look (each sync-loop pass, at most ~1 s after the change, and around repairs)."""
        state = self.consensus_state
        if state == self._published_state:
            return
        previous, self._published_state = self._published_state, state
        if self._publish is not None:
            self._publish(
                "sync",
                "state",
                {
                    "state": state,
                    "previous": previous,
                    "height": self.state.height,
                    "network_height": self.network_height,
                },
            )

    async def _remote_block(self, node_id: str, height: int) -> msg.BlockDoc | None:
        """The peer's block doc at ``height``, or None (not shown, or the request failed)."""
        try:
            return await self._ask_block(node_id, height)
        except P2PError:
            return None

    async def _ask_block(self, node_id: str, height: int) -> msg.BlockDoc | None:
        """The peer's block doc at ``height`` (not decoded further: see :meth:`_signed_block`),
        None if its answer does not hold it; raises :class:`P2PError` when the request fails on
        the way."""
        reply = await self.p2p.request(
            node_id, msg.GetBlocks(from_height=height, max_blocks=1), timeout=10
        )
        if isinstance(reply, msg.Blocks) and reply.blocks:
            doc = reply.blocks[0]
            if doc.header.height == height:
                return doc
        return None


#: a peer that answers with one of these asks us to slow down (or is busy): it did nothing wrong
_NOT_BLAMED = ("rate_limited", "unavailable")

# The sequencer's refusal of a forwarded contribution, as the follower's client should see it.
_REMOTE_ERRORS: dict[str, type[RequestError]] = {
    "invalid_input": errors.InputError,
    "malformed": errors.InputError,
    "not_found": errors.NotFoundError,
    "duplicate": errors.DuplicateError,
    "payload_too_large": errors.PayloadTooLargeError,
    "unavailable": UnavailableError,
    "not_sequencer": UnavailableError,
    "unauthorized": errors.AuthError,
}


def _remote_request_error(exc: RemoteError) -> RequestError:
    code = exc.remote_code
    if code == "rate_limited":
        return errors.RateLimitedError(exc.message, retry_after=10.0)
    cls = _REMOTE_ERRORS.get(code, UnavailableError)
    return cls(f"the sequencer refused it: {exc.message}")


def signed_blocks(
    docs: Sequence[msg.BlockDoc], sequencer: str
) -> tuple[list[Block], InvalidBlockError | IanError | None]:
    """The blocks of ``docs``, in order, up to the first one ``sequencer`` did not sign or
    whose entries are invalid, and what was wrong with that one (None when all are good).

    Each block's signature is checked before its entries are decoded: a peer cannot make us
    decode (and hold) contributions nobody trusted signed. Pure: safe in a worker thread."""
    blocks: list[Block] = []
    try:
        for doc in docs:
            blocks.append(msg.block_from_doc(doc, lambda b: check_block_signature(b, sequencer)))
    except (InvalidBlockError, IanError) as exc:
        return blocks, exc
    return blocks, None


class _Fetch:
    """One request in flight: run() in a task, await result() elsewhere."""

    def __init__(self, work: Awaitable[list[Block] | None]) -> None:
        self._work = work
        self._done = anyio.Event()
        self._value: list[Block] | None = None

    async def run(self) -> None:
        try:
            self._value = await self._work
        finally:
            self._done.set()

    async def result(self) -> list[Block] | None:
        await self._done.wait()
        return self._value
