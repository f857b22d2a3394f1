"""`ian peers ban IP|CIDR` refuses that address on the HTTP API and the event stream too:
live, persisted, with expiry and reason (issue "Hostile peers", item 7). Loopback aliases
(127.0.0.5 is as local as 127.0.0.1 on Linux) stand in for a remote client."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.support.nodes import NETWORK_ENV, contribution, run_ian

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.5"


def from_address(source: str, url: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as c:
        return c.get(url)


def test_a_banned_address_is_refused_on_http_live_and_after_a_restart(ian_nodes) -> None:
    node = ian_nodes.start(env={"IAN_API_HOST": "0.0.0.0"}, wait=("api", "p2p"))
    url = node.api_url + "/api/v1/status"
    assert from_address(ATTACKER, url).status_code == 200
    banned = run_ian(
        "peers", "ban", "127.0.0.0/29", "--for", "1h", "--reason", "HTTP flood",
        "--node-url", node.api_url, "--data-dir", str(node.data_dir),
    )  # fmt: skip
    assert banned.returncode == 0, banned.stderr
    r = from_address(ATTACKER, url)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "banned" and "HTTP flood" in r.json()["error"]["message"]
    # The operator's own loopback address keeps working (that is how `ian` reaches the node).
    assert from_address("127.0.0.1", url).status_code == 200
    # Persisted: still refused after a restart.
    assert node.terminate() == 0
    node = ian_nodes.restart(node)
    url = node.api_url + "/api/v1/status"
    assert from_address(ATTACKER, url).status_code == 403
    lifted = run_ian(
        "peers", "unban", "127.0.0.0/29", "--node-url", node.api_url,
        "--data-dir", str(node.data_dir),
    )  # fmt: skip
    assert lifted.returncode == 0, lifted.stderr
    assert from_address(ATTACKER, url).status_code == 200


def test_http_limits_change_live(ian_nodes) -> None:
    node = ian_nodes.start(env=NETWORK_ENV, wait=("api", "p2p"))
    common = ("--node-url", node.api_url, "--data-dir", str(node.data_dir), "--json")
    shown = run_ian("node", "limits", *common)
    assert shown.returncode == 0, shown.stderr
    assert set(json.loads(shown.stdout)["limits"]) == {
        "client_rate",
        "client_burst",
        "contributor_rate",
        "contributor_burst",
    }
    tight = run_ian("node", "limits", "--client-rate", "0.01", "--client-burst", "2", *common)
    assert tight.returncode == 0, tight.stderr
    assert json.loads(tight.stdout)["limits"]["client_burst"] == 2
    url = node.api_url + "/api/v1/contribute"
    codes = [
        httpx.post(url, json=contribution(i, tag="live"), timeout=10).status_code for i in range(3)
    ]
    assert codes == [200, 200, 429], codes
    loose = run_ian("node", "limits", "--client-rate", "50", "--client-burst", "100", *common)
    assert loose.returncode == 0, loose.stderr
    assert httpx.post(url, json=contribution(9, tag="live"), timeout=10).status_code == 200
