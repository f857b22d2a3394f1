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

import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ian import node_state as node_state_mod
from ian.certs import CertInfo, load_certificate
from ian.chain import ChainState
from ian.config import Settings
from ian.datadir import DataDir, init_data_dir, read_api_token
from ian.errors import StoreError
from ian.goals import GoalSpec
from ian.identity import Identity
from ian.intake import Intake
from ian.leaderboard import LeaderboardEntry
from ian.lock import NodeLock
from ian.log_setup import set_level
from ian.metrics import NodeMetrics, StateSnapshot
from ian.recovery import load_chain_state, verify_store
from ian.sequencer import BatchResult, Sequencer
from ian.store import Store

log = logging.getLogger("ian.node")

SHUTDOWN_GRACE_S = 10.0


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
    extra: dict[str, Any] = field(default_factory=dict)


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
    ) -> None:
        self.settings = settings
        self.datadir = datadir
        self.lock = lock
        self.identity = identity
        self.cert = cert
        self.store = store
        self.state = state
        self.version = package_version()
        self.started_at = time.time()
        self.role = "sequencer"
        self.views: dict[str, GoalView] = {}
        self.last_backup_at: float | None = None
        self.metrics = NodeMetrics(self.snapshot)
        self.sequencer = Sequencer(
            state, store, identity, max_entries=settings.block_max_entries, on_batch=self._on_batch
        )
        self.intake = Intake(
            state.goals,
            store,
            self.sequencer.submit,
            self.metrics,
            contributor_rate=settings.contributor_rate,
            contributor_burst=settings.contributor_burst,
            client_rate=settings.client_rate,
            client_burst=settings.client_burst,
            max_parameters_bytes=settings.max_parameters_bytes,
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
        for gid in state.goals:
            self._publish(gid)
        self.bound = BoundAddresses()
        self._stop = anyio.Event()

    # -- start-up ---------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings) -> Node:
        """Lock the data dir and load everything; raises IanError with a fix on any problem."""
        root = settings.data_dir
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        datadir = DataDir(root)
        lock = NodeLock(datadir.lock_file)
        lock.acquire()
        try:
            init = init_data_dir(root, cert_valid_days=settings.cert_valid_days)
            for item in init.created:
                log.info("created %s", item)
            store = Store(datadir.store_file)
            specs = settings.all_goals()
            saved = node_state_mod.read_node_state(datadir.node_state_file)
            if saved is None and datadir.store_file.exists() and store.head()[0] > 0:
                log.warning("node_state.json is missing: verifying the whole store from genesis")
                report = verify_store(store, specs)
                if not report.ok:
                    raise StoreError(
                        f"store verification failed at block {report.first_bad_height}: "
                        f"{report.problem}",
                        fix="restore a backup with `ian restore`, or `ian node resync`",
                    )
                log.info(
                    "store verified: %d blocks, %d contributions",
                    report.blocks,
                    report.contributions,
                )
            elif saved is not None and not saved.clean_shutdown:
                log.warning("the previous run did not shut down cleanly; checking roots")
            state = load_chain_state(store, specs)
            node = cls(settings, datadir, lock, init.identity, init.cert, store, state)
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

    def _on_batch(self, result: BatchResult, seconds: float) -> None:
        if result.block is None:
            return
        self.metrics.blocks_applied.inc()
        self.metrics.block_commit_latency.observe(seconds)
        self.metrics.block_entries.observe(len(result.block.entries))
        for gid in result.block.header.goals:
            self._publish(gid)

    @property
    def height(self) -> int:
        return self.state.height

    def snapshot(self) -> StateSnapshot:
        return StateSnapshot(
            started_at=self.started_at,
            height=self.state.height,
            network_height=self.state.height,
            consensus_state="ISOLATED",
            log_sizes={gid: v.log_size for gid, v in self.views.items()},
            cert_expiry=self.cert.not_after.timestamp(),
            last_backup=self.last_backup_at,
        )

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """Named readiness checks: (ok, detail). /readyz is 200 only when all pass."""
        closed = self.sequencer.closed
        return {
            "store": (True, f"height {self.state.height}"),
            "sequencer": (not closed, "shutting down" if closed else "accepting"),
        }

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, *, clean: bool) -> None:
        """Rewrite node_state.json atomically from the published views."""
        st = node_state_mod.NodeState(
            node_id=self.identity.node_id,
            saved_at=time.time(),
            height=self.state.height,
            head_hash=self.state.head_hash.hex(),
            clean_shutdown=clean,
            role=self.role,
            goals={
                gid: node_state_mod.GoalSummary(
                    log_size=v.log_size,
                    log_root=v.log_root.hex(),
                    leaderboard_size=len(v.leaderboard),
                    leaderboard_root=v.leaderboard_root.hex(),
                )
                for gid, v in self.views.items()
            },
        )
        node_state_mod.write_node_state(self.datadir.node_state_file, st)

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
            self.cert = load_certificate(self.datadir.certs_dir, self.identity)
            fresh = load_settings(overrides={"data_dir": self.settings.data_dir})
            set_level(fresh.log_level)
            log.info(
                "reloaded certificate (expires %s) and log level %s",
                self.cert.not_after.isoformat(),
                fresh.log_level,
            )
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
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
        task_status: TaskStatus[BoundAddresses] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`request_stop` or a signal; always closes the store and the lock."""
        from ian.api.server import ApiServer

        try:
            async with anyio.create_task_group() as outer:
                await outer.start(self.sequencer.run)
                api = ApiServer(self, self.settings.api_host, self.settings.api_port)
                async with anyio.create_task_group() as inner:
                    self.bound.api = await inner.start(api.serve)
                    inner.start_soon(self._checkpoint_loop)
                    if handle_signals:
                        inner.start_soon(self._watch_signals)
                    log.info(
                        "node %s serving the API on http://%s:%d (height %d)",
                        self.identity.node_id,
                        *self.bound.api,
                        self.state.height,
                    )
                    task_status.started(self.bound)
                    await self._stop.wait()
                    with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
                        await api.shutdown()
                    inner.cancel_scope.cancel()
                self.sequencer.close()
            self.checkpoint(clean=True)
            log.info("stopped cleanly at height %d", self.state.height)
        finally:
            self.close()

    def close(self) -> None:
        self.store.close()
        self.lock.release()


def free_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one); IPv6 when the host says so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock
