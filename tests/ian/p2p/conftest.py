"""Helpers that make real P2P services (real data dirs, a real PeerBook, peer exchange).

``cluster`` runs them on the in-memory transport (:mod:`ian.p2p.memory`: no sockets, the same
certificate identities); ``tls_cluster`` on loopback TCP + TLS, for the end-to-end checks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from ian.config import Settings
from ian.metrics import NodeMetrics
from ian.p2p.memory import MemoryNetwork
from ian.p2p.peer_book import PeerBook
from ian.p2p.pex import PeerExchange
from ian.p2p.switch import P2PService, P2PTuning, PeerConnected, PeerDisconnected
from ian.p2p.transport import TlsCredentials, TlsTransport, Transport
from ian.storage.datadir import InitResult, init_data_dir

FAST = P2PTuning(
    handshake_timeout=2.0,
    ping_interval=5.0,
    idle_timeout=10.0,
    request_timeout=5.0,
    reconnect_base=0.05,
    reconnect_cap=0.3,
    exchange_interval=30.0,
    maintenance_interval=0.1,
    close_grace=0.5,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Node:
    """One running service plus what tests inspect."""

    init: InitResult
    service: P2PService
    book: PeerBook
    metrics: NodeMetrics
    events: list[Any] = field(default_factory=list)
    scope: anyio.CancelScope | None = None

    @property
    def node_id(self) -> str:
        return self.init.identity.node_id

    @property
    def address(self) -> str:
        host, port = self.service.bound_address  # type: ignore[misc]
        return f"tcp://{host}:{port}"

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking on every peer event (no polling)."""
        with anyio.fail_after(within):
            while not predicate():
                changed = anyio.Event()
                self._waiters.append(changed)
                await changed.wait()

    def __post_init__(self) -> None:
        self._waiters: list[anyio.Event] = []

        def listener(event: Any) -> None:
            self.events.append(event)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.set()

        self.service.add_listener(listener)

    def connected(self, other: Node) -> bool:
        return other.node_id in {p.node_id for p in self.service.peers()}

    def disconnects(self) -> list[PeerDisconnected]:
        return [e for e in self.events if isinstance(e, PeerDisconnected)]

    def connects(self) -> list[PeerConnected]:
        return [e for e in self.events if isinstance(e, PeerConnected)]


class Cluster:
    """Starts services in one task group; each can be stopped on its own. On ``network`` (the
    in-memory transport) when given, else on loopback TLS."""

    def __init__(
        self, tmp_path: Path, tg: anyio.abc.TaskGroup, network: MemoryNetwork | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.tg = tg
        self.network = network
        self.count = 0

    def transport_for(self, init: InitResult) -> Transport:
        """The transport a node made from ``init`` uses on this cluster's network."""
        if self.network is not None:
            return self.network.transport(init.datadir.certs_dir, init.identity)
        return TlsTransport(TlsCredentials(init.datadir.certs_dir, init.identity))

    def make(self, name: str | None = None, **overrides: Any) -> tuple[InitResult, Settings]:
        self.count += 1
        root = self.tmp_path / (name or f"node{self.count}")
        init = init_data_dir(root)
        values: dict[str, Any] = {
            "data_dir": root,
            "p2p_host": "127.0.0.1",
            "p2p_port": 0,
            "network_id": "ian-test",
            "min_peers": 0,
        }
        values.update(overrides)
        return init, Settings(**values)

    async def start(
        self,
        name: str | None = None,
        *,
        tuning: P2PTuning = FAST,
        init: InitResult | None = None,
        pex: bool = True,
        **overrides: Any,
    ) -> Node:
        """A running service; with ``pex`` (as the node wires it) also peer exchange."""
        if init is None:
            init, settings = self.make(name, **overrides)
        else:
            values = {"data_dir": init.datadir.root, "p2p_host": "127.0.0.1"}
            values |= {"p2p_port": 0, "network_id": "ian-test"} | overrides
            settings = Settings(**values)
        book = PeerBook.load(init.datadir.peer_scores_file, ban_seconds=settings.ban_seconds)
        metrics = NodeMetrics()
        service = P2PService(
            settings,
            init.identity,
            init.datadir,
            book,
            metrics,
            height_provider=lambda: (7, b"\x11" * 32),
            tuning=tuning,
            transport=self.transport_for(init),
        )
        if pex:
            PeerExchange(service)
        node = Node(init=init, service=service, book=book, metrics=metrics)
        scope = anyio.CancelScope()
        node.scope = scope

        async def runner(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                with scope:
                    await service.run(task_status=task_status)
            except Exception:
                # It cancels the test through the cluster's task group; pytest's anyio runner
                # can lose the exception itself then, the captured log keeps it.
                logging.getLogger("tests.cluster").exception("node %s failed", service.node_id)
                raise

        await self.tg.start(runner)
        return node


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Services on one in-memory network."""
    async with anyio.create_task_group() as tg:
        yield Cluster(tmp_path, tg, MemoryNetwork())
        tg.cancel_scope.cancel()


@pytest.fixture(params=["memory", "tls"])
async def each_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Both: for the checks that must hold on the twin and end to end over TLS alike."""
    async with anyio.create_task_group() as tg:
        yield Cluster(tmp_path, tg, MemoryNetwork() if request.param == "memory" else None)
        tg.cancel_scope.cancel()


@pytest.fixture
async def tls_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Services on loopback TCP + TLS."""
    async with anyio.create_task_group() as tg:
        yield Cluster(tmp_path, tg)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield
