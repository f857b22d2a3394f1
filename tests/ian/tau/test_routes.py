"""`GET /api/v1/tau` and `POST /api/v1/admin/tau/reset` on a real node's app.

The node is opened for real (data dir, identity, store); the bridge is attached the way the
node is expected to wire it (``node.tau``), and the router is included when ``create_app``
does not include it yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ian.api.app import create_app
from ian.chain.blocks import GoalRoots
from ian.config import load_settings
from ian.node import Node
from ian.tau import MockTauServer, TauBridge, TickOutcome

pytestmark = pytest.mark.anyio


@dataclass
class Served:
    node: Node
    bridge: TauBridge
    client: httpx.AsyncClient
    app: object

    def client_from(self, host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(host, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://ian.test")


@pytest.fixture
async def served(tmp_path: Path, mock_tau: MockTauServer) -> AsyncIterator[Served]:
    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path / "node",
            "api_host": "127.0.0.1",
            "api_port": 0,
            "p2p_port": 0,
            "ws_port": 0,
            "tau_endpoint": mock_tau.endpoint,
        },
    )
    node = Node.open(settings)
    try:
        if isinstance(getattr(node, "tau", None), TauBridge):
            node.tau.close()

        def roots() -> dict[str, tuple[GoalRoots, int]]:
            return {
                gid: (
                    GoalRoots(v.log_size, v.log_root, len(v.leaderboard), v.leaderboard_root),
                    node.height,
                )
                for gid, v in node.views.items()
            }

        bridge = TauBridge(
            settings, node.identity, node.datadir.store_file, node.metrics, roots=roots
        )
        node.tau = bridge  # type: ignore[attr-defined]
        app = create_app(node)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ian.test") as client:
            yield Served(node, bridge, client, app)
        node.tau = bridge  # a test may have removed it
        bridge.close()
    finally:
        node.close()


def auth(served: Served) -> dict[str, str]:
    assert served.node.admin_token
    return {"Authorization": f"Bearer {served.node.admin_token}"}


async def test_status(served: Served, mock_tau: MockTauServer) -> None:
    response = await served.client.get("/api/v1/tau")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["enabled"] is True
    assert doc["endpoint"] == mock_tau.endpoint
    assert doc["breaker_state"] == "CLOSED"
    assert doc["last_commit"] is None
    assert doc["pending"] == 0


async def test_reset_closes_the_breaker(served: Served) -> None:
    for _ in range(5):
        assert served.bridge.breaker.allow()
        served.bridge.breaker.failure()
    assert (await served.client.get("/api/v1/tau")).json()["breaker_state"] == "OPEN"
    response = await served.client.post("/api/v1/admin/tau/reset", headers=auth(served))
    assert response.status_code == 200, response.text
    assert response.json() == {"previous_state": "OPEN", "breaker_state": "CLOSED"}
    assert (await served.client.get("/api/v1/tau")).json()["breaker_state"] == "CLOSED"
    assert await served.bridge.tick() is TickOutcome.IDLE  # the node has no entries yet


async def test_reset_is_an_admin_route(served: Served) -> None:
    response = await served.client.post("/api/v1/admin/tau/reset")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    response = await served.client.post(
        "/api/v1/admin/tau/reset", headers={"Authorization": "Bearer wrong"}
    )
    assert response.status_code == 403
    async with served.client_from("203.0.113.9") as remote:
        response = await remote.post("/api/v1/admin/tau/reset", headers=auth(served))
    assert response.status_code == 403
    assert "loopback" in response.json()["error"]["message"]


async def test_node_without_bridge_answers_503(served: Served) -> None:
    served.node.tau = None  # type: ignore[attr-defined]
    response = await served.client.get("/api/v1/tau")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "this node runs no Tau bridge"


async def test_routes_are_in_the_openapi_document(served: Served) -> None:
    doc = (await served.client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/tau" in doc["paths"]
    assert "/api/v1/admin/tau/reset" in doc["paths"]
