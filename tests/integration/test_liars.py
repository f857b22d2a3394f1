"""Peers that lie change nothing (CONSENSUS.md "Safety rules"): a follower with a pinned
sequencer, told absurd heights, shown forged blocks and asked to believe a self-declared
sequencer, keeps its chain, its readiness and its sequencer, and charges every liar."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.support.hostile import HostilePeer, frame
from tests.support.nodes import NETWORK_ENV, NodeProcess, contribution, wait_same_chain, wait_until

from ian.chain.genesis import Genesis
from ian.p2p.transport import TlsCredentials
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.integration

HUGE = 2**62


def submit(node: NodeProcess, body: dict[str, Any]) -> dict[str, Any]:
    r = node.post("/api/v1/contribute", body)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


@pytest.fixture(scope="module")
def network(ian_module_nodes) -> tuple[NodeProcess, NodeProcess]:
    seq, fol = ian_module_nodes.start_network(2, NETWORK_ENV)
    for i in range(3):
        submit(seq, contribution(i, tag="liars"))
    wait_same_chain(seq, [fol])
    return seq, fol


def liar_identity(tmp_path: Path, name: str) -> TlsCredentials:
    init = init_data_dir(tmp_path / name)
    return TlsCredentials(init.datadir.certs_dir, init.identity)


def forged_block(fol: NodeProcess, *, height: int) -> dict[str, Any]:
    """The follower's own block 1, re-labelled: its hash no longer matches, its signature is
    the sequencer's over another hash. Shape-valid, so only the signature check can catch it."""
    con = sqlite3.connect(f"file:{fol.data_dir / 'chain.sqlite'}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT header, hash, signature FROM blocks WHERE height = 1").fetchone()
    finally:
        con.close()
    header = json.loads(row[0])
    header["height"] = height
    return {
        "header": header,
        "hash": bytes(row[1]).hex(),
        "signature": bytes(row[2]).hex(),
        "entries": [],
    }


def ready(node: NodeProcess) -> bool:
    return node.get("/readyz").status_code == 200


def peer_record(node: NodeProcess, node_id: str) -> dict[str, Any]:
    r = node.get(f"/api/v1/peers/{node_id}")
    r.raise_for_status()
    return r.json()


def charged(node: NodeProcess, node_id: str) -> bool:
    rec = peer_record(node, node_id)
    return rec["invalid_messages"] + rec["failed_syncs"] > 0


def run_liar(fol: NodeProcess, creds: TlsCredentials, act: Any, **hello: Any) -> None:
    host, port = fol.p2p_address.removeprefix("tcp://").rsplit(":", 1)

    async def main() -> None:
        peer = await HostilePeer.connect(host, int(port), creds, **hello)
        try:
            await act(peer)
        finally:
            await peer.aclose()

    anyio.run(main)


def test_a_self_declared_sequencer_with_an_absurd_height_changes_nothing(network, tmp_path) -> None:
    seq, fol = network
    before = fol.status()
    chain = Genesis.read(fol.data_dir / "genesis.json").chain_id()
    creds = liar_identity(tmp_path, "claimer")
    liar_id = creds.identity.node_id
    forged = forged_block(fol, height=HUGE)

    def reply(envelope: Any) -> bytes | None:
        if envelope.type == "get_blocks":  # "here is my block 2^62": forged
            return frame("blocks", {"blocks": [forged]}, msg_id=7, re=envelope.id)
        return None

    async def act(peer: HostilePeer) -> None:
        with anyio.move_on_after(8):
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer.answer, reply)
                await anyio.to_thread.run_sync(
                    lambda: wait_until(lambda: charged(fol, liar_id), what="the liar charged")
                )
                tg.cancel_scope.cancel()

    run_liar(fol, creds, act, height=HUGE, sequencer=True, chain_id=chain)
    after = fol.status()
    assert after["network_height"] == before["network_height"] < HUGE
    assert after["consensus_state"] == "SYNCED" and ready(fol)
    # Still following the real sequencer: a contribution sent to the follower lands on it.
    answer = submit(fol, contribution(10, tag="after-claim"))
    assert answer["accepted"]
    wait_same_chain(seq, [fol])


def test_forged_announces_from_many_identities_roll_nothing_back(network, tmp_path) -> None:
    seq, fol = network
    height = fol.status()["height"]
    forged_low = forged_block(fol, height=1)  # a "different block 1": hash mismatch
    forged_high = forged_block(fol, height=HUGE)
    liars = [liar_identity(tmp_path, f"forger-{i}") for i in range(3)]
    for i, creds in enumerate(liars):

        async def act(peer: HostilePeer, i: int = i, liar: str = creds.identity.node_id) -> None:
            await peer.stream.send(frame("block_announce", {"block": forged_low}, msg_id=1))
            await peer.stream.send(frame("block_announce", {"block": forged_high}, msg_id=2))
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: charged(fol, liar), what=f"forger {i} charged")
            )

        run_liar(fol, creds, act)
    status = fol.status()
    assert status["height"] == height and status["network_height"] == height
    assert status["consensus_state"] == "SYNCED" and ready(fol)
    assert not fol.has_msg("DIVERGED") and not fol.has_msg("rolled back")
    assert not list(fol.data_dir.glob("fork-evidence-*.json"))
    wait_same_chain(seq, [fol])
