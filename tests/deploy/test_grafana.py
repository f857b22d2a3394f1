"""deploy/grafana/ and every PromQL expression shipped in deploy/.

Dashboards: provisioning points at them, the runbook's panels exist, panel ids are unique.
Expressions (dashboards and alert rules): every metric name is one a real node exports, and
every expression parses (promtool has no expression-only check, so they go into a temporary
rule file for `promtool check rules`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# The runbook's three dashboards and their panels (matched case-insensitively by prefix).
RUNBOOK_PANELS = {
    "ian-node-health": ["Uptime", "Sync Status", "Peer Count", "Consensus State", "Log Size"],
    "ian-throughput": ["Contributions / minute", "Acceptance Rate", "Tau Commits", "Message Rate"],
    "ian-security": [
        "Rate Limit Violations",
        "Invalid Messages",
        "Banned Peers",
        "Circuit Breaker Status",
    ],
}
# Series Prometheus makes itself rather than scrapes from the node.
PROMETHEUS_SERIES = {"up"}


# --------------------------------------------------------------------------- loading


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in (json.loads(p.read_text()) for p in DASHBOARDS)}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))  # collapsed rows


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for uid, dash in load_dashboards().items():
        for panel in iter_panels(dash["panels"]):
            for target in panel.get("targets", []):
                out.append((f"{uid} / {panel['title']} / {target['refId']}", target["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            query = var.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", text or "")
            if m:  # label_values(<series selector>, label)
                out.append((f"{uid} / variable {var['name']}", m.group(1)))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [
        (f"rules.yml / {r.get('alert') or r.get('record')}", r["expr"])
        for g in doc["groups"]
        for r in g["rules"]
    ]


ALL_EXPRS = dashboard_exprs() + rule_exprs()

# Grafana's built-in interval variables -> a literal duration, so the expression parses.
_GRAFANA_DURATIONS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{__\w+\}")


def for_promtool(expr: str) -> str:
    text = _GRAFANA_DURATIONS.sub("5m", expr)
    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    assert "$" not in outside_strings, f"unresolved Grafana variable outside a string: {expr}"
    return text


# --------------------------------------------------------------------------- metric names

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}  # fmt: skip
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions, keywords,
    label names, durations or template variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = _CLAUSE.sub(" ", text)  # grouping / matching label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(foo_bucket{a="x", b=~"$v"}'
        "[$__rate_interval]))) / on (instance) group_left bar - time() > 5m_not offset 5m"
    )
    assert metric_names(expr) == {"foo_bucket", "bar"}
    assert metric_names("(time() - x > 86400) or on (job) (up == 1 unless on (job) y)") == {
        "x",
        "up",
        "y",
    }


def series_names(exposition: str) -> set[str]:
    """Names of the series an exposition defines, from its TYPE lines, so labelled metrics
    that have no child yet count too: counters get _total, histograms _bucket/_sum/_count."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Everything a node exports: GET /metrics from a real in-process node, plus the node's
    exporter with every optional gauge present (the backup timestamp only appears once a
    backup has succeeded)."""
    from ian.api.app import create_app
    from ian.config import load_settings
    from ian.metrics import NodeMetrics, StateSnapshot
    from ian.node import Node

    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path_factory.mktemp("node") / "data",
            "api_host": "127.0.0.1",
            "api_port": 0,
            "p2p_port": 0,
            "ws_port": 0,
        },
    )
    node = Node.open(settings)
    try:

        async def scrape() -> str:
            transport = httpx.ASGITransport(app=create_app(node))
            async with httpx.AsyncClient(transport=transport, base_url="http://ian.test") as c:
                response = await c.get("/metrics")
                assert response.status_code == 200, response.text
                return response.text

        real = anyio.run(scrape)
    finally:
        node.close()
    full = NodeMetrics(lambda: StateSnapshot(cert_expiry=2e9, last_backup=1.7e9))
    names = series_names(real) | series_names(full.exposition().decode())
    assert "ian_uptime_seconds" in series_names(real)
    return names


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_expr_uses_exported_metrics(exported: set[str], where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = sorted(names - exported - PROMETHEUS_SERIES)
    assert not unknown, f"{where}: not exported by the node: {unknown}"


def test_every_expr_parses(tool, tmp_path: Path) -> None:
    rule_file = tmp_path / "exprs.yml"
    rules = [
        {"record": f"ian_expr_check_{i}", "expr": for_promtool(expr)}
        for i, (_, expr) in enumerate(ALL_EXPRS)
    ]
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    result = tool("promtool", "check", "rules", rule_file)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        bad = {int(i) for i in re.findall(r"ian_expr_check_(\d+)", output)}
        where = [ALL_EXPRS[i][0] for i in sorted(bad)] or ["(see output)"]
        pytest.fail(f"promtool refused: {where}\n{output}")
    assert f"SUCCESS: {len(rules)} rules found" in output


# --------------------------------------------------------------------------- grafana files


def test_provisioning() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/ian.yml").read_text())
    (prov,) = provider["providers"]
    assert prov["type"] == "file"
    for uid, dash in load_dashboards().items():
        for panel in iter_panels(dash["panels"]):
            refs = [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]
            for ref in refs:
                assert ref == {"type": "prometheus", "uid": source["uid"]}, (uid, panel["title"])


def test_runbook_dashboards_and_panels() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == set(RUNBOOK_PANELS)
    for uid, wanted in RUNBOOK_PANELS.items():
        titles = [p["title"].lower() for p in iter_panels(dashboards[uid]["panels"])]
        for title in wanted:
            assert any(t.startswith(title.lower()) for t in titles), f"{uid}: no {title!r} panel"


def test_dashboard_layout() -> None:
    for uid, dash in load_dashboards().items():
        panels = list(iter_panels(dash["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
        for p in panels:
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (uid, p["title"])
            assert p["targets"], (uid, p["title"])
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), (uid, p["title"])
        assert dash["schemaVersion"] >= 36


# --------------------------------------------------------------------------- consensus panel


def effective_mappings(panel: dict[str, Any], ref_id: str) -> dict[str, str]:
    """value -> text that the panel's value mappings give the series of query ``ref_id``: the
    defaults, replaced by the mappings of an override matching that query (byFrameRefID)."""
    mappings = panel["fieldConfig"]["defaults"].get("mappings", [])
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref_id}:
            for prop in override["properties"]:
                if prop["id"] == "mappings":
                    mappings = prop["value"]
    out: dict[str, str] = {}
    for mapping in mappings:
        assert mapping["type"] == "value", mapping
        out.update({value: result["text"] for value, result in mapping["options"].items()})
    return out


def test_overrides_name_queries_of_their_panel() -> None:
    for uid, dash in load_dashboards().items():
        for panel in iter_panels(dash["panels"]):
            refs = {t["refId"] for t in panel["targets"]}
            for override in panel.get("fieldConfig", {}).get("overrides", []):
                if override["matcher"]["id"] == "byFrameRefID":
                    assert override["matcher"]["options"] in refs, (uid, panel["title"])


def test_consensus_panel_shows_state_role_and_term() -> None:
    """The Node Health consensus panel: state, role and term per node, with the node's own
    codes (ian.metrics) mapped to names; the term stays a number."""
    from ian.metrics import CONSENSUS_ROLES, CONSENSUS_STATES

    dash = load_dashboards()["ian-node-health"]
    (panel,) = [
        p for p in iter_panels(dash["panels"]) if p["title"].lower().startswith("consensus state")
    ]
    by_metric: dict[str, dict[str, Any]] = {}
    for target in panel["targets"]:
        (name,) = metric_names(target["expr"])
        by_metric[name] = target
    assert set(by_metric) == {"ian_consensus_state", "ian_consensus_role", "ian_consensus_term"}

    def names(metric: str) -> dict[str, str]:
        return effective_mappings(panel, by_metric[metric]["refId"])

    assert names("ian_consensus_role") == {str(i): n for i, n in enumerate(CONSENSUS_ROLES)}
    assert names("ian_consensus_role") == {"0": "follower", "1": "authority", "2": "leader"}
    assert names("ian_consensus_state") == {str(i): n for i, n in enumerate(CONSENSUS_STATES)}
    assert names("ian_consensus_term") == {}
    legends = [t["legendFormat"] for t in panel["targets"]]
    assert len(set(legends)) == len(legends), legends  # one stat per node and metric
    assert all("{{instance}}" in legend for legend in legends)


def test_node_health_shows_leader_changes() -> None:
    dash = load_dashboards()["ian-node-health"]
    exprs = [t["expr"] for p in iter_panels(dash["panels"]) for t in p["targets"]]
    changes = [e for e in exprs if "ian_leader_changes_total" in e]
    assert changes, "no panel shows ian_leader_changes_total"
    # A counter: shown as its increase or rate, never the raw total since the last restart.
    assert all(re.match(r"(increase|rate)\(ian_leader_changes_total\{", e) for e in changes)
