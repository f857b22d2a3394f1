"""Forwarded contributions pass the same gate as HTTP ones (issue "Hostile peers", item 4):
the submission token cannot be bypassed over P2P, and an untrusted forwarder is one more client
under the per-client limit. Real node processes, real TLS, loopback."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from tests.support.hostile import HostilePeer, frame
from tests.support.nodes import (
    NETWORK_ENV,
    TRIVIAL_GOAL,
    NodeProcess,
    contribution,
    wait_connected,
)

from ian.chain.contributions import make_contribution
from ian.p2p import messages as msg
from ian.p2p.transport import TlsCredentials
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.integration

TOKEN = "s3cret-submission-token"


def forward_doc(n: int, tag: str) -> dict[str, Any]:
    c = make_contribution(
        goal_id=TRIVIAL_GOAL,
        version="1.0",
        parameters=f"forward-{tag}-{n}".encode(),
        metadata={},
        contributor_id=f"forwarded-{tag}-{n}",
        seed=n,
    )
    return msg.doc_to_data(msg.contribution_to_doc(c))


def forwards(node: NodeProcess, tmp_path, bodies: list[dict[str, Any]]) -> list[Any]:
    """A fresh identity dials ``node`` and forwards each body; the reply envelopes."""
    init = init_data_dir(tmp_path / "forwarder")
    creds = TlsCredentials(init.datadir.certs_dir, init.identity)
    host, port = node.p2p_address.removeprefix("tcp://").rsplit(":", 1)

    async def main() -> list[Any]:
        peer = await HostilePeer.connect(host, int(port), creds)
        try:
            return [
                await peer.request(frame("contribution_forward", body, msg_id=i + 1), i + 1)
                for i, body in enumerate(bodies)
            ]
        finally:
            await peer.aclose()

    return anyio.run(main)


def log_size(node: NodeProcess) -> int:
    return int(node.status()["goals"][TRIVIAL_GOAL]["log_size"])


def test_the_token_cannot_be_bypassed_over_p2p(ian_nodes, tmp_path) -> None:
    env = {**NETWORK_ENV, "IAN_API_TOKEN": TOKEN}
    seq = ian_nodes.start(env=env, wait=("api", "p2p"))
    replies = forwards(
        seq,
        tmp_path,
        [
            {"contribution": forward_doc(1, "none")},
            {"contribution": forward_doc(2, "wrong"), "token": "guess"},
        ],
    )
    assert [(r.type, r.message.code) for r in replies] == [("error", "unauthorized")] * 2
    assert log_size(seq) == 0
    # A follower holding the network's token forwards for its authenticated clients.
    fol = ian_nodes.start_follower(seq, env)
    wait_connected(fol, seq)  # a follower not yet connected answers 503 (unreachable)
    r = httpx.post(
        fol.api_url + "/api/v1/contribute",
        json=contribution(1, tag="with-token"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=15,
    )
    assert r.status_code == 200 and r.json()["accepted"], r.text
    assert log_size(seq) == 1


def test_a_listed_peer_forwards_without_the_token(ian_nodes, tmp_path) -> None:
    env = {**NETWORK_ENV, "IAN_API_TOKEN": TOKEN, "IAN_FORWARD_FROM": "127.0.0.0/8"}
    seq = ian_nodes.start(env=env, wait=("api", "p2p"))
    (reply,) = forwards(seq, tmp_path, [{"contribution": forward_doc(1, "listed")}])
    assert reply.type == "contribution_result" and reply.message.result.accepted, reply
    assert log_size(seq) == 1


def test_an_untrusted_forwarder_is_held_to_the_per_client_limit(ian_nodes, tmp_path) -> None:
    env = {**NETWORK_ENV, "IAN_CLIENT_RATE": "0.01", "IAN_CLIENT_BURST": "3"}
    seq = ian_nodes.start(env=env, wait=("api", "p2p"))
    replies = forwards(seq, tmp_path, [{"contribution": forward_doc(i, "flood")} for i in range(5)])
    kinds = [r.type if r.type != "error" else r.message.code for r in replies]
    assert kinds == ["contribution_result"] * 3 + ["rate_limited"] * 2, kinds
    assert log_size(seq) == 3
