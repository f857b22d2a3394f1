"""A peer that asks for big replies and never reads them, against a real node over TLS: the
node's send budget (``P2PTuning.send_queue_bytes``) holds its memory, and the peer is dropped."""

from __future__ import annotations

import time

import anyio
import pytest
from tests.support.attack_report import PeakSampler, record
from tests.support.hostile import HostilePeer
from tests.support.nodes import NETWORK_ENV, build_chain, wait_until

from ian.p2p.messages import GetBlocks
from ian.p2p.transport import TlsCredentials
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.integration

REQUESTS = 100
BLOCKS_PER_REPLY = 10  # blocks of 1,000 entries: about 1 MiB per reply
#: What the node may hold for the peer: its send queue (send_queue_bytes, 64 MiB) plus two
#: get_blocks replies being built or waiting for room (~1.5 MB frames, ~4x that while building):
#: ~80 MiB (measured +88 MiB). Main, with 32 replies in flight, grew by ~263 MiB.
RSS_GROWTH_LIMIT_KIB = 150 * 1024
DROPPED_WITHIN_S = 60.0  # the node builds ~1.5 MB replies on 2 shared cores: seconds each


def test_peer_that_never_reads_its_replies_is_bounded_and_dropped(ian_nodes, tmp_path) -> None:
    data_dir = ian_nodes.data_dir()
    height = build_chain(data_dir, blocks=2 * BLOCKS_PER_REPLY, per_block=1000)
    node = ian_nodes.start(data_dir, NETWORK_ENV, wait=("api", "p2p"))
    host, port = node.p2p_address.removeprefix("tcp://").rsplit(":", 1)
    init = init_data_dir(tmp_path / "greedy")
    creds = TlsCredentials(init.datadir.certs_dir, init.identity)
    rss = PeakSampler(node.rss_kib)

    async def attack() -> float:
        peer = await HostilePeer.connect(host, int(port), creds, height=0)
        try:
            frames = b"".join(
                peer.session.send(
                    GetBlocks(
                        from_height=1 + i % (height - BLOCKS_PER_REPLY), max_blocks=BLOCKS_PER_REPLY
                    )
                )[1]
                for i in range(REQUESTS)
            )
            await peer.stream.send(frames)  # ...and never read a reply
            started = time.monotonic()
            # The node keeps serving its API while it holds the greedy peer.
            assert node.get("/health").status_code == 200
            await anyio.to_thread.run_sync(
                lambda: wait_until(
                    lambda: init.identity.node_id not in node.connected(),
                    timeout=DROPPED_WITHIN_S,
                    what="the peer that never reads to be dropped",
                )
            )
            return time.monotonic() - started
        finally:
            await peer.aclose()

    with rss:
        dropped_after = anyio.run(attack)
    start, peak = rss.before, rss.peak
    assert node.get("/health").status_code == 200
    # Dropped by the send-budget stall rule, which charges the peer (a writer timeout would not).
    peer = node.get(f"/api/v1/peers/{init.identity.node_id}").json()
    assert peer["rate_limit_violations"] >= 1, peer
    end = node.rss_kib()
    grown = peak - start
    print(
        f"\n| RSS KiB | before | peak | after |\n|---|---|---|---|\n"
        f"| node | {start} | {peak} | {end} |\ndropped after {dropped_after:.1f} s"
    )
    record(
        "1 peer: 100 get_blocks (~1.5 MB replies), replies never read",
        before_kib=start,
        peak_kib=peak,
        after_kib=end,
        outcome=f"dropped after {dropped_after:.1f} s and charged; API kept serving",
    )
    assert grown < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {grown} KiB ({start} -> {peak})"
