"""Floods that used to work against one node (issue "Hostile peers"): a peer filling the peer
book with unsolicited lists while earning score, and throwaway identities from one IP. Real
node processes, real TLS, loopback."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import anyio
import pytest
from tests.support.attack_report import record
from tests.support.hostile import HostilePeer, RefusedAtHello, frame
from tests.support.nodes import NodeProcess

from ian.p2p.errors import HandshakeError
from ian.p2p.transport import TlsCredentials
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.integration


def creds(tmp_path, name: str) -> TlsCredentials:
    init = init_data_dir(tmp_path / name)
    return TlsCredentials(init.datadir.certs_dir, init.identity)


def address(node: NodeProcess) -> tuple[str, int]:
    host, port = node.p2p_address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def peers_doc(node: NodeProcess) -> dict[str, Any]:
    r = node.get("/api/v1/peers")
    r.raise_for_status()
    return r.json()


async def misbehave_until_banned(
    host: str, port: int, c: TlsCredentials, payload: Any, *, sessions: int = 10
) -> tuple[int, int]:
    """Reconnect and send ``payload(n)`` frames until the node says goodbye "banned"; returns
    (sessions used, frames sent). Fails when the node never bans."""
    sent = 0
    for session in range(1, sessions + 1):
        try:
            peer = await HostilePeer.connect(host, port, c)
        except HandshakeError:  # refused before TLS: our address is banned now
            return session, sent
        except RefusedAtHello as exc:
            if exc.goodbye == "banned":
                return session, sent
            await anyio.sleep(0.2)  # the node is still closing our previous session: retry
            continue
        try:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                with anyio.fail_after(15):
                    for _ in range(1000):
                        sent += 1
                        await peer.stream.send(payload(sent))
                        await anyio.sleep(1 / 150)  # 150/s: under the per-peer message rate
            with contextlib.suppress(TimeoutError):
                await peer.until_closed(5)
            if peer.goodbye == "banned":
                return session, sent
        finally:
            await peer.aclose()
    pytest.fail(f"not banned after {sessions} sessions and {sent} frames")


def test_unsolicited_peer_lists_fill_nothing_and_the_flooder_is_banned(ian_nodes, tmp_path) -> None:
    node = ian_nodes.start(wait=("api", "p2p"))
    flooder = creds(tmp_path, "flooder")
    rng = random.Random(7)

    def peers_frame(n: int) -> bytes:
        entries = [
            {"node_id": rng.randbytes(20).hex(), "address": f"tcp://10.{i}.0.1:9"}
            for i in range(50)
        ]
        return frame("peers", {"peers": entries}, msg_id=n)

    _sessions, sent = anyio.run(misbehave_until_banned, *address(node), flooder, peers_frame)
    assert sent < 100, f"the node read {sent} unsolicited lists before banning the flooder"
    doc = peers_doc(node)
    assert doc["known"] <= 2, doc  # the flooder itself, nothing it sent
    peer = node.get(f"/api/v1/peers/{flooder.identity.node_id}").json()
    assert peer["banned"] is True and peer["score"] < 10, peer
    assert peer["valid_messages"] == 0 or peer["score"] < 10
    record(
        "1 peer floods unsolicited `peers` lists (50 invented addresses each)",
        outcome=f"banned after {sent} lists, score {peer['score']:.1f}; peer book "
        f"{doc['known']} known (nothing learnt)",
    )


def test_throwaway_identities_from_one_ip_get_the_ip_banned(ian_nodes, tmp_path) -> None:
    node = ian_nodes.start(wait=("api", "p2p"))
    host, port = address(node)

    def invalid_ping(n: int) -> bytes:  # a known type with a bad body: -5, session stays open
        return frame("ping", {"nonce": "not a number"}, msg_id=n)

    for i in range(5):
        anyio.run(
            misbehave_until_banned, host, port, creds(tmp_path, f"throwaway-{i}"), invalid_ping
        )
    bans = peers_doc(node)["ip_bans"]
    assert [b["reason"] for b in bans] == ["5 identities from this address banned"], bans

    async def sixth() -> None:
        await HostilePeer.connect(host, port, creds(tmp_path, "throwaway-6"))

    with pytest.raises(Exception):  # noqa: B017 - refused before TLS: whatever the stack raises
        anyio.run(sixth)
    assert node.get("/health").status_code == 200
    record(
        "throwaway identities from one IP, each misbehaving until banned",
        outcome=f"IP banned after 5 banned identities ({bans[0]['reason']}); the 6th is refused",
    )
