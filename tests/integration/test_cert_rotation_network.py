"""`ian certs rotate` on a node with a connected peer: hot reload without dropping anyone.

A and B are connected; `ian certs rotate --data-dir A --node-url A` swaps A's certificate while
the node runs. The established connection must survive (same ``connected_since`` on both sides)
and every *new* connection must be shown A's new certificate: checked with a TLS handshake of
our own against A's P2P port, by a third node C joining, and on the peers API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from tests.support.nodes import NodeProcess, run_ian, wait_connected

from ian.p2p.transport import TlsCredentials, connect_tcp, tls_handshake
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.integration


@dataclass
class Rotation:
    a: NodeProcess
    b: NodeProcess
    c: NodeProcess
    old_fp: str
    new_fp: str
    since_on_a: float
    since_on_b: float
    rotate_doc: dict


def certs_show(node: NodeProcess) -> dict:
    r = run_ian("certs", "show", "--json", "--data-dir", str(node.data_dir))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def presented_fingerprint(node: NodeProcess, keys: Path) -> str:
    """The certificate fingerprint ``node`` shows a brand-new TLS connection."""
    init = init_data_dir(keys)
    creds = TlsCredentials(init.datadir.certs_dir, init.identity)
    host, port = node.p2p_address.removeprefix("tcp://").rsplit(":", 1)

    async def probe() -> str:
        stream = await tls_handshake(await connect_tcp(host, int(port)), creds, server=False)
        try:
            assert stream.peer is not None
            return stream.peer.fingerprint_sha256
        finally:
            await stream.aclose()

    return anyio.run(probe)


@pytest.fixture(scope="module")
def rotation(ian_module_nodes, tmp_path_factory) -> Rotation:
    a, b = ian_module_nodes.start_network(2)
    old_fp = certs_show(a)["fingerprint_sha256"]
    assert presented_fingerprint(a, tmp_path_factory.mktemp("probe")) == old_fp
    since_on_a = a.connected()[b.node_id]["connected_since"]
    since_on_b = b.connected()[a.node_id]["connected_since"]

    r = run_ian("certs", "rotate", "--json", "--data-dir", str(a.data_dir), "--node-url", a.api_url)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    new_fp = doc["fingerprint_sha256"]
    c = ian_module_nodes.start_follower(a)
    wait_connected(c, a)
    return Rotation(a, b, c, old_fp, new_fp, since_on_a, since_on_b, doc)


def test_rotation_is_hot_and_new_connections_see_the_new_certificate(
    rotation: Rotation, tmp_path: Path
) -> None:
    a, b, c = rotation.a, rotation.b, rotation.c
    assert rotation.rotate_doc["status"] == "online: node reloaded"
    assert rotation.new_fp != rotation.old_fp
    assert Path(rotation.rotate_doc["old_pair"]).is_dir()  # the old pair is kept
    assert certs_show(a)["fingerprint_sha256"] == rotation.new_fp
    # The connection made before the rotation is still the same connection, both ways.
    assert b.connected()[a.node_id]["connected_since"] == rotation.since_on_b
    assert a.connected()[b.node_id]["connected_since"] == rotation.since_on_a
    # A new TLS connection is shown the new certificate; C could join with it.
    assert presented_fingerprint(a, tmp_path / "probe") == rotation.new_fp
    assert a.node_id in c.connected()
    assert a.wait_for_msg(f"P2P certificate reloaded: fingerprint {rotation.new_fp}")


def test_peers_api_shows_each_connections_certificate_fingerprint(rotation: Rotation) -> None:
    """§7 / runbook: operators check which certificate a peer presented after a rotation.
    The connection C made after the rotation carries the new fingerprint, B's older one the
    old fingerprint."""
    a, b, c = rotation.a, rotation.b, rotation.c
    on_c = c.connected()[a.node_id]
    on_b = b.connected()[a.node_id]
    assert "cert_fingerprint" in on_c, f"GET /api/v1/peers has no cert_fingerprint: {on_c}"
    assert on_c["cert_fingerprint"] == rotation.new_fp
    assert on_b["cert_fingerprint"] == rotation.old_fp
