"""Probes, metrics and the OpenAPI document (ARCHITECTURE §5, §10)."""

from __future__ import annotations

import shutil

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

DEMO = "DEMO_TRADING_AGENT"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    found = samples(text)
    key = (name, tuple(sorted(labels.items())))
    assert key in found, f"{name}{labels} not in the exposition"
    return found[key]


@pytest.mark.parametrize("path", ["/health", "/livez"])
async def test_liveness_probes_answer_plain_ok(api, path) -> None:
    r = await api.client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "OK"


async def test_readyz_plain_and_verbose(api) -> None:
    r = await api.client.get("/readyz")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "READY"

    r = await api.client.get("/readyz", params={"verbose": ""})
    assert r.status_code == 200
    doc = r.json()
    assert doc["ready"] is True
    assert doc["checks"], "verbose readiness lists its checks"
    for name, check in doc["checks"].items():
        assert check["ok"] is True, name
        assert isinstance(check["detail"], str)


async def test_readyz_is_503_once_the_sequencer_stops(api) -> None:
    api.node.sequencer.close()
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert r.text.startswith("NOT READY")
    assert "sequencer" in r.text
    r = await api.client.get("/readyz?verbose")
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert r.json()["checks"]["sequencer"]["ok"] is False


async def test_metrics_exposition_has_the_runbook_names(api) -> None:
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert value(text, "ian_uptime_seconds") >= 0
    assert value(text, "ian_block_height") == 0
    assert value(text, "ian_log_size", goal=DEMO) == 0
    assert value(text, "ian_contributions_received_total") == 0
    assert value(text, "ian_contributions_processed_total") == 0
    assert value(text, "ian_sync_lag") == 0
    assert value(text, "ian_peer_count") == 0
    for name in (
        "ian_rate_limit_violations_total",
        "ian_invalid_messages_total",
        "ian_peer_score_banned",
        "ian_tau_commits_total",
        "ian_tau_commit_failures_total",
        "ian_circuit_breaker_state",
        "ian_consensus_state",
        "ian_network_height",
        "ian_tls_cert_expiry_timestamp_seconds",
    ):
        assert value(text, name) >= 0, name


async def test_metrics_counters_move_with_contributions(api, packs) -> None:
    ok = await api.contribute(packs.body(1))
    assert ok.status_code == 200 and ok.json()["accepted"] is True
    low = await api.contribute(packs.body(2, params=packs.rejected_params))
    assert low.status_code == 200 and low.json()["rejection_type"] == "threshold"
    dup = await api.contribute(packs.body(1, contributor="someone-else"))
    assert dup.status_code == 409
    bad = await api.client.post("/api/v1/contribute", content=b"{nope")
    assert bad.status_code == 400
    unknown = await api.contribute(packs.body(3, goal_id="NO_SUCH_GOAL"))
    assert unknown.status_code == 404

    text = (await api.client.get("/metrics")).text
    assert value(text, "ian_contributions_received_total") == 5
    assert value(text, "ian_contributions_processed_total") == 1
    assert value(text, "ian_contributions_rejected_total", reason="threshold") == 1
    assert value(text, "ian_contributions_rejected_total", reason="duplicate") == 1
    assert value(text, "ian_contributions_rejected_total", reason="malformed") == 1
    assert value(text, "ian_contributions_rejected_total", reason="unknown_goal") == 1
    assert value(text, "ian_contributions_rejected_total", reason="rate_limited") == 0
    assert value(text, "ian_block_height") == 1
    assert value(text, "ian_log_size", goal=DEMO) == 1
    assert value(text, "ian_contribute_latency_seconds_count") == 2


async def test_metrics_pass_promtool_check(api, packs) -> None:
    await api.contribute(packs.body(1))
    text = (await api.client.get("/metrics")).text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not on PATH; install it (`apt-get install prometheus`, or the Makefile's "
            "tool step) so `promtool check metrics` can check the exposition (ARCHITECTURE §10)"
        )
    with anyio.fail_after(30):
        result = await anyio.run_process(
            [promtool, "check", "metrics"], input=text.encode(), check=False
        )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def resolve(doc: dict, schema: dict) -> dict:
    """Follow a local ``$ref`` (possibly wrapped in allOf) to the schema it names."""
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = schema["allOf"][0]
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


async def test_openapi_document_describes_contribute(api) -> None:
    r = await api.client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/api/v1/contribute"]["post"]
    assert "requestBody" in post, "POST /api/v1/contribute documents no request body"
    body = post["requestBody"]
    assert body.get("required") is True
    schema = resolve(doc, body["content"]["application/json"]["schema"])
    assert {"goal_id", "agent_pack", "contributor_id"} <= set(schema["required"])
    assert set(schema["properties"]) == {"goal_id", "agent_pack", "contributor_id", "seed"}
    pack = resolve(doc, schema["properties"]["agent_pack"])
    assert {"version", "parameters"} <= set(pack["required"])
    assert set(pack["properties"]) == {"version", "parameters", "metadata"}
    for status in ("200", "400", "404", "409", "413", "429", "503"):
        assert status in post["responses"], status
    for path in (
        "/api/v1/status",
        "/api/v1/status/{goal_id}",
        "/api/v1/leaderboard/{goal_id}",
        "/api/v1/log/{goal_id}",
        "/api/v1/proof/{goal_id}/{log_index}",
        "/api/v1/policy/{goal_id}",
        "/api/v1/goals",
    ):
        assert path in doc["paths"], path


async def test_unknown_route_is_a_json_404(api, error_of) -> None:
    r = await api.client.get("/api/v1/nothing-here")
    error_of(r, 404, "not_found")
    r = await api.client.get("/definitely/not")
    error_of(r, 404, "not_found")


async def test_wrong_method_is_a_json_405(api, error_of) -> None:
    r = await api.client.get("/api/v1/contribute")
    error_of(r, 405)
