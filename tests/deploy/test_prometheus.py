"""deploy/prometheus/: promtool accepts the config and rules, and the rule unit tests pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"

RUNBOOK_ALERTS = {
    "IANNodeUnhealthy",
    "IANSyncLag",
    "IANLowPeers",
    "IANHighRejectionRate",
    "IANRateLimitViolations",
}
EXTRA_ALERTS = {
    "IANCircuitBreakerOpen",
    "IANCertificateExpiringSoon",
    "IANCertificateExpiryCritical",
    "IANBackupTooOld",
    "IANNodeDiverged",
    "IANForkEvidence",
    "IANNoLeader",
    "IANFrequentElections",
}


@pytest.fixture(scope="module")
def rules() -> dict[str, dict]:
    doc = yaml.safe_load((PROM / "rules.yml").read_text(encoding="utf-8"))
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_config(tool) -> None:
    result = tool("promtool", "check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules(tool, rules) -> None:
    result = tool("promtool", "check", "rules", PROM / "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_rule_unit_tests(tool) -> None:
    result = tool("promtool", "test", "rules", "rules_test.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_set_and_labels(rules) -> None:
    assert set(rules) == RUNBOOK_ALERTS | EXTRA_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
        assert "for" in rule, name


def test_runbook_thresholds(rules) -> None:
    def expr(name: str) -> str:
        return " ".join(rules[name]["expr"].split())

    assert expr("IANNodeUnhealthy") == 'up{job="ian-nodes"} == 0'
    assert expr("IANSyncLag") == "ian_sync_lag > 10"
    assert expr("IANLowPeers") == "ian_peer_count < 3"
    assert expr("IANHighRejectionRate").endswith(
        "(rate(ian_contributions_rejected_total[5m])) > 10"
    )
    assert expr("IANRateLimitViolations") == "rate(ian_rate_limit_violations_total[5m]) > 100"
    assert "21 * 86400" in expr("IANCertificateExpiringSoon")
    assert "< 7 * 86400" in expr("IANCertificateExpiryCritical")
    assert "> 86400" in expr("IANBackupTooOld")
    assert expr("IANNodeDiverged") == "ian_consensus_state == 3"


def test_consensus_alerts_match_the_node_codes(rules) -> None:
    """The numbers in the consensus alerts are the node's own codes (ian.metrics)."""
    from ian.metrics import CONSENSUS_ROLES, CONSENSUS_STATES

    def expr(name: str) -> str:
        return " ".join(rules[name]["expr"].split())

    leader = CONSENSUS_ROLES.index("leader")
    no_leader = expr("IANNoLeader")
    assert f'max by (job) (ian_consensus_role{{job="ian-nodes"}}) < {leader}' in no_leader
    assert 'or absent(ian_consensus_role{job="ian-nodes"})' in no_leader
    assert rules["IANNoLeader"]["for"] == "30s"
    assert rules["IANNoLeader"]["labels"]["severity"] == "critical"
    forked = CONSENSUS_STATES.index("FORKED")
    assert expr("IANForkEvidence") == (
        f"increase(ian_fork_evidence_total[15m]) > 0 or ian_consensus_state == {forked}"
    )
    assert rules["IANForkEvidence"]["for"] == "0m"
    assert CONSENSUS_STATES.index("DIVERGED") == 3
    assert "increase(ian_leader_changes_total" in expr("IANFrequentElections")


def test_rule_tests_evaluate_like_prometheus() -> None:
    """rules_test.yml evaluates as often as prometheus.yml does: a 30 s `for` tested at a
    one-minute interval would not prove the 30 s."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    tests = yaml.safe_load((PROM / "rules_test.yml").read_text(encoding="utf-8"))
    assert tests["evaluation_interval"] == config["global"]["evaluation_interval"]


def test_every_alert_is_tested_firing_and_silent(rules) -> None:
    doc = yaml.safe_load((PROM / "rules_test.yml").read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["rules.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires == set(rules), f"never tested firing: {set(rules) - fires}"
    assert silent == set(rules), f"never tested silent: {set(rules) - silent}"
