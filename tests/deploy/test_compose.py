"""deploy/compose.yaml: three authorities and a follower from one genesis, the one-shot steps
that make it, a mock Tau node, Prometheus and Grafana.

No Docker engine here (so no `docker compose config`): the file is parsed with PyYAML (which
resolves the `<<` merge keys like Compose does) and its structure checked. The one-shot
services' commands are run for real (the real `ian`, /bin/sh for the genesis script) with each
named volume as a temporary directory at the paths the service mounts it, and each node's
environment is loaded by the node's own settings and genesis code to check its role.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.nodes import IAN, clean_env

from ian.chain.genesis import Genesis
from ian.config import load_settings
from ian.errors import GenesisError
from ian.identity import load_identity
from ian.node import check_genesis, role_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
AUTHORITIES = ("ian-node-1", "ian-node-2", "ian-node-3")
FOLLOWERS = ("ian-node-4",)
NODES = (*AUTHORITIES, *FOLLOWERS)
IDENTITY = {n: f"{n}-identity" for n in AUTHORITIES}
GENESIS = "genesis"
TAU = "tcp://tau-node:12345"
#: The image's entry point and the ENV the one-shot commands rely on (checked in the Dockerfile).
IMAGE_ENTRYPOINT = ["ian"]
IMAGE_ENV = {"IAN_DATA_DIR": "/data"}


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


def named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume (bind mounts, which start with '.', left out)."""
    out = {}
    for vol in service.get("volumes", []):
        source, target = vol.split(":")[:2]
        if not source.startswith("."):
            out[target] = source
    return out


def seeds_of(service: dict[str, Any]) -> list[str]:
    return [s for s in env_of(service).get("IAN_SEED_NODES", "").split(",") if s]


def test_services(services: dict[str, Any]) -> None:
    one_shot = {*IDENTITY.values(), GENESIS}
    assert set(services) == {*NODES, *one_shot, "tau-node", "prometheus", "grafana"}
    for name in (*NODES, *one_shot, "tau-node"):
        svc = services[name]
        assert svc["image"] == "ian-network/ian-node:latest", name
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"] / "Dockerfile").is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["ian"]' in dockerfile
    assert all(f"{k}={v}" in dockerfile for k, v in IMAGE_ENV.items())


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


def test_one_shot_steps_run_in_order(services: dict[str, Any]) -> None:
    """identities -> genesis -> every node; one-shots never restart and have no probe."""
    for name in (*IDENTITY.values(), GENESIS):
        svc = services[name]
        assert svc["restart"] == "no", name
        assert svc["healthcheck"] == {"disable": True}, name
    for node, step in IDENTITY.items():
        # `ian node init` on the very volume the node runs on.
        assert services[step]["command"] == ["node", "init", "--data-dir", "/data"]
        assert named_mounts(services[step]) == {"/data": f"{node}-data"}
    genesis = services[GENESIS]
    assert genesis["depends_on"] == {
        step: {"condition": "service_completed_successfully"} for step in IDENTITY.values()
    }
    for node in AUTHORITIES:  # read, never written, by the genesis step
        assert f"{node}-data:/authorities/{node}:ro" in genesis["volumes"]
    for node in NODES:
        deps = services[node]["depends_on"]
        assert deps[GENESIS] == {"condition": "service_completed_successfully"}, node
        assert "ian-genesis:/genesis:ro" in services[node]["volumes"], node
        assert named_mounts(services[node])["/genesis"] == named_mounts(genesis)["/data"]


def test_topology_seeds_and_tau(services: dict[str, Any]) -> None:
    advertised = {n: env_of(services[n])["IAN_P2P_ADVERTISE"] for n in NODES}
    assert advertised == {n: f"tcp://{n}:9000" for n in NODES}
    for name in AUTHORITIES:
        env = env_of(services[name])
        # Every other authority, never itself: any one of them down leaves the others.
        assert sorted(seeds_of(services[name])) == sorted(
            advertised[a] for a in AUTHORITIES if a != name
        )
        # Whichever authority leads commits to Tau.
        assert env["IAN_TAU_ENDPOINT"] == TAU
        assert services[name]["depends_on"]["tau-node"]["condition"] == "service_healthy"
    for name in FOLLOWERS:
        assert sorted(seeds_of(services[name])) == sorted(advertised[a] for a in AUTHORITIES)
        assert "IAN_TAU_ENDPOINT" not in env_of(services[name])
    networks = {env_of(services[n])["IAN_NETWORK_ID"] for n in NODES}
    assert len(networks) == 1
    for name in NODES:
        env = env_of(services[name])
        assert "IAN_SEQUENCER" not in env, name  # refused on a chain of several authorities
        assert env["IAN_GENESIS"] == "/genesis/genesis.json", name


