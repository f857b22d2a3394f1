"""deploy/compose.yaml: a three-node network, a mock Tau node, Prometheus and Grafana.

No Docker engine here (so no `docker compose config`): the file is parsed with PyYAML (which
resolves the `<<` merge keys like Compose does) and its structure checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ian.config import load_settings
from ian.node import role_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NODES = ("ian-node-1", "ian-node-2", "ian-node-3")
SEED = "tcp://ian-node-1:9000"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {*NODES, "tau-node", "prometheus", "grafana"}
    for name in (*NODES, "tau-node"):
        svc = services[name]
        assert svc["image"] == "ian-network/ian-node:latest", name
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"] / "Dockerfile").is_file()


def test_node_healthchecks_probe_health_with_python(services: dict[str, Any]) -> None:
    for name in NODES:
        hc = services[name]["healthcheck"]
        test = hc["test"]
        assert test[:3] == ["CMD", "python", "-c"], test
        assert "http://127.0.0.1:8000/health" in test[3] and "b'OK'" in test[3]
        assert "curl" not in " ".join(test)
        # The runbook's timings.
        assert (hc["interval"], hc["timeout"], hc["retries"]) == ("30s", "10s", 3)
        assert services[name]["restart"] == "unless-stopped"


def test_tau_node_runs_the_mock_with_its_own_healthcheck(services: dict[str, Any]) -> None:
    tau = services["tau-node"]
    assert tau["command"] == ["tau", "serve-mock", "--host", "0.0.0.0", "--port", "12345"]
    probe = " ".join(tau["healthcheck"]["test"])
    assert "12345" in probe and "/health" not in probe  # not the image's HTTP probe


def test_topology_seed_sequencer_and_tau(services: dict[str, Any]) -> None:
    seq = env_of(services["ian-node-1"])
    assert "IAN_SEED_NODES" not in seq
    assert seq["IAN_TAU_ENDPOINT"] == "tcp://tau-node:12345"
    assert services["ian-node-1"]["depends_on"]["tau-node"]["condition"] == "service_healthy"
    for name in NODES[1:]:
        env = env_of(services[name])
        assert env["IAN_SEED_NODES"] == SEED
        assert "IAN_TAU_ENDPOINT" not in env
        assert services[name]["depends_on"]["ian-node-1"]["condition"] == "service_healthy"
    networks = {env_of(services[n])["IAN_NETWORK_ID"] for n in NODES}
    assert len(networks) == 1
    for name in NODES:
        assert env_of(services[name])["IAN_P2P_ADVERTISE"] == f"tcp://{name}:9000"


def test_roles_as_the_node_decides_them(services: dict[str, Any], tmp_path: Path) -> None:
    """Each node's environment, loaded by the node's own settings code, gives the intended
    role: ian-node-1 sequences, the others follow. Values must also be valid settings."""
    roles = {}
    for name in NODES:
        env = {**env_of(services[name]), "IAN_DATA_DIR": str(tmp_path / name)}
        settings = load_settings(env=env)
        roles[name] = role_for(settings, "0" * 40)[0]
    assert roles == {"ian-node-1": "sequencer", "ian-node-2": "follower", "ian-node-3": "follower"}


def test_every_ian_env_is_a_setting(services: dict[str, Any], ian_env_names) -> None:
    for name, svc in services.items():
        assert ian_env_names(list(env_of(svc))) == [], name


def test_named_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    data = {}
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if not source.startswith("."):
                assert source in declared, f"{name}: volume {source} is not declared"
            if target == "/data":
                data[name] = source
    assert data == {n: f"{n}-data" for n in NODES}
    assert {"prometheus-data", "grafana-data"} <= declared


def test_host_ports_do_not_clash(services: dict[str, Any]) -> None:
    published = [p.split(":")[0] for svc in services.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), published
    assert "8000:8000" in services["ian-node-1"]["ports"]


def _bind_sources(svc: dict[str, Any]) -> dict[str, Path]:
    out = {}
    for vol in svc.get("volumes", []):
        source, target = vol.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def test_prometheus_mounts_config_and_rules(services: dict[str, Any]) -> None:
    mounts = _bind_sources(services["prometheus"])
    config = mounts["/etc/prometheus/prometheus.yml"]
    assert config == DEPLOY / "prometheus" / "prometheus.yml"
    doc = yaml.safe_load(config.read_text())
    for rule_file in doc["rule_files"]:
        in_container = str(Path("/etc/prometheus") / rule_file)
        assert in_container in mounts, f"{rule_file} is not mounted next to prometheus.yml"
        assert mounts[in_container].is_file()
    # The scrape targets are exactly the compose nodes' API ports.
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "ian-nodes"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"{n}:8000" for n in NODES]


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, Any]) -> None:
    mounts = _bind_sources(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/ian.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == DEPLOY / "grafana" / "dashboards"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    host = re.match(r"http://([^:/]+):", datasource["url"]).group(1)
    assert host in services
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
