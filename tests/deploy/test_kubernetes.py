"""deploy/kubernetes/: schema-valid offline (kubernetes-validate) and built as designed.

The bootstrap is run for real, pod by pod, with each volume a temporary directory: the
`identity` init container (the real `ian node init`), the documented way to make the genesis
(`ian network init -a /data --out -` in each authority pod, then `ian network init` over the
three specs), the `wait-for-genesis` script (/bin/sh, with a stub `sleep`) and the main
container's wrapper (/bin/sh, with `ian` replaced by a stub that records its environment). The
environment each ordinal ends up with is loaded by the node's own settings and genesis code to
check its role.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.nodes import IAN, clean_env

from ian.chain.genesis import Genesis
from ian.config import load_settings
from ian.identity import load_identity
from ian.node import check_genesis, role_for

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
AUTHORITY_ORDINALS = (0, 1, 2)


def p2p_address(ordinal: int) -> str:
    return f"tcp://ian-node-{ordinal}.ian-node-headless.ian.svc.cluster.local:9000"


# Oldest Kubernetes release the manifests are checked against, and the tool's newest.
K8S_VERSIONS = ("1.27.0", None)


def manifests() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def sts(objects) -> dict[str, Any]:
    return objects[("StatefulSet", "ian-node")]


@pytest.fixture(scope="module")
def container(sts) -> dict[str, Any]:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def init_containers(sts) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in sts["spec"]["template"]["spec"]["initContainers"]}


def all_containers(sts) -> list[dict[str, Any]]:
    spec = sts["spec"]["template"]["spec"]
    return [*spec["initContainers"], *spec["containers"]]


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_kubernetes_validate_strict(tool, version: str | None) -> None:
    args = ["--strict", *(["-k", version] if version else []), *manifests()]
    result = tool("kubernetes-validate", *args)
    assert result.returncode == 0, f"kubernetes-validate:\n{result.stdout}{result.stderr}"
    assert "passed" in result.stdout
    assert "ERROR" not in result.stdout + result.stderr


def test_namespace_first_and_everything_in_it(objects) -> None:
    assert manifests()[0].read_text().count("kind: Namespace") == 1
    assert ("Namespace", "ian") in objects
    for (kind, name), doc in objects.items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "ian", (kind, name)


def test_services(objects, sts) -> None:
    headless = objects[("Service", "ian-node-headless")]["spec"]
    api = objects[("Service", "ian-node-api")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == "ian-node-headless"
    assert api.get("type", "ClusterIP") == "ClusterIP"
    assert {p["port"] for p in headless["ports"]} == {8000, 9000, 9001}
    assert 8000 in {p["port"] for p in api["ports"]}
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for spec in (headless, api):
        assert spec["selector"].items() <= labels.items()


def test_statefulset_shape(sts, container) -> None:
    spec = sts["spec"]
    assert spec["replicas"] == 3
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == "data"
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert {p["containerPort"] for p in container["ports"]} == {8000, 9000, 9001}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    res = container["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and {"cpu", "memory"} <= res["limits"].keys()
    # Service links would put IAN_NODE_API_* variables into the node's IAN_* namespace.
    assert spec["template"]["spec"]["enableServiceLinks"] is False
    # An authority is ready only with a leader, elected by a majority: start all pods at once.
    assert spec["podManagementPolicy"] == "Parallel"


def test_genesis_comes_from_the_optional_configmap(sts, container, init_containers) -> None:
    """IAN_GENESIS is the ConfigMap ian-genesis's genesis.json; optional, so pods start (and
    make their identities) before it exists; never part of the manifests, so `kubectl apply`
    cannot replace the genesis of a running chain."""
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    config_map = volumes["genesis"]["configMap"]
    assert config_map["name"] == "ian-genesis"
    assert config_map["optional"] is True
    assert config_map["items"] == [{"key": "genesis.json", "path": "genesis.json"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for c in (container, init_containers["wait-for-genesis"]):
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "genesis"]
        assert mount["readOnly"] is True
        assert env["IAN_GENESIS"] == f"{mount['mountPath']}/genesis.json"
    assert not any(path.read_text().count("kind: ConfigMap") for path in manifests()), (
        "a ConfigMap in the manifests would overwrite the chain's genesis on every apply"
    )


def test_init_containers(init_containers) -> None:
    assert list(init_containers) == ["identity", "wait-for-genesis"]  # in this order
    identity = init_containers["identity"]
    assert identity["command"] == ["ian", "node", "init", "--data-dir", "/data"]
    assert {m["mountPath"]: m["name"] for m in identity["volumeMounts"]}["/data"] == "data"
    # The wait container also mounts the PVC: `kubectl exec -c wait-for-genesis -- ian
    # network init -a /data --out -` prints the pod's authority spec while it waits.
    wait = init_containers["wait-for-genesis"]
    assert {m["mountPath"]: m["name"] for m in wait["volumeMounts"]}["/data"] == "data"


def test_security_context(sts) -> None:
    pod = sts["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 1000 and pod["fsGroup"] == 1000
    assert pod["fsGroupChangePolicy"] == "OnRootMismatch"
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    for container in all_containers(sts):  # Pod Security "restricted": every container
        c = container["securityContext"]
        assert c["readOnlyRootFilesystem"] is True, container["name"]
        assert c["allowPrivilegeEscalation"] is False, container["name"]
        assert c["capabilities"]["drop"] == ["ALL"], container["name"]
        assert c["runAsNonRoot"] is True, container["name"]
        assert c["seccompProfile"]["type"] == "RuntimeDefault", container["name"]
        res = container["resources"]
        assert {"cpu", "memory"} <= res["requests"].keys() & res["limits"].keys()


def _allowed_down(budget: dict[str, Any], pods: int) -> int:
    """How many of ``pods`` a PodDisruptionBudget lets voluntary disruptions take down."""
    if "minAvailable" in budget:
        value = budget["minAvailable"]
        keep = -(-pods * int(value[:-1]) // 100) if isinstance(value, str) else value
        return max(0, pods - keep)
    value = budget["maxUnavailable"]
    return -(-pods * int(value[:-1]) // 100) if isinstance(value, str) else value


@pytest.mark.parametrize("replicas", [3, 4, 5, 7])
def test_pod_disruption_budget_keeps_a_majority_of_authorities(objects, sts, replicas) -> None:
    """Whatever the replica count, drains and upgrades can take down at most one of the three
    authorities (ordinals 0-2): two of three keep electing and committing."""
    pdb = objects[("PodDisruptionBudget", "ian-node")]["spec"]
    # The budget covers every pod of the set, authorities included.
    assert pdb["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert "matchExpressions" not in pdb["selector"]
    authorities = len(AUTHORITY_ORDINALS)
    worst_case_down = min(_allowed_down(pdb, replicas), authorities)
    assert authorities - worst_case_down > authorities // 2
    # A not-ready authority may still vote: never evicted past the budget.
    assert pdb["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"


def test_network_policy(objects) -> None:
    deny = objects[("NetworkPolicy", "default-deny-ingress")]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    rules = objects[("NetworkPolicy", "ian-node")]["spec"]["ingress"]
    by_port = {r["ports"][0]["port"]: r.get("from") for r in rules}
    assert set(by_port) == {8000, 9000, 9001}
    namespace_pods = {"podSelector": {}}
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert by_port[8000] == [namespace_pods, monitoring]
    assert by_port[9000] is None  # P2P from anywhere: outside peers dial in
    assert by_port[9001] == [namespace_pods]


def test_every_ian_env_is_a_setting(sts, ian_env_names) -> None:
    for c in all_containers(sts):
        assert ian_env_names([e["name"] for e in c.get("env", [])]) == [], c["name"]


def _static_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container env as the kubelet builds it (downward API + $(VAR) expansion)."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
        # optional secretKeyRef (IAN_API_TOKEN): absent unless the secret exists
    return env


def _run_wrapper(
    container: dict[str, Any], pod_name: str, tmp_path: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """Run the container's command with a stub `ian` on PATH; return the env it was given and
    the IAN_* env it exec'd `ian node run` with."""
    stub_dir = tmp_path / f"bin-{pod_name}"
    stub_dir.mkdir()
    out = tmp_path / f"{pod_name}.json"
    stub = stub_dir / "ian"
    stub.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" -c '
        f'\'import json,os,sys; json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, '
        f'open("{out}", "w"))\' "$@"\n'
    )
    stub.chmod(0o755)
    given = _static_env(container, pod_name)
    env = {"PATH": f"{stub_dir}:/usr/bin:/bin", **given}
    result = subprocess.run(
        container["command"] + container.get("args", []),
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["argv"] == ["node", "run"]
    return given, {k: v for k, v in doc["env"].items() if k.startswith("IAN_")}


@pytest.mark.parametrize("ordinal", [0, 1, 2, 3, 10])
def test_wrapper_seeds_every_other_authority(container, tmp_path: Path, ordinal: int) -> None:
    """Every pod dials the three authorities but itself; nothing else in the env changes."""
    pod = f"ian-node-{ordinal}"
    given, env = _run_wrapper(container, pod, tmp_path)
    expected = [p2p_address(i) for i in AUTHORITY_ORDINALS if i != ordinal]
    assert env["IAN_SEED_NODES"].split(",") == expected
    assert env["IAN_P2P_ADVERTISE"] == p2p_address(ordinal)
    assert "IAN_SEQUENCER" not in env
    unchanged = {k: v for k, v in given.items() if k.startswith("IAN_") and k != "IAN_SEED_NODES"}
    assert {k: env[k] for k in unchanged} == unchanged
    assert set(env) == set(unchanged) | {"IAN_SEED_NODES"}


# --------------------------------------------------------------------------- bootstrap, for real


def _host_paths(c: dict[str, Any], volumes: dict[str, Path]) -> Callable[[str], str]:
    """Rewrites the container paths ``c`` mounts volumes at to the volumes' directories."""
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    pattern = re.compile(
        "|".join(re.escape(t) for t in sorted(mounts, key=len, reverse=True)) + r"(?![\w.-])"
    )
    return lambda text: pattern.sub(lambda m: str(mounts[m.group(0)]), text)


def _ian(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IAN), *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _pod_volumes(root: Path, pvc: Path, config_map: Path, ordinal: int) -> dict[str, Path]:
    """The pod's volumes by name: its PVC, the ConfigMap's directory, its own /tmp."""
    tmp = root / f"tmp-{ordinal}"
    tmp.mkdir(exist_ok=True)
    return {"data": pvc, "genesis": config_map, "tmp": tmp}


@dataclass
class Cluster:
    """The volumes of a bootstrapped set: each pod's PVC, the ConfigMap, the genesis."""

    root: Path
    pvcs: dict[int, Path]
    config_map: Path
    genesis: Genesis

    def volumes(self, ordinal: int) -> dict[str, Path]:
        return _pod_volumes(self.root, self.pvcs[ordinal], self.config_map, ordinal)


@pytest.fixture(scope="module")
def cluster(init_containers, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """runbook/deployment.md's bootstrap: every pod's `identity` init container; each
    authority's spec printed by `ian network init -a /data --out -` in its wait-for-genesis
    container; the genesis over the three specs; the ConfigMap's file."""
    root = tmp_path_factory.mktemp("cluster")
    pvcs = {i: root / f"data-ian-node-{i}" for i in (*AUTHORITY_ORDINALS, 3, 10)}
    config_map = root / "configmap-ian-genesis"
    config_map.mkdir()
    identity = init_containers["identity"]
    wait = init_containers["wait-for-genesis"]
    wait_env = {e["name"]: e["value"] for e in wait["env"]}
    specs = []
    for ordinal, pvc in pvcs.items():
        pvc.mkdir(mode=0o700)
        on_host = _host_paths(identity, _pod_volumes(root, pvc, config_map, ordinal))
        made = _ian(*[on_host(a) for a in identity["command"][1:]])
        assert made.returncode == 0, made.stderr
        if ordinal in AUTHORITY_ORDINALS:
            on_host = _host_paths(wait, _pod_volumes(root, pvc, config_map, ordinal))
            env = {k: on_host(v) for k, v in wait_env.items()}
            shown = _ian("network", "init", "-a", on_host("/data"), "--out", "-", env=env)
            assert shown.returncode == 0, shown.stderr
            (authority,) = json.loads(shown.stdout)["authorities"]
            specs.append(f"{authority['node_id']}:{authority['public_key']}")
    out = config_map / "genesis.json"
    args = [a for spec in specs for a in ("-a", spec)]
    made = _ian(
        "network", "init", *args, "--network", wait_env["IAN_NETWORK_ID"], "--out", str(out)
    )
    assert made.returncode == 0, made.stderr
    return Cluster(root, pvcs, config_map, Genesis.read(out))


def test_genesis_names_ordinals_0_to_2(cluster: Cluster) -> None:
    ids = [load_identity(cluster.pvcs[i] / "identity.json").node_id for i in AUTHORITY_ORDINALS]
    assert list(cluster.genesis.authority_ids) == ids


def _run_wait(
    wait: dict[str, Any], volumes: dict[str, Path], tmp_path: Path, sleep_body: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the wait-for-genesis script with a stub `sleep` that records its argument and runs
    ``sleep_body``; returns the result and the arguments `sleep` was called with."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    calls = tmp_path / "sleep-calls"
    (stub_dir / "sleep").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n{sleep_body}\n')
    (stub_dir / "sleep").chmod(0o755)
    on_host = _host_paths(wait, volumes)
    result = subprocess.run(
        [on_host(a) for a in wait["command"] + wait["args"]],
        env={"PATH": f"{stub_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    slept = calls.read_text().split() if calls.exists() else []
    return result, slept


def test_wait_for_genesis_waits_until_the_configmap_is_filled(
    init_containers, cluster: Cluster, tmp_path: Path
) -> None:
    """Without genesis.json the script waits (sleep); once the kubelet fills the volume (here:
    the stub `sleep` copies the file in) it ends with exit 0. No real sleeping."""
    empty = tmp_path / "configmap-not-yet"
    empty.mkdir()
    volumes = {**cluster.volumes(0), "genesis": empty}
    source = cluster.config_map / "genesis.json"
    result, slept = _run_wait(
        init_containers["wait-for-genesis"], volumes, tmp_path, f'cp "{source}" "{empty}/"'
    )
    assert result.returncode == 0, result.stderr
    assert slept == ["10"]
    assert "waiting for ConfigMap ian-genesis" in result.stdout


def test_wait_for_genesis_passes_at_once_when_it_exists(
    init_containers, cluster: Cluster, tmp_path: Path
) -> None:
    result, slept = _run_wait(
        init_containers["wait-for-genesis"], cluster.volumes(0), tmp_path, "exit 1"
    )
    assert result.returncode == 0, result.stderr
    assert slept == []


@pytest.mark.parametrize(
    ("ordinal", "role"),
    [(0, "authority"), (1, "authority"), (2, "authority"), (3, "follower"), (10, "follower")],
)
def test_ordinal_roles(
    container, cluster: Cluster, tmp_path: Path, ordinal: int, role: str
) -> None:
    """The env each pod's `ian node run` gets, with its PVC and the ConfigMap, loaded by the
    node's own code: the genesis agrees with the settings (no IAN_SEQUENCER, same network), and
    ordinals 0-2 are authorities, the others followers."""
    _, env = _run_wrapper(container, f"ian-node-{ordinal}", tmp_path)
    on_host = _host_paths(container, cluster.volumes(ordinal))
    settings = load_settings(env={k: on_host(v) for k, v in env.items()})
    assert settings.data_dir == cluster.pvcs[ordinal]
    assert settings.genesis is not None
    genesis = Genesis.read(settings.genesis)
    assert genesis.chain_id() == cluster.genesis.chain_id()
    node_id = load_identity(cluster.pvcs[ordinal] / "identity.json").node_id
    check_genesis(genesis, settings, node_id)
    assert role_for(settings, node_id, genesis)[0] == role
    # Readiness needs min_peers once seeds are set: one other authority is enough.
    assert settings.seed_nodes and settings.min_peers <= 1