# --------------------------------------------------------------------------- first start, for real


def run_service(service: dict[str, Any], volumes: Path) -> subprocess.CompletedProcess[str]:
    """Run a one-shot service's entry point + command like the container would: each named
    volume is ``volumes/<name>``, and the container paths it is mounted at are rewritten to it
    in the arguments (one pass, so a rewritten path is never rewritten again)."""
    mounts = {target: volumes / source for target, source in named_mounts(service).items()}
    for path in mounts.values():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    pattern = re.compile(
        "|".join(re.escape(t) for t in sorted(mounts, key=len, reverse=True)) + r"(?![\w.-])"
    )

    def on_host(text: str) -> str:
        return pattern.sub(lambda m: str(mounts[m.group(0)]), text)

    argv = [on_host(a) for a in [*service.get("entrypoint", IMAGE_ENTRYPOINT), *service["command"]]]
    if argv[0] == "ian":
        argv[0] = str(IAN)
    env = clean_env({k: on_host(v) for k, v in {**IMAGE_ENV, **env_of(service)}.items()})
    env["PATH"] = os.pathsep.join([str(IAN.parent), "/usr/bin", "/bin"])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def first_start(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The volumes after the one-shot steps of a first `docker compose up`."""
    volumes = tmp_path_factory.mktemp("volumes")
    for step in IDENTITY.values():
        done = run_service(services[step], volumes)
        assert done.returncode == 0, done.stderr
    done = run_service(services[GENESIS], volumes)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote" in done.stdout
    return volumes


def test_first_start_writes_a_genesis_of_the_three_authorities(
    services: dict[str, Any], first_start: Path
) -> None:
    genesis = Genesis.read(first_start / "ian-genesis" / "genesis.json")
    identities = [
        load_identity(first_start / f"{n}-data" / "identity.json").node_id for n in AUTHORITIES
    ]
    assert list(genesis.authority_ids) == identities
    assert genesis.network == env_of(services["ian-node-1"])["IAN_NETWORK_ID"]


def test_later_runs_keep_the_genesis(services: dict[str, Any], first_start: Path) -> None:
    """A second `up` reruns the one-shots: identities and genesis stay as they are (a new
    genesis would be another chain, and every node would refuse to start)."""
    file = first_start / "ian-genesis" / "genesis.json"
    before = file.read_bytes()
    ids = {n: (first_start / f"{n}-data" / "identity.json").read_bytes() for n in AUTHORITIES}
    for step in IDENTITY.values():
        assert run_service(services[step], first_start).returncode == 0
    again = run_service(services[GENESIS], first_start)
    assert again.returncode == 0, again.stdout + again.stderr
    assert file.read_bytes() == before
    assert Genesis.read(file).chain_id() in again.stdout
    for n in AUTHORITIES:
        assert (first_start / f"{n}-data" / "identity.json").read_bytes() == ids[n]


def test_roles_as_the_node_decides_them(services: dict[str, Any], first_start: Path) -> None:
    """Each node's environment, with its volumes, loaded by the node's own code: the genesis
    it is given is the one the genesis step wrote, it agrees with the settings, and the three
    authorities are authorities, the follower a follower."""
    roles = {}
    for name in NODES:
        data = first_start / f"{name}-data"
        if name in FOLLOWERS:  # its identity is made on its first start
            made = subprocess.run(
                [str(IAN), "node", "init", "--data-dir", str(data)],
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert made.returncode == 0, made.stderr
        mounts = named_mounts(services[name])
        env = env_of(services[name])
        given = Path(env["IAN_GENESIS"])
        env["IAN_GENESIS"] = str(
            first_start / mounts[str(given.parent)] / given.relative_to(given.parent)
        )
        settings = load_settings(env={**env, "IAN_DATA_DIR": str(data)})
        node_id = load_identity(data / "identity.json").node_id
        assert settings.genesis is not None
        genesis = Genesis.read(settings.genesis)
        check_genesis(genesis, settings, node_id)  # raises on any disagreement
        roles[name] = role_for(settings, node_id, genesis)[0]
        if name == "ian-node-1":  # the check is real: a sequencer setting is refused
            with pytest.raises(GenesisError, match="elect"):
                check_genesis(genesis, load_settings(env={**env, "IAN_SEQUENCER": "self"}), node_id)
    assert roles == {
        "ian-node-1": "authority",
        "ian-node-2": "authority",
        "ian-node-3": "authority",
        "ian-node-4": "follower",
    }


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
    assert data == {
        **{n: f"{n}-data" for n in NODES},
        **{step: f"{n}-data" for n, step in IDENTITY.items()},
        GENESIS: "ian-genesis",
    }
    assert {"ian-genesis", "prometheus-data", "grafana-data"} <= declared


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
