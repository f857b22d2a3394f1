"""deploy/kubernetes/: schema-valid offline (kubernetes-validate) and built as designed.

The StatefulSet's start-up wrapper is executed for real with /bin/sh (with `ian` replaced by
a stub that records its environment), and the environment each ordinal ends up with is
loaded by the node's own settings code to check its role.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ian.config import load_settings
from ian.node import role_for

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
SEED = "tcp://ian-node-0.ian-node-headless.ian.svc.cluster.local:9000"
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


def test_security_context(sts, container) -> None:
    pod = sts["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 1000 and pod["fsGroup"] == 1000
    assert pod["fsGroupChangePolicy"] == "OnRootMismatch"
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    c = container["securityContext"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"]
    assert c["runAsNonRoot"] is True


def test_pod_disruption_budget(objects, sts) -> None:
    pdb = objects[("PodDisruptionBudget", "ian-node")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


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


def test_every_ian_env_is_a_setting(container, ian_env_names) -> None:
    assert ian_env_names([e["name"] for e in container["env"]]) == []


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


def _run_wrapper(container: dict[str, Any], pod_name: str, tmp_path: Path) -> dict[str, str]:
    """Run the container's command with a stub `ian` on PATH; return the env it exec'd with."""
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
    env = {"PATH": f"{stub_dir}:/usr/bin:/bin", **_static_env(container, pod_name)}
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
    return {k: v for k, v in doc["env"].items() if k.startswith("IAN_")}


@pytest.mark.parametrize(
    ("ordinal", "role"), [(0, "sequencer"), (1, "follower"), (2, "follower"), (10, "follower")]
)
def test_ordinal_roles(container, tmp_path: Path, ordinal: int, role: str) -> None:
    """Ordinal 0 is the seed and the sequencer; every other ordinal seeds from it and follows.

    Seeding every pod (ordinal 0 included) with ian-node-0 and no IAN_SEQUENCER would make
    every pod a follower; the wrapper is what makes exactly one sequencer.
    """
    pod = f"ian-node-{ordinal}"
    env = _run_wrapper(container, pod, tmp_path)
    if ordinal == 0:
        assert "IAN_SEED_NODES" not in env
        assert env["IAN_SEQUENCER"] == "self"
    else:
        assert env["IAN_SEED_NODES"] == SEED
        assert "IAN_SEQUENCER" not in env
    assert env["IAN_P2P_ADVERTISE"] == f"tcp://{pod}.ian-node-headless.ian.svc.cluster.local:9000"
    settings = load_settings(env={**env, "IAN_DATA_DIR": str(tmp_path / "data")})
    assert role_for(settings, "0" * 40)[0] == role
    # Readiness needs min_peers once seeds are set: a follower must be able to reach it with
    # the seed alone, whatever the replica count.
    if settings.seed_nodes:
        assert settings.min_peers <= 1
