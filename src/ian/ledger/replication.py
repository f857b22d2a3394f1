"""Replication: one ordered chain on every node (ARCHITECTURE §6).

The sequencer announces each block it commits; followers verify and apply announced blocks,
fetch ranges they miss from any peer (blocks are self-authenticating), forward contributions to
the sequencer, and repair themselves when a majority of peers disagrees with their chain.

Consensus state: ``ISOLATED`` (no peers), ``SYNCING`` (behind the best height seen), ``SYNCED``,
``DIVERGED`` (a majority of peers hold a different block at a height we have; repair runs).
All chain writes on a follower go through one lock and one worker thread at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ian import errors
from ian.chain.blocks import Block, ParentMismatchError
from ian.chain.contributions import FRAME_OVERHEAD, Contribution
from ian.chain.state import ChainState, Outcome
from ian.errors import IanError, RequestError, UnavailableError
from ian.events import Publish
from ian.ledger.block_apply import apply_blocks
from ian.p2p import messages as msg
from ian.p2p.connection import PeerInfo
from ian.p2p.errors import P2PError, RemoteError
from ian.p2p.peer_book import PeerEvent
from ian.storage.store import Store

if TYPE_CHECKING:
    from ian.p2p.switch import P2PService

log = logging.getLogger("ian.sync")

SYNC_BATCH = 64
FORWARD_TIMEOUT_S = 10.0


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
        handle_forward: Callable[[Contribution], Awaitable[Outcome]],
        record: Callable[[str, PeerEvent], object],
        max_frame_bytes: int = 16 * 1024 * 1024,
        publish: Publish | None = None,  # ``sync`` events (ian.events)
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
        self._write_lock = anyio.Lock()
        self._wake = anyio.Event()
        self.announced_height = 0
        self.diverged = False
        self.last_divergence: dict[str, Any] | None = None
        self.synced_blocks = 0
        self._pending_check: int | None = None
        self._publish = publish
        self._published_state: str | None = None
        p2p.on(msg.BlockAnnounce.TYPE, self._on_announce)
        p2p.on(msg.GetBlocks.TYPE, self._on_get_blocks)
        p2p.on(msg.ContributionForward.TYPE, self._on_forward)
        p2p.on(msg.Status.TYPE, self._on_status)

    # -- what the node shows --------------------------------------------------------------------
    @property
    def network_height(self) -> int:
        return max(self.state.height, self.announced_height, self.p2p.best_height())

    @property
    def consensus_state(self) -> str:
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
        budget = self.max_frame_bytes - FRAME_OVERHEAD
        blocks = await anyio.to_thread.run_sync(
            lambda: self.store.blocks(m.from_height, m.max_blocks, max_bytes=budget)
        )
        return msg.Blocks(blocks=[msg.block_to_doc(b) for b in blocks])

    async def _on_forward(self, peer: PeerInfo, m: msg.ContributionForward) -> msg.Message:
        if not self.is_sequencer():
            return msg.Error(code="not_sequencer", message="this node is not the sequencer")
        try:
            c = msg.contribution_from_doc(m.contribution)
            outcome = await self._handle_forward(c)
        except RequestError as exc:
            return msg.Error(code=exc.code, message=exc.message[:1000])
        except IanError as exc:
            return msg.Error(code="invalid_input", message=exc.message[:1000])
        return msg.ContributionResult(result=outcome.to_result())

    # -- follower side: forwarding --------------------------------------------------------------
    async def forward(self, c: Contribution) -> Outcome:
        """Send ``c`` to the sequencer and return its durable answer."""
        target = self.sequencer_id()
        if target is None or all(p.node_id != target for p in self.p2p.peers()):
            raise UnavailableError("the sequencer is not reachable from this node", retry_after=2)
        try:
            reply = await self.p2p.request(
                target,
                msg.ContributionForward(contribution=msg.contribution_to_doc(c)),
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
            accepted=bool(r.get("accepted")),
            goal_id=c.goal_id,
            metrics=r.get("metrics"),
            score=r.get("score"),
            reason=str(r.get("reason", "")),
            rejection_type=r.get("rejection_type"),
            log_index=r.get("log_index"),
            contribution_hash=(
                bytes.fromhex(r["contribution_hash"]) if r.get("contribution_hash") else None
            ),
        )

    # -- follower side: blocks ------------------------------------------------------------------
    async def _on_status(self, peer: PeerInfo, m: msg.Status) -> None:
        if m.height > self.state.height:
            self._wake.set()
        return None

    async def _on_announce(self, peer: PeerInfo, m: msg.BlockAnnounce) -> None:
        if self.is_sequencer():
            return None
        try:
            block = msg.block_from_doc(m.block)
        except IanError as exc:
            self._record(peer.node_id, PeerEvent.INVALID_MESSAGE)
            log.warning("invalid block announce from %s: %s", peer.node_id[:12], exc)
            return None
        h = block.height
        self.announced_height = max(self.announced_height, h)
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

    async def _apply(self, blocks: list[Block], sender: str) -> int:
        """Apply consecutive blocks (one transaction for the batch); returns how many were
        applied. Scores the sender."""
        if self.sequencer_id() is None:
            # Nobody has told us who signs blocks yet (no IAN_SEQUENCER, no peer announcing
            # itself as sequencer): accepting whatever a peer signed would let any peer feed us
            # its own chain.
            log.info("not applying blocks yet: the sequencer is unknown (set IAN_SEQUENCER)")
            return 0
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
            applied, error = await anyio.to_thread.run_sync(
                lambda: apply_blocks(self.state, self.store, fresh, sequencer=self.sequencer_id())
            )
            for block in fresh[:applied]:
                self._on_applied(block)
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
            if exc.remote_code not in ("rate_limited", "unavailable"):
                self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        except P2PError as exc:
            log.info("sync from %s failed: %s", node_id[:12], exc.message)
            self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        if not isinstance(reply, msg.Blocks) or not reply.blocks:
            self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        try:
            blocks = [msg.block_from_doc(d) for d in reply.blocks]
        except IanError as exc:
            log.warning("invalid blocks from %s: %s", node_id[:12], exc)
            self._record(node_id, PeerEvent.INVALID_MESSAGE)
            return None
        if blocks[0].height != start:
            self._record(node_id, PeerEvent.FAILED_SYNC)
            return None
        return blocks

    def _best_peer(self) -> tuple[str, int] | None:
        best: tuple[str, int] | None = None
        for p in self.p2p.peers():
            h = p.height
            if best is None or h > best[1]:
                best = (p.node_id, h)
        return best

    # -- divergence -----------------------------------------------------------------------------
    async def check_divergence(self, height: int) -> None:
        """Ask every peer for its block at ``height``; if most disagree with ours, repair."""
        ours = self.store.block_hash(height)
        if ours is None or self.is_sequencer():
            return
        votes: dict[bytes, list[str]] = {}
        for p in list(self.p2p.peers()):
            got = await self._remote_hash(p.node_id, height)
            if got is not None:
                votes.setdefault(got, []).append(p.node_id)
        asked = sum(len(v) for v in votes.values())
        disagree = asked - len(votes.get(ours, []))
        if asked == 0 or disagree * 2 <= asked:
            return
        voters = max(votes.values(), key=len)
        self.diverged = True
        self._emit("diverged", {"height": height, "peers_asked": asked, "disagree": disagree})
        log.error(
            "DIVERGED: %d of %d peers hold a different block at height %d; repairing",
            disagree,
            asked,
            height,
        )
        common = await self._last_common(voters[0], height)
        removed = await self._roll_back_to(common)
        self.last_divergence = {
            "detected_at": time.time(),
            "height": height,
            "rolled_back_to": common,
            "blocks_removed": removed,
        }
        log.warning("rolled back %d blocks to height %d; resyncing", removed, common)
        self.diverged = False
        self._emit("repaired", dict(self.last_divergence))
        self._wake.set()

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
            raise UnavailableError(
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

    async def _remote_hash(self, node_id: str, height: int) -> bytes | None:
        try:
            reply = await self.p2p.request(
                node_id, msg.GetBlocks(from_height=height, max_blocks=1), timeout=10
            )
        except P2PError:
            return None
        if isinstance(reply, msg.Blocks) and reply.blocks:
            doc = reply.blocks[0]
            if doc.header.height == height:
                return bytes.fromhex(doc.hash)
        return None

    async def _last_common(self, node_id: str, height: int) -> int:
        """Highest height ≤ ``height`` where our block equals ``node_id``'s (binary search)."""
        lo, hi = 0, height - 1  # invariant: blocks ≤ lo agree (0 = genesis)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            theirs = await self._remote_hash(node_id, mid)
            if theirs is not None and theirs == self.store.block_hash(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo


# The sequencer's refusal of a forwarded contribution, as the follower's client should see it.
_REMOTE_ERRORS: dict[str, type[RequestError]] = {
    "invalid_input": errors.InputError,
    "malformed": errors.InputError,
    "not_found": errors.NotFoundError,
    "duplicate": errors.DuplicateError,
    "payload_too_large": errors.PayloadTooLargeError,
    "unavailable": UnavailableError,
    "not_sequencer": UnavailableError,
}


def _remote_request_error(exc: RemoteError) -> RequestError:
    code = exc.remote_code
    if code == "rate_limited":
        return errors.RateLimitedError(exc.message, retry_after=10.0)
    cls = _REMOTE_ERRORS.get(code, UnavailableError)
    return cls(f"the sequencer refused it: {exc.message}")


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
