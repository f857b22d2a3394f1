"""P2P benchmark: TLS set-up rate, request/response latency, memory per connection.

Everything runs on loopback with the real stack (TCP, pyOpenSSL TLS 1.3 over memory BIOs, frames,
msgspec messages, the P2PService).

1. **Set-up rate.** (a) transport only: ``connect_tcp`` + ``tls_handshake`` (mutual TLS,
   certificate verification) + close, sequentially; (b) a full ``P2PService.connect`` (TLS +
   admission + hello exchange + registration) followed by ``disconnect``, sequentially.
2. **Round trip.** ``request(ping)`` between two connected services: sequential latency p50/p99,
   and throughput with 64 requests in flight.
3. **Memory.** One service in a *separate process* (so its RSS is its own) accepts ``max_peers``
   connections from services in this process; RSS (``VmRSS`` from ``/proc/<pid>/status``) before
   and after, and the difference per connection.

Usage: ``.venv/bin/python bench/p2p_bench.py [--quick] [--json-only] [--peers N]``.
Writes ``bench/results/p2p.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from common import base_parser, emit, environment, percentile, render_table
from ian.config import Settings
from ian.metrics import NodeMetrics
from ian.p2p.messages import Ping
from ian.p2p.peer_book import PeerBook
from ian.p2p.pex import PeerExchange
from ian.p2p.switch import P2PService, P2PTuning, PeerConnected, PeerDisconnected
from ian.p2p.transport import TlsCredentials, connect_tcp, tls_handshake
from ian.storage.datadir import init_data_dir

NAME = "p2p"


def make_service(root: Path, *, exchange: bool = True, **overrides: Any) -> P2PService:
    """A P2P service on loopback; ``exchange``: with peer exchange, as the node wires it."""
    init = init_data_dir(root)
    values: dict[str, Any] = {
        "data_dir": root,
        "p2p_host": "127.0.0.1",
        "p2p_port": 0,
        "min_peers": 0,
        "max_peers_per_ip": 1000,
    }
    values.update(overrides)
    settings = Settings(**values)
    book = PeerBook.load(init.datadir.peer_scores_file)
    service = P2PService(
        settings,
        init.identity,
        init.datadir,
        book,
        NodeMetrics(),
        tuning=P2PTuning(rate=1e9, burst=1e9, max_pending_handshakes=1000),
    )
    if exchange:
        PeerExchange(service)
    return service


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc (no psutil)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


class PeerEvents:
    """Await the next event of one kind (PeerConnected or PeerDisconnected) of a service (via
    its listener hook)."""

    def __init__(self, service: P2PService, kind: type[PeerConnected | PeerDisconnected]) -> None:
        self.kind = kind
        self.event = anyio.Event()
        service.add_listener(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, self.kind):
            self.event.set()

    async def wait(self) -> None:
        with anyio.fail_after(10):
            await self.event.wait()
        self.event = anyio.Event()


# --------------------------------------------------------------------------- measurements


async def setup_rate(tmp: Path, n: int) -> dict[str, Any]:
    # No peer exchange: it redials a peer that was just dropped (b, from a's side), and its
    # connection then replaces the closing one without a disconnection event, which the loop
    # below waits for (seen once in ~8 runs).
    a = make_service(tmp / "setup-a", exchange=False)
    b = make_service(tmp / "setup-b", exchange=False)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(a.run)
        await tg.start(b.run)
        creds = TlsCredentials(b.datadir.certs_dir, b.identity)

        t0 = time.perf_counter()
        for _ in range(n):
            sock = await connect_tcp(host, port)
            stream = await tls_handshake(sock, creds, server=False, expected_node_id=a.node_id)
            await stream.aclose()
        tls_s = time.perf_counter() - t0

        times = []
        a_gone, b_gone = PeerEvents(a, PeerDisconnected), PeerEvents(b, PeerDisconnected)
        a_has_b = PeerEvents(a, PeerConnected)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await b.connect(f"tcp://{host}:{port}", node_id=a.node_id)
            times.append(time.perf_counter() - t)
            # b is done when a's hello reaches it; a may not have taken b's yet. Closed before
            # that, the connection never was a peer of a's, which would then report no
            # disconnection to wait for.
            await a_has_b.wait()
            b.disconnect(a.node_id, "bench")
            # Both ends must have let go, or the next connect is refused as a duplicate.
            await a_gone.wait()
            await b_gone.wait()
        total_s = time.perf_counter() - t0
        tg.cancel_scope.cancel()
    times.sort()
    return {
        "connections": n,
        "tls_handshakes_per_s": n / tls_s,
        "p2p_connects_per_s_including_teardown": n / total_s,
        "p2p_connect_ms_p50": percentile(times, 50) * 1000,
        "p2p_connect_ms_p99": percentile(times, 99) * 1000,
    }


async def round_trip(tmp: Path, n: int) -> dict[str, Any]:
    a = make_service(tmp / "rtt-a")
    b = make_service(tmp / "rtt-b")
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(a.run)
        await tg.start(b.run)
        await b.connect(f"tcp://{host}:{port}")
        for _ in range(50):  # warm-up
            await b.request(a.node_id, Ping(nonce=1))
        times = []
        for i in range(n):
            t = time.perf_counter()
            await b.request(a.node_id, Ping(nonce=i))
            times.append(time.perf_counter() - t)

        in_flight = 64
        per_worker = max(1, n // in_flight)

        async def worker() -> None:
            for i in range(per_worker):
                await b.request(a.node_id, Ping(nonce=i))

        t0 = time.perf_counter()
        async with anyio.create_task_group() as workers:
            for _ in range(in_flight):
                workers.start_soon(worker)
        pipelined_s = time.perf_counter() - t0
        tg.cancel_scope.cancel()
    times.sort()
    return {
        "requests": n,
        "rtt_ms_p50": percentile(times, 50) * 1000,
        "rtt_ms_p99": percentile(times, 99) * 1000,
        "requests_per_s_sequential": n / sum(times),
        "requests_per_s_64_in_flight": per_worker * in_flight / pipelined_s,
    }


async def memory(tmp: Path, peers: int) -> dict[str, Any]:
    hub_dir = tmp / "hub"
    command = [sys.executable, __file__, "--hub", str(hub_dir), "--peers", str(peers)]
    async with await anyio.open_process(command) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive()
        hub_id, host, port = line.decode().split()
        rss_idle = rss_kib(proc.pid)
        clients = [make_service(tmp / f"client{i}") for i in range(peers)]
        async with anyio.create_task_group() as tg:
            for c in clients:
                await tg.start(c.run)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as dialers:
                for c in clients:
                    dialers.start_soon(partial(c.connect, f"tcp://{host}:{port}", node_id=hub_id))
            concurrent_s = time.perf_counter() - t0
            # A round trip from every client proves the hub registered every connection.
            for c in clients:
                await c.request(hub_id, Ping(nonce=0))
            rss_full = rss_kib(proc.pid)
            tg.cancel_scope.cancel()
        await proc.stdin.aclose()  # the hub exits when its stdin closes
        with anyio.fail_after(10):
            await proc.wait()
    return {
        "peers": peers,
        "concurrent_connects_s": concurrent_s,
        "hub_rss_idle_mib": rss_idle / 1024,
        "hub_rss_with_peers_mib": rss_full / 1024,
        "hub_rss_per_peer_kib": (rss_full - rss_idle) / peers,
    }


async def hub(root: Path, peers: int) -> None:
    """Child process: one service accepting ``peers`` connections until stdin closes."""
    service = make_service(root, max_peers=peers)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(service.run)
        print(service.node_id, host, port, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        tg.cancel_scope.cancel()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser: argparse.ArgumentParser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=50, help="connections held by one service")
    parser.add_argument("--hub", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.hub:
        anyio.run(hub, args.hub, args.peers)
        return

    n_setup, n_rtt = (100, 1000) if args.quick else (500, 5000)
    with tempfile.TemporaryDirectory(prefix="ian-p2p-bench-") as d:
        tmp = Path(d)
        env = environment(tmp)
        setup = anyio.run(setup_rate, tmp, n_setup)
        rtt = anyio.run(round_trip, tmp, n_rtt)
        mem = anyio.run(memory, tmp, args.peers)

    doc = {"environment": env, "setup": setup, "round_trip": rtt, "memory": mem}
    tables = [
        render_table(
            "Connection set-up (loopback, sequential)",
            ["what", "value"],
            [
                ["TLS 1.3 mutual handshakes/s (transport)", setup["tls_handshakes_per_s"]],
                ["P2P connect+disconnect cycles/s", setup["p2p_connects_per_s_including_teardown"]],
                ["P2P connect p50 (ms)", setup["p2p_connect_ms_p50"]],
                ["P2P connect p99 (ms)", setup["p2p_connect_ms_p99"]],
            ],
        ),
        render_table(
            "Request/response (ping, loopback)",
            ["what", "value"],
            [
                ["RTT p50 (ms)", rtt["rtt_ms_p50"]],
                ["RTT p99 (ms)", rtt["rtt_ms_p99"]],
                ["requests/s sequential", rtt["requests_per_s_sequential"]],
                ["requests/s, 64 in flight", rtt["requests_per_s_64_in_flight"]],
            ],
        ),
        render_table(
            f"Memory of one service holding {mem['peers']} peers (separate process)",
            ["what", "value"],
            [
                ["RSS idle (MiB)", mem["hub_rss_idle_mib"]],
                ["RSS with peers (MiB)", mem["hub_rss_with_peers_mib"]],
                ["RSS per peer (KiB)", mem["hub_rss_per_peer_kib"]],
                ["all peers connected concurrently in (s)", mem["concurrent_connects_s"]],
            ],
        ),
    ]
    emit(NAME, doc, tables, json_only=args.json_only)


if __name__ == "__main__":
    main()
