"""The node: opens the data dir, wires the services, runs them in one task group, stops cleanly.

Start-up (:meth:`Node.open`, synchronous): take ``node.lock``, create or load identity and
certificate, open the store, rebuild the chain state (full verification when
``node_state.json`` is missing), write ``node_state.json`` with ``clean_shutdown: false``.

Run (:meth:`Node.run`): sequencer, HTTP API, checkpoints and signal handling in one task group.
SIGTERM/SIGINT: stop accepting requests, let in-flight ones finish (bounded), drain the sequencer,
write ``node_state.json`` with ``clean_shutdown: true``, release the lock. SIGHUP: reload the
certificate and the log level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hmac
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ian.certs import CertInfo
from ian.chain.blocks import Block, GoalRoots
from ian.chain.contributions import FRAME_OVERHEAD, Contribution
from ian.chain.genesis import Genesis, goals_of, resolve_genesis
from ian.chain.goals import GoalSpec
from ian.chain.leaderboard import LeaderboardEntry
from ian.chain.state import ChainState, Outcome
from ian.config import Settings
from ian.consensus import ForkEvidence
from ian.consensus import Role as ConsensusRole
from ian.errors import AuthError, DataDirError, GenesisError, IanError, UnavailableError
from ian.events import EventBus, block_data, outcome_event, publish_block_contributions
from ian.identity import Identity, load_identity
from ian.ledger.consensus_chain import ChainBridge, applied_mark
from ian.ledger.consensus_driver import ConsensusDriver
from ian.ledger.evaluation_pool import EvaluationPool
from ian.ledger.genesis_exchange import GenesisExchange
from ian.ledger.intake import Intake
from ian.ledger.recovery import load_chain_state, open_chain_state
from ian.ledger.replication import Replicator
from ian.ledger.sequencer import BatchResult, OnDone, Sequencer
from ian.log_setup import set_level
from ian.maintenance.backup import read_last_backup
from ian.maintenance.cert_rotation import (
    recover_interrupted_rotation,
    renewal_due,
    rotate_certificate,
)
from ian.maintenance.restore import pending_restore
from ian.metrics import NodeMetrics, StateSnapshot
from ian.p2p.connection import PeerInfo
from ian.p2p.peer_book import PeerBook
from ian.p2p.peer_events import PeerEvents
from ian.p2p.pex import PeerExchange
from ian.p2p.switch import P2PService, P2PTuning, PeerConnected, PeerDisconnected
from ian.storage import node_state as node_state_mod
from ian.storage.datadir import DataDir, init_data_dir, read_api_token, read_genesis
from ian.storage.lock import NodeLock, maintenance_lock
from ian.storage.store import Store
from ian.tau import TauBridge

if TYPE_CHECKING:
    from ian.api.fronts import ApiFronts
    from ian.api.server import ApiServer

log = logging.getLogger("ian.node")

SHUTDOWN_GRACE_S = 10.0
#: how long a sequencer that has had peers waits for one at start-up before it sequences alone
CATCH_UP_WAIT_S = 10.0
#: after the first peer, how long it listens for the others before it compares heights
CATCH_UP_SETTLE_S = 1.0
#: consensus blocks in one AppendBlocks / CertifiedBlocks message, at most (a catching-up node
#: takes many small blocks per round trip); their payload bytes are bounded too, so that one
#: message fits in a P2P frame (see :func:`consensus_message_bytes`)
CONSENSUS_BLOCKS_PER_MESSAGE = 256
#: seconds between two status announcements to peers, at least, with several authorities:
#: heights travel in the consensus messages there (the leader knows what each peer holds, every
#: node the commit), so a status only feeds the peers listing, and at one per applied block it
#: cost every node a TLS frame to send or read for each peer
CONSENSUS_STATUS_INTERVAL_S = 1.0


def package_version() -> str:
    try:
        return _dist_version("ian-node")
    except Exception:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class GoalView:
    """What readers see of a goal: published after each committed block, never mid-batch."""

    spec: GoalSpec
    log_size: int
    log_root: bytes
    leaderboard: tuple[LeaderboardEntry, ...]
    leaderboard_root: bytes


@dataclass
class BoundAddresses:
    api: tuple[str, int] | None = None
    p2p: tuple[str, int] | None = None
    ws: tuple[str, int] | None = None


def _refuse_half_restored(root: Path) -> None:
    """Raise while an interrupted ``ian restore`` of ``root`` waits for --resume/--rollback."""
    if pending_restore(root) is not None:
        raise DataDirError(
            f"an interrupted `ian restore` left {root} half restored",
            fix=f"finish it with `ian restore --resume --data-dir {root}` or undo it "
            f"with `ian restore --rollback --data-dir {root}`",
        )


class Node:
    """A running node's services and the read-only views the API serves."""

    def __init__(
        self,
        settings: Settings,
        datadir: DataDir,
        lock: NodeLock,
        identity: Identity,
        cert: CertInfo,
        store: Store,
        state: ChainState,
        peer_book: PeerBook,
        genesis: Genesis | None = None,
    ) -> None:
        self.settings = settings
        #: the pinned genesis (None: a follower that has not learned its chain yet)
        self.genesis = genesis
        self.goals = goals_of(genesis, settings.all_goals())
        self.datadir = datadir
        self.lock = lock
        self.identity = identity
        self.cert = cert
        self.store = store
        self.state = state
        self.peer_book = peer_book
        self.version = package_version()
        self.started_at = time.time()
        self._role, self._sequencer_id = role_for(settings, identity.node_id, genesis)
        #: a sequencer that has been part of a network takes its peers' blocks before it
        #: proposes (CONSENSUS.md, N = 1): until then it refuses submissions (503)
        self.catching_up = self._role == "sequencer" and peer_book.has_connected_before()
        #: on a network of several authorities: the consensus driver and the chain it feeds
        #: (None on a one-authority chain, which keeps the single-sequencer path)
        self.consensus: ConsensusDriver | None = None
        self.bridge: ChainBridge | None = None
        self._tg: TaskGroup | None = None  # the running services (a late consensus joins it)
        self.api_server: ApiServer | None = None  # while running
        self._peer_seen = anyio.Event()
        self.views: dict[str, GoalView] = {}
        self.head: tuple[int, bytes] = (state.height, state.head_hash)
        self.metrics = NodeMetrics(self.snapshot)
        self.events = EventBus()  # served on ws_port by ian.api.ws
        #: evaluates costly batches (sequencer, leader) and re-executed blocks (every verifier)
        #: in worker processes; started on the first costly batch
        self.evaluation = EvaluationPool(settings.evaluation_workers)
        self.sequencer = Sequencer(
            state,
            store,
            identity,
            max_entries=settings.block_max_entries,
            max_block_bytes=block_bytes_for(settings, genesis),
            on_batch=self._on_batch,
            commit=self._commit_batch if is_multi_authority(genesis) else None,
            in_flight=settings.consensus_in_flight,
            linger=settings.block_linger_ms / 1000,
            evaluator=self.evaluation,
        )
        self.intake = Intake(
            state.goals,
            self._submit,
            self.metrics,
            contributor_rate=settings.contributor_rate,
            contributor_burst=settings.contributor_burst,
            client_rate=settings.client_rate,
            client_burst=settings.client_burst,
            max_parameters_bytes=settings.max_parameters_bytes,
        )
        self.p2p = P2PService(
            settings,
            identity,
            datadir,
            peer_book,
            self.metrics,
            height_provider=lambda: self.head,
            is_sequencer=self._sequencing,
            tuning=P2PTuning(rate=settings.peer_rate, burst=settings.peer_burst),
            chain_id=genesis.chain_id() if genesis is not None else settings.chain_id,
        )
        self.peer_exchange = PeerExchange(self.p2p)
        self.genesis_exchange = GenesisExchange(
            self.p2p,
            current=lambda: self.genesis,
            adopt=self._adopt_genesis,
            seeds=[str(seed) for seed in settings.seed_nodes],
            expected_chain_id=settings.chain_id,
        )
        self.p2p.add_listener(self._on_peer_event)
        self.p2p.add_listener(
            PeerEvents(self.events.publish, lambda nid: peer_book.ban_reason(node_id=nid))
        )
        self.replicator = Replicator(
            state=state,
            store=store,
            p2p=self.p2p,
            is_sequencer=self._sequencing,
            sequencer_id=lambda: self.sequencer_id,
            on_applied=self._on_block_applied,
            on_rolled_back=self._publish_all,
            reload_state=lambda: load_chain_state(store, self.goals),
            handle_forward=self._handle_forward,
            record=self.p2p.report,
            publish=self.events.publish,
            max_frame_bytes=settings.max_frame_bytes,
            on_fork=self._keep_fork_evidence,
            forward_token=lambda: self.settings_token,
            follows_blocks=lambda: self.consensus is None,
            evaluator=self.evaluation,
        )
        self.tau = TauBridge(
            settings,
            identity,
            datadir.store_file,
            self.metrics,
            roots=self._published_roots,
            is_committer=lambda: self.role in ("sequencer", "leader"),
            publish=self.events.publish,
        )
        self.admin_token = (
            settings.api_token.get_secret_value()
            if settings.api_token is not None
            else read_api_token(datadir)
        )
        # Contributions need a token only when the operator set IAN_API_TOKEN (§5).
        self.settings_token = (
            settings.api_token.get_secret_value() if settings.api_token is not None else None
        )
        if genesis is not None and is_multi_authority(genesis):
            self._enable_consensus(genesis)
        self._publish_all()
        self.bound = BoundAddresses()
        self._stop = anyio.Event()
        self._announce_send, self._announce_receive = anyio.create_memory_object_stream[Block](1000)

    # -- start-up ---------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings) -> Node:
        """Lock the data dir and load everything; raises IanError with a fix on any problem."""
        root = settings.data_dir
        # Before anything is created: a swap-mode restore may have stopped between its two
        # renames, and an empty data dir made here would become a new identity.
        _refuse_half_restored(root)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        datadir = DataDir(root)
        lock = NodeLock(datadir.lock_file)
        lock.acquire()
        try:
            _refuse_half_restored(root)
            if datadir.identity_file.exists():
                # Finish or undo a `certs rotate` that a crash interrupted, before init
                # would mistake a missing certs/ for a first start.
                done = recover_interrupted_rotation(datadir, load_identity(datadir.identity_file))
                if done:
                    log.warning("certificate rotation recovery: %s", done)
            init = init_data_dir(root, cert_valid_days=settings.cert_valid_days)
            for item in init.created:
                log.info("created %s", item)
            genesis = settle_genesis(settings, datadir, init.identity)
            role = role_for(settings, init.identity.node_id, genesis)[0]
            # With several authorities the fsynced consensus log is the record and the store is
            # re-applied from it after a crash: its commits need not wait for the disk too.
            store = Store(datadir.store_file, durable_commits=not is_multi_authority(genesis))
            specs = goals_of(genesis, settings.all_goals())
            saved = node_state_mod.read_node_state(datadir.node_state_file)
            if saved is not None and not saved.clean_shutdown:
                log.warning("the previous run did not shut down cleanly; checking roots")
            state = open_chain_state(
                store,
                specs,
                full=saved is None and store.head()[0] > 0,
                repair=role != "sequencer",
                saved_boards=node_state_mod.saved_leaderboards(saved),
                keep_copy=lambda: store.copy_to(
                    datadir.root
                    / f"damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.sqlite"
                ),
            )
            peer_book = PeerBook.load(datadir.peer_scores_file, ban_seconds=settings.ban_seconds)
            peer_book.configure(max_known=settings.max_known_peers)
            node = cls(
                settings, datadir, lock, init.identity, init.cert, store, state, peer_book, genesis
            )
            if saved is None and state.height > 0 and node.role == "sequencer":
                # A store without its state file: restored from a backup (restore omits it) or
                # its state was lost. Its followers may be ahead: take their blocks first.
                node.catching_up = True
            node.checkpoint(clean=False)
            return node
        except BaseException:
            lock.release()
            raise

    # -- views ------------------------------------------------------------------------------
    def _publish(self, goal_id: str) -> None:
        g = self.state.goals[goal_id]
        self.views[goal_id] = GoalView(
            spec=g.spec,
            log_size=g.mmr.size,
            log_root=g.mmr.root(),
            leaderboard=tuple(g.leaderboard.entries),
            leaderboard_root=g.leaderboard.root(),
        )

    def _publish_all(self) -> None:
        for gid in self.state.goals:
            self._publish(gid)
        self.head = (self.state.height, self.state.head_hash)

    async def resync(self) -> dict[str, Any]:
        """Drop the chain and fetch it again from peers (followers only)."""
        if self.consensus is not None:
            from ian.errors import ConflictError

            raise ConflictError(
                "resync is for one-authority chains: on this network a node takes certified "
                "blocks from the leader and never drops what it has"
            )
        return await self.replicator.force_resync()

    # -- consensus (several authorities) ------------------------------------------------------
    def _enable_consensus(self, genesis: Genesis) -> None:
        """Build the consensus driver for ``genesis`` (started by :meth:`run`, or now when
        the genesis was learned from a seed while running)."""
        import random

        from ian.consensus import ConsensusCore, ConsensusParams, IdentitySigner
        from ian.identity import verify_signature
        from ian.storage.consensus_log import RESTART_KEEP, ConsensusLog

        p = genesis.consensus
        log_store = ConsensusLog(self.datadir.consensus_file)
        durable = log_store.load(keep=RESTART_KEEP)
        resume = applied_mark(durable, self.state.height)
        if resume < durable.applied_height:
            log.warning(
                "the chain store is behind the consensus log (restored or repaired?): "
                "applying again from consensus height %d (was %d)",
                resume,
                durable.applied_height,
            )
            durable = dataclasses.replace(durable, applied_height=resume)
        core = ConsensusCore(
            chain_id=genesis.chain_id(),
            genesis_authorities={a.node_id: a.public_key_bytes for a in genesis.authorities},
            signer=IdentitySigner(self.identity),
            verifier=verify_signature,
            rng=random.SystemRandom(),
            params=ConsensusParams(
                election_timeout_min=p.election_timeout_min_ms / 1000,
                election_timeout_max=p.election_timeout_max_ms / 1000,
                heartbeat_interval=p.heartbeat_ms / 1000,
                max_blocks_per_message=CONSENSUS_BLOCKS_PER_MESSAGE,
                max_message_bytes=consensus_message_bytes(self.settings),
            ),
            state=durable,
        )
        self.consensus = ConsensusDriver(
            core=core,
            log_store=log_store,
            state=durable,
            switch=self.p2p,
            apply=self._apply_committed,
            tick_interval=min(0.05, p.heartbeat_ms / 2000),
            on_fork=self._keep_consensus_fork,
        )
        self.bridge = ChainBridge(
            state=self.state,
            store=self.store,
            identity=self.identity,
            driver=self.consensus,
            on_applied=self._on_block_applied,
            ready_timeout=p.election_timeout_max_ms / 1000,
            max_in_flight=self.settings.consensus_in_flight,
            evaluator=self.evaluation,
        )
        self.consensus.set_learners({peer.node_id for peer in self.p2p.peers()})
        self.p2p.status_min_interval = CONSENSUS_STATUS_INTERVAL_S
        log.info(
            "chain %s has %d authorities: consensus log %s (applied to height %d)",
            genesis.chain_id()[:16],
            len(genesis.authorities),
            self.datadir.consensus_file,
            durable.applied_height,
        )

    async def change_authority(self, op: str, node_id: str, public_key: bytes) -> int:
        """Add or remove one authority through the leader's consensus log; the committed
        height. Raises a :class:`RequestError` saying why when it cannot be done as asked."""
        from ian.consensus import Accepted, AuthorityChange, Redirect, Rejected
        from ian.errors import ConflictError, InputError

        if self.consensus is None:
            raise ConflictError(
                "this chain has one authority (its genesis names it): it cannot change authorities",
                fix="start a network of 3 with `ian network init --authority ...`",
            )
        if op == "add" and len(public_key) != 32:
            raise InputError("adding an authority needs its public_key", field="public_key")
        if op == "add":
            from ian.identity import node_id_for

            if node_id_for(public_key) != node_id:
                raise InputError(
                    f"public_key belongs to node {node_id_for(public_key)}, not {node_id}",
                    field="public_key",
                )
        change = AuthorityChange("add" if op == "add" else "remove", node_id, public_key)
        outcome = await self.consensus.propose_change(change)
        if isinstance(outcome, Accepted):
            log.warning("authority change committed: %s %s", op, node_id)
            return outcome.height
        if isinstance(outcome, Redirect):
            raise ConflictError(
                f"this node does not lead: run it on the leader {outcome.leader}",
                fix=f"ian network authorities {op} ... against the API of node {outcome.leader}",
            )
        if isinstance(outcome, Rejected):
            raise ConflictError(f"refused: {outcome.reason}")
        raise UnavailableError(
            "no leader could commit the change now (an election, or another change not yet "
            "committed); it may still commit: check `ian status`",
            retry_after=outcome.retry_after,
        )

    def _keep_consensus_fork(self, evidence: ForkEvidence) -> None:
        """Two valid commit certificates at one height: keep both blocks and certificates
        (the same file and counter as a one-authority fork)."""
        from ian.consensus.codec import block_to_doc, commit_certificate_to_doc

        self._keep_fork_evidence(
            {
                "height": evidence.height,
                "kind": "commit_certificates",
                "ours": {
                    "block": block_to_doc(evidence.our_block),
                    "certificate": commit_certificate_to_doc(evidence.ours),
                },
                "theirs": {
                    "block": block_to_doc(evidence.their_block),
                    "certificate": commit_certificate_to_doc(evidence.theirs),
                },
            }
        )

    async def _apply_committed(self, blocks: list[Any]) -> None:
        assert self.bridge is not None
        await self.bridge.apply(blocks)

    async def _commit_batch(self, contributions: list[Contribution]) -> BatchResult:
        if self.bridge is None:
            raise UnavailableError("consensus is not running yet", retry_after=1.0)
        return await self.bridge.commit_batch(contributions)

    def _on_batch(self, result: BatchResult, seconds: float) -> None:
        for outcome in result.outcomes:  # event stream: every decision of this sequencer
            # With consensus, accepted ones are published when their block is applied.
            if self.consensus is None or not outcome.accepted:
                self.events.publish("contribution", *outcome_event(outcome))
        if result.block is None:
            return
        self.metrics.block_commit_latency.observe(seconds)
        if self.consensus is not None:
            return  # applied, published and sent on by the consensus driver
        self._on_block_applied(result.block)
        # A follower that misses an announce catches up by sync.
        with contextlib.suppress(anyio.WouldBlock):
            self._announce_send.send_nowait(result.block)

    def _on_block_applied(self, block: Block) -> None:
        """After a block is durable here (made by this sequencer or received): publish it."""
        self.metrics.blocks_applied.inc()
        self.metrics.block_entries.observe(len(block.entries))
        for gid in block.header.goals:
            self._publish(gid)
        # Published with the views: a worker thread may already be applying later blocks.
        self.head = (block.height, block.hash)
        self.tau.notify()
        self.p2p.announce_status()
        # Event stream; a lone sequencer already published its decisions in _on_batch.
        if self.consensus is not None or self._role != "sequencer":
            publish_block_contributions(self.events, block)
        self.events.publish("block", "applied", block_data(block))

    def _published_roots(self) -> dict[str, tuple[GoalRoots, int]]:
        height = self.head[0]
        return {
            gid: (
                GoalRoots(v.log_size, v.log_root, len(v.leaderboard), v.leaderboard_root),
                height,
            )
            for gid, v in self.views.items()
            if v.log_size
        }

    async def _announce_loop(self) -> None:
        async with self._announce_receive:
            async for block in self._announce_receive:
                await self.replicator.announce(block)

    # -- roles and contributions --------------------------------------------------------------
    @property
    def role(self) -> str:
        """``sequencer`` / ``follower`` on a one-authority chain; with several authorities
        ``leader``, ``authority`` (a voter that does not lead now) or ``follower``."""
        if self.consensus is None:
            return self._role
        core = self.consensus.core
        if core.role is ConsensusRole.LEADER:
            return "leader"
        return "authority" if self.identity.node_id in core.authorities() else "follower"

    @property
    def sequencer_id(self) -> str | None:
        """Who orders blocks now: the sequencer, or the leader proved by an election
        certificate (None: unknown, e.g. during an election)."""
        if self.consensus is not None:
            return self.consensus.core.leader_id
        return self.identity.node_id if self._role == "sequencer" else self._sequencer_id

    def _on_peer_event(self, event: object) -> None:
        if self.consensus is not None and isinstance(event, PeerConnected | PeerDisconnected):
            self.consensus.set_learners({peer.node_id for peer in self.p2p.peers()})
        if not isinstance(event, PeerConnected):
            return
        peer = event.peer
        self._peer_seen.set()
        # The sequencer is never learned from a peer's claim: only from a genesis (pinned, or
        # fetched from a seed by the genesis exchange) or from IAN_SEQUENCER.
        if peer.height > self.state.height:
            self.replicator.wake()

    def _adopt_genesis(self, genesis: Genesis, source: PeerInfo) -> None:
        """A seed gave this genesis-less node its chain (verified against the hello's chain
        id): check it against the settings, pin it, follow its authority."""
        chain = genesis.chain_id()
        try:
            check_genesis(genesis, self.settings, self.identity.node_id, self.goals)
            if genesis.authority_ids[0] == self.identity.node_id:
                raise GenesisError(
                    f"chain {chain[:16]}…'s genesis names this node as its authority",
                    fix="restart the node with IAN_GENESIS set to that genesis",
                )
        except GenesisError as exc:
            log.error("cannot join chain %s from %s: %s (%s)", chain, source.node_id, exc, exc.fix)
            return
        from ian.atomic import atomic_write_bytes

        atomic_write_bytes(self.datadir.genesis_file, genesis.to_json().encode(), mode=0o644)
        self.genesis = genesis
        self._sequencer_id = genesis.authority_ids[0]
        self.p2p.set_chain_id(chain)
        if is_multi_authority(genesis):
            self._enable_consensus(genesis)
            assert self.consensus is not None and self._tg is not None
            self._tg.start_soon(self.consensus.run)
            log.warning(
                "chain %s: genesis from seed %s (trust on first use), now pinned; %d "
                "authorities (pin the chain on other nodes with IAN_CHAIN_ID=%s)",
                chain,
                source.node_id,
                len(genesis.authorities),
                chain,
            )
            return
        log.warning(
            "chain %s: genesis from seed %s (trust on first use), now pinned; following "
            "sequencer %s (pin the chain on other nodes with IAN_CHAIN_ID=%s)",
            chain,
            source.node_id,
            self._sequencer_id,
            chain,
        )
        self.replicator.wake()  # sync from the seed now, not at the next periodic look

    def _keep_fork_evidence(self, evidence: dict[str, Any]) -> None:
        """Both blocks of a fork go to ``fork-evidence-<height>-<UTC>.json`` (kept until an
        operator removes it); the counter feeds the IANForkEvidence alert."""
        from ian.atomic import atomic_write_json

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.datadir.root / f"fork-evidence-{evidence['height']}-{stamp}.json"
        try:
            atomic_write_json(path, evidence, mode=0o644)
        except IanError as exc:
            log.error("could not keep the fork evidence in %s: %s", path, exc)
        else:
            log.critical("fork evidence kept in %s", path)
        self.metrics.fork_evidence.inc()

    @property
    def api_fronts(self) -> ApiFronts | None:
        """The API front processes (``api_workers``), while the node runs with some."""
        return self.api_server.fronts if self.api_server is not None else None

    def http_ban_reason(self, ip: str) -> str | None:
        """Why ``ip`` may not use the HTTP API or the event stream (an IP/CIDR ban from
        ``ian peers ban``, shared with P2P), or None. 127.0.0.1 and ::1 are never refused, so
        the operator's own ``ian`` keeps working."""
        if ip in ("127.0.0.1", "::1"):
            return None
        return self.peer_book.ban_reason(ip=ip)

    def _sequencing(self) -> bool:
        """This node orders blocks now (the sequencer done catching up, or the leader)."""
        if self.consensus is not None:
            return self.consensus.core.role is ConsensusRole.LEADER
        return self._role == "sequencer" and not self.catching_up

    def _refuse_while_catching_up(self) -> None:
        if self.catching_up:
            raise UnavailableError(
                "the sequencer is catching up with its peers before it sequences", retry_after=2
            )

    def _sequences_here(self) -> bool:
        """Whether a contribution is sequenced here (True) or forwarded to the sequencer or
        leader (False); UnavailableError when neither can happen now."""
        if self.consensus is not None:
            if self._sequencing():
                return True
            if self.consensus.core.leader_id is None:
                raise UnavailableError(
                    "no leader is known: an election is running or a majority of authorities "
                    "is unreachable",
                    retry_after=1.0,
                )
            return False
        if self._role == "sequencer":
            self._refuse_while_catching_up()
            return True
        return False

    async def _submit(self, c: Contribution) -> Outcome:
        if self._sequences_here():
            return await self.sequencer.submit(c)
        return await self.replicator.forward(c)

    def submit_soon(self, c: Contribution, on_done: OnDone) -> None:
        """:meth:`_submit` without waiting: ``on_done`` gets the outcome or the error. Errors
        known at once (catching up, no leader, a full queue) are raised here."""
        if self._sequences_here():
            self.sequencer.enqueue(c, on_done)
            return
        if self._tg is None:
            raise UnavailableError("the node is not running")

        async def forward() -> None:
            try:
                outcome = await self.replicator.forward(c)
            except Exception as exc:
                on_done(None, exc)
            else:
                on_done(outcome, None)

        self._tg.start_soon(forward)

    async def _handle_forward(self, c: Contribution, peer: PeerInfo, token: str | None) -> Outcome:
        """A peer forwarded ``c``: the same gate as ``POST /contribute``, then sequence it.

        When submissions need a token, the forward must carry it or come from a peer listed
        in ``forward_from`` (the token cannot be bypassed over P2P). A peer that is neither
        trusted nor token-bearing is one more client: the per-client limit applies to it
        (keyed by its node id); the per-contributor limit applies to every forward."""
        self._refuse_while_catching_up()
        expected = self.settings_token
        token_ok = expected is not None and token is not None
        token_ok = token_ok and hmac.compare_digest(token or "", expected or "")
        trusted = token_ok or self._forward_listed(peer)
        if expected is not None and not trusted:
            raise AuthError(
                "forwarded contributions need the submission token or a peer listed in "
                "forward_from",
                fix="give every node the same IAN_API_TOKEN, or list the peer in IAN_FORWARD_FROM",
            )
        if not trusted:
            self.intake.check_client(f"peer:{peer.node_id}")
        return await self.sequencer.submit(self.intake.admit(c))

    def _forward_listed(self, peer: PeerInfo) -> bool:
        allowed = self.settings.forward_from
        if not allowed:
            return False
        if peer.node_id in allowed:
            return True
        try:
            ip = ipaddress.ip_address(peer.remote_ip)
        except ValueError:
            return False
        return any(
            "/" in entry and ip in ipaddress.ip_network(entry, strict=False) for entry in allowed
        )

    async def _catch_up_before_sequencing(self) -> None:
        """N = 1 start-up: wait (bounded) for a peer, take every block peers prove above our
        height, then sequence. A restored sequencer thus continues its chain where its
        followers are instead of re-sequencing heights they hold."""
        with anyio.move_on_after(CATCH_UP_WAIT_S):
            await self._peer_seen.wait()
            await anyio.sleep(CATCH_UP_SETTLE_S)  # peers reconnecting together: hear them all
        if self.p2p.peer_count:
            applied = await self.replicator.catch_up()
            if applied:
                self._publish_all()
            log.info("caught up with peers before sequencing: %d blocks applied", applied)
        else:
            log.warning(
                "no peer reachable within %.0f s: sequencing from height %d",
                CATCH_UP_WAIT_S,
                self.state.height,
            )
        self.catching_up = False

    @property
    def height(self) -> int:
        """The published height: every view and root readers see belongs to it."""
        return self.head[0]

    @property
    def network_height(self) -> int:
        """The best chain height known to exist. With consensus: ours plus the committed
        blocks not applied here yet (an upper bound: some carry no contributions)."""
        if self.consensus is None:
            return self.replicator.network_height
        core = self.consensus.core
        return self.head[0] + max(0, core.commit_height - core.applied_height)

    @property
    def consensus_state(self) -> str:
        """ISOLATED / SYNCING / SYNCED / DIVERGED / FORKED (the runbook's states)."""
        if self.consensus is None:
            return self.replicator.consensus_state
        core = self.consensus.core
        if core.forked:
            return "FORKED"
        if self.p2p.peer_count == 0:
            return "ISOLATED"
        if core.leader_id is None or core.applied_height < core.commit_height:
            return "SYNCING"
        return "SYNCED"

    def snapshot(self) -> StateSnapshot:
        return StateSnapshot(
            started_at=self.started_at,
            height=self.head[0],
            network_height=self.network_height,
            peer_count=self.p2p.peer_count,
            banned_peers=self.peer_book.banned_count(),
            consensus_state=self.consensus_state,
            **self._consensus_figures(),
            breaker_state=self.tau.breaker_state,
            log_sizes={gid: v.log_size for gid, v in self.views.items()},
            cert_expiry=self.cert.not_after.timestamp(),
            last_backup=read_last_backup(self.datadir),
        )

    def _consensus_figures(self) -> dict[str, Any]:
        if self.consensus is None:
            role = {"sequencer": "leader"}.get(self._role, "follower")
            return {"consensus_role": role, "commit_height": self.head[0]}
        d = self.consensus
        return {
            "consensus_role": self.role,
            "term": d.core.term,
            "commit_height": d.core.commit_height,
            "consensus_memory_bytes": d.core.memory_bytes,
            "leader_changes": d.leader_changes,
            "elections": d.elections,
        }

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """Named readiness checks: (ok, detail). /readyz is 200 only when all pass."""
        st = self.settings
        checks: dict[str, tuple[bool, str]] = {
            "store": (True, f"height {self.state.height}"),
            "p2p": (
                self.p2p.bound_address is not None,
                "listening" if self.p2p.bound_address else "not listening",
            ),
        }
        if self.role == "sequencer":
            closed = self.sequencer.closed
            if self.catching_up:
                checks["sequencer"] = (False, "catching up with peers before sequencing")
            else:
                checks["sequencer"] = (not closed, "shutting down" if closed else "accepting")
        if st.seed_nodes:
            peers = self.p2p.peer_count
            checks["peers"] = (peers >= st.min_peers, f"{peers} connected, need {st.min_peers}")
        if self.consensus is not None:
            leader = self.consensus.core.leader_id
            checks["leader"] = (
                leader is not None,
                f"leader {leader}" if leader else "no leader known (election running?)",
            )
        lag = max(0, self.network_height - self.head[0])
        checks["sync"] = (
            lag <= st.sync_lag_ready_threshold,
            f"lag {lag} (threshold {st.sync_lag_ready_threshold})",
        )
        state = self.consensus_state
        checks["consensus"] = (state not in ("DIVERGED", "FORKED"), state)
        return checks

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, *, clean: bool) -> None:
        """Rewrite node_state.json atomically from the published views."""
        st = node_state_mod.NodeState(
            node_id=self.identity.node_id,
            saved_at=time.time(),
            height=self.head[0],
            head_hash=self.head[1].hex(),
            clean_shutdown=clean,
            role=self.role,
            goals={
                gid: node_state_mod.GoalSummary(
                    log_size=v.log_size,
                    log_root=v.log_root.hex(),
                    leaderboard_size=len(v.leaderboard),
                    leaderboard_root=v.leaderboard_root.hex(),
                    last_tau_commit=self.tau.last_commit(gid),
                    leaderboard=[
                        (e.log_index, e.score, e.contribution_hash.hex(), e.contributor_id)
                        for e in v.leaderboard
                    ],
                )
                for gid, v in self.views.items()
            },
        )
        node_state_mod.write_node_state(self.datadir.node_state_file, st)

    async def _cert_renewal_loop(self) -> None:
        """Renew the P2P certificate before it expires (``cert_renew_days``), hourly checks."""
        while True:
            if renewal_due(self.cert, datetime.now(UTC), self.settings.cert_renew_days):
                try:
                    await anyio.to_thread.run_sync(self._renew_certificate)
                except Exception as exc:  # retried at the next check
                    log.error("automatic certificate renewal failed: %s", exc)
            await anyio.sleep(3600)

    def _renew_certificate(self) -> None:
        with maintenance_lock(self.datadir.root, exclusive=True):
            rotate_certificate(self.datadir, self.identity, self.settings.cert_valid_days)
        log.info("certificate was due for renewal: rotated")
        self.reload_certificates()

    async def _checkpoint_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.checkpoint_interval_s)
            await anyio.to_thread.run_sync(lambda: self.checkpoint(clean=False))

    # -- control ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the certificate and the log level from the environment/config."""
        from ian.config import load_settings

        try:
            self.reload_certificates()
            fresh = load_settings(overrides={"data_dir": self.settings.data_dir})
            set_level(fresh.log_level)
            log.info(
                "reloaded certificate (expires %s) and log level %s",
                self.cert.not_after.isoformat(),
                fresh.log_level,
            )
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)

    def reload_certificates(self) -> CertInfo:
        """Re-read certs/ (after `ian certs rotate`): new P2P connections use the new pair,
        established ones stay up."""
        self.cert = self.p2p.reload_tls()
        log.info(
            "certificate reloaded: %s, expires %s",
            self.cert.fingerprint_sha256[:16],
            self.cert.not_after.isoformat(),
        )
        return self.cert

    async def _watch_signals(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            # Handlers are installed: from now on SIGTERM means a clean shutdown.
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    self.request_stop()

    # -- run --------------------------------------------------------------------------------
    async def run(
        self,
        *,
        handle_signals: bool = True,
        freeze_gc: bool = False,
        task_status: TaskStatus[BoundAddresses] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`request_stop` or a signal; always closes the store and the lock.

        ``freeze_gc``: once started (before logging that it serves), keep what start-up made
        out of the cyclic garbage collector's full collections (:func:`freeze_start_up_objects`);
        for a process that runs one node (``ian node run``), not for one that starts many."""
        from ian.api.server import ApiServer
        from ian.api.ws import EventStreamServer

        try:
            async with anyio.create_task_group() as outer:
                await outer.start(self.sequencer.run)
                api = ApiServer(self, self.settings.api_host, self.settings.api_port)
                self.api_server = api
                ws_host, ws_port = self.settings.api_host, self.settings.ws_port
                ws = EventStreamServer(
                    self.events,
                    lambda: self.admin_token,
                    ws_host,
                    ws_port,
                    banned=self.http_ban_reason,
                )
                async with anyio.create_task_group() as inner:
                    self._tg = inner
                    if handle_signals:  # first: a SIGTERM during start-up still stops cleanly
                        await inner.start(self._watch_signals)
                    self.bound.p2p = await inner.start(self.p2p.run)
                    if self.consensus is not None:
                        await inner.start(self.consensus.run)
                    await inner.start(self.replicator.run)
                    await inner.start(self.tau.run)
                    inner.start_soon(self._announce_loop)
                    if self.catching_up:
                        inner.start_soon(self._catch_up_before_sequencing)
                    self.bound.api = await inner.start(api.serve)
                    self.bound.ws = await inner.start(ws.serve)
                    inner.start_soon(self._checkpoint_loop)
                    inner.start_soon(self._cert_renewal_loop)
                    if freeze_gc:  # before "serving": its pause (~60 ms) is part of start-up
                        freeze_start_up_objects()
                    log.info(
                        "node %s (%s) p2p on tcp://%s:%d",
                        self.identity.node_id,
                        self.role,
                        *self.bound.p2p,
                    )
                    log.info(
                        "node %s serving the API on http://%s:%d (height %d)",
                        self.identity.node_id,
                        *self.bound.api,
                        self.state.height,
                    )
                    log.info("node %s events on ws://%s:%d", self.identity.node_id, *self.bound.ws)
                    task_status.started(self.bound)
                    await self._stop.wait()
                    with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
                        await api.shutdown()
                        self.events.close()  # every event stream ends with 1001
                        await ws.shutdown()
                    inner.cancel_scope.cancel()
                self.sequencer.close()
            self.peer_book.save()
            self.checkpoint(clean=True)
            log.info("stopped cleanly at height %d", self.state.height)
        finally:
            self.close()

    def close(self) -> None:
        self.evaluation.close()
        self.tau.close()
        if self.consensus is not None:
            self.consensus.log_store.close()
        self.store.close()
        self.lock.release()


def freeze_start_up_objects() -> None:
    """Collect the garbage once, then exempt every object alive now from later collections
    (:func:`gc.freeze`). A started node holds ~90,000 objects the collector tracks (the API app
    and its schemas, the chain state, the modules); every full collection walked them all:
    pauses of ~80 ms under the HTTP bench, ~12-18 ms with them frozen. Frozen objects are still
    freed when their last reference goes; only a reference cycle among them would be kept."""
    gc.collect()
    gc.freeze()


def is_multi_authority(genesis: Genesis | None) -> bool:
    """A chain of several authorities: quorum commit through the consensus driver."""
    return genesis is not None and len(genesis.authorities) > 1


def consensus_message_bytes(settings: Settings) -> int:
    """Payload bytes of one consensus message: base64 in JSON (4/3) plus the certificates and
    message fields must still fit one P2P frame."""
    return (settings.max_frame_bytes - FRAME_OVERHEAD) * 5 // 8


def block_bytes_for(settings: Settings, genesis: Genesis | None) -> int:
    """The most wire bytes of contributions one block takes: one P2P frame for a lone
    sequencer; with consensus, a quarter of a message's payload budget (a message carries
    several), never below one largest contribution."""
    from ian.chain.contributions import wire_size_bound

    frame = settings.max_frame_bytes - FRAME_OVERHEAD
    if not is_multi_authority(genesis):
        return frame
    share = consensus_message_bytes(settings) // 4
    return max(share, wire_size_bound(settings.max_parameters_bytes))


def role_for(
    settings: Settings, node_id: str, genesis: Genesis | None = None
) -> tuple[str, str | None]:
    """("sequencer" | "follower", the sequencer id a follower follows, or None to learn it).

    With a genesis, its one authority is the sequencer (a follower never learns it from a
    claim); with several, "authority" or "follower" and no fixed sequencer (the authorities
    elect a leader). Without: ``sequencer`` = "self" or this node's id → sequencer; "" →
    sequencer without seeds, else a follower that learns the sequencer from its peers; another
    id → follower of it.
    """
    if is_multi_authority(genesis):
        assert genesis is not None
        return ("authority" if node_id in genesis.authority_ids else "follower"), None
    if genesis is not None:
        leader = genesis.authority_ids[0]
        return ("sequencer", None) if leader == node_id else ("follower", leader)
    configured = settings.sequencer
    if configured in ("self", node_id) or (not configured and not settings.seed_nodes):
        return "sequencer", None
    return "follower", configured or None


def check_genesis(
    genesis: Genesis, settings: Settings, node_id: str, goals: list[GoalSpec] | None = None
) -> None:
    """Raise :class:`GenesisError` (one line) when ``settings`` contradict ``genesis``: more
    another network, an ``IAN_SEQUENCER`` that is not its
    authority, or configured goals (``goals``, default the configured ``[[goals]]``) that are not
    its goals."""
    if genesis.network != settings.network_id:
        raise GenesisError(
            f"genesis is network {genesis.network!r}, but network_id is {settings.network_id!r}",
            fix=f"set IAN_NETWORK_ID={genesis.network}",
        )
    leader = genesis.authority_ids[0]
    configured = settings.sequencer
    wanted = node_id if configured == "self" else configured
    if wanted and is_multi_authority(genesis):
        raise GenesisError(
            f"sequencer is set to {wanted}, but this genesis's "
            f"{len(genesis.authorities)} authorities elect their leader",
            fix="unset IAN_SEQUENCER: the authorities decide who leads",
        )
    if wanted and wanted != leader:
        raise GenesisError(
            f"sequencer is set to {wanted}, but the genesis names {leader} as its authority",
            fix="unset IAN_SEQUENCER: the genesis decides who sequences",
        )
    if goals is None and not settings.goals:
        return
    mine = goals if goals is not None else settings.all_goals()
    if [g.model_dump() for g in mine] != [g.model_dump() for g in genesis.goals]:
        ids = ", ".join(g.id for g in mine)
        theirs = ", ".join(g.id for g in genesis.goals)
        raise GenesisError(
            f"configured goals ({ids}) differ from the genesis goals ({theirs})",
            fix="remove the [[goals]] tables: goals come from the genesis",
        )


def settle_genesis(settings: Settings, datadir: DataDir, identity: Identity) -> Genesis | None:
    """Start-up: decide the genesis (:func:`ian.chain.genesis.resolve_genesis`), pin it in
    the data dir when new, and check the settings agree with it. Raises
    :class:`GenesisError` (one line, exit 3) on any disagreement."""
    from ian.atomic import atomic_write_bytes

    path = datadir.genesis_file
    stored = read_genesis(datadir)
    given = Genesis.read(settings.genesis) if settings.genesis is not None else None
    decision = resolve_genesis(
        stored=stored,
        given=given,
        given_path=str(settings.genesis) if settings.genesis is not None else None,
        chain_id=settings.chain_id,
        has_seeds=bool(settings.seed_nodes),
        leads_alone=role_for(settings, identity.node_id)[0] == "sequencer",
        make_own=lambda: Genesis.one_authority(
            identity.node_id,
            identity.public_key,
            settings.all_goals(),
            network=settings.network_id,
        ),
    )
    genesis = decision.genesis
    if genesis is None:
        log.info("%s", decision.how)
        return None
    check_genesis(genesis, settings, identity.node_id)
    chain = genesis.chain_id()
    if decision.pin:
        atomic_write_bytes(path, genesis.to_json().encode(), mode=0o644)
    log.info("chain %s: %s", chain, decision.how)
    return genesis
