"""A throw-away etcd cluster of 1 or 3 members on loopback, for comparison benchmarks.

    with EtcdCluster(members=3) as cluster:
        host, port = cluster.leader()      # where to send writes
        ...

Each member gets its own free client and peer port on 127.0.0.1 and a data dir inside one
temporary directory (removed on stop). Members run in their own session (a Ctrl-C in the
terminal reaches the bench only) and are stopped by the bench: SIGTERM, then SIGKILL after a
grace period, also when the body raises or is interrupted.

The ``etcd`` binary is looked up on PATH (and in /usr/bin, /usr/sbin). When it is missing and
the caller allows it, it is installed from Debian's ``etcd-server`` package (root and apt-get
only); otherwise :class:`EtcdUnavailable` says how to get it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEBIAN_PACKAGE = "etcd-server"
# The backend grows with every put (no compaction here): far above what a run writes, so a
# long run never hits the 2 GiB default quota's "database space exceeded" alarm.
QUOTA_BACKEND_BYTES = 8 * 1024**3
LOOPBACK = "127.0.0.1"


class EtcdUnavailable(RuntimeError):
    """etcd is not installed and could not (or may not) be installed."""


def find_etcd() -> str | None:
    found = shutil.which("etcd")
    if found:
        return found
    for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin"):
        p = Path(d) / "etcd"
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    return None


def ensure_etcd(*, allow_install: bool) -> str:
    """The path of ``etcd``; installs Debian's ``etcd-server`` when missing and allowed."""
    found = find_etcd()
    if found:
        return found
    hint = f"etcd is not installed: `apt-get install -y {DEBIAN_PACKAGE}` (Debian) brings it"
    if not allow_install:
        raise EtcdUnavailable(hint + " (installing was not allowed: --no-install)")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EtcdUnavailable(hint + " (not installing it myself: needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", DEBIAN_PACKAGE]
    print(f"installing etcd: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # a stale package list: refresh it once and try again
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = find_etcd()
    if done.returncode != 0 or not found:
        raise EtcdUnavailable(f"{hint}; apt-get failed: {done.stderr.strip()[-400:]}")
    return found


def etcd_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.lower().startswith("etcd version:"):
            return line.split(":", 1)[1].strip()
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "?"


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct ports free on ``host`` right now (all sockets held until every port is
    chosen, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path

    @property
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"


def plan_members(count: int, ports: list[int], root: Path) -> list[Member]:
    """``count`` members from ``2 * count`` distinct ports (client ports first)."""
    if count < 1:
        raise ValueError("an etcd cluster needs at least one member")
    if len(ports) != 2 * count or len(set(ports)) != len(ports):
        raise ValueError(f"need {2 * count} distinct ports, got {ports}")
    return [Member(f"m{i}", ports[i], ports[count + i], root / f"m{i}.etcd") for i in range(count)]


def member_args(
    binary: str, member: Member, cluster: list[Member], token: str, quota: int
) -> list[str]:
    """The command line of one member of a new cluster on loopback."""
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    return [
        binary,
        "--name",
        member.name,
        "--data-dir",
        str(member.data_dir),
        "--listen-client-urls",
        member.client_url,
        "--advertise-client-urls",
        member.client_url,
        "--listen-peer-urls",
        member.peer_url,
        "--initial-advertise-peer-urls",
        member.peer_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        token,
        "--initial-cluster-state",
        "new",
        "--quota-backend-bytes",
        str(quota),
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]


def _post_json(url: str, doc: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


class EtcdCluster:
    """1 or 3 (or any number of) etcd members on loopback; a context manager."""

    def __init__(
        self,
        members: int = 1,
        *,
        allow_install: bool = True,
        quota_backend_bytes: int = QUOTA_BACKEND_BYTES,
        start_timeout: float = 30.0,
    ) -> None:
        self.count = members
        self.allow_install = allow_install
        self.quota = quota_backend_bytes
        self.start_timeout = start_timeout
        self.binary = ""
        self.version = ""
        self.root: Path | None = None
        self.members: list[Member] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- lifecycle

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.binary = ensure_etcd(allow_install=self.allow_install)
        self.version = etcd_version(self.binary)
        self.root = Path(tempfile.mkdtemp(prefix="ian-bench-etcd-"))
        self.members = plan_members(self.count, free_ports(2 * self.count), self.root)
        token = f"ian-bench-{os.getpid()}-{self.root.name}"
        for m in self.members:
            args = member_args(self.binary, m, self.members, token, self.quota)
            with (self.root / f"{m.name}.log").open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        args,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Every member answers ``GET /health`` with ``"health":"true"`` (it has a leader), and
        a put through the first member is committed."""
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.members)
        while pending and time.monotonic() < deadline:
            for p, m in zip(self.procs, self.members, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited:\n{self.log_tail(m)}")
            m = pending[0]
            with contextlib.suppress(OSError, ValueError):
                if str(_get_json(m.client_url + "/health").get("health")) == "true":
                    pending.pop(0)
                    continue
            time.sleep(0.05)
        if pending:
            raise RuntimeError(
                f"etcd member {pending[0].name} not healthy within {self.start_timeout} s:\n"
                + self.log_tail(pending[0])
            )
        _post_json(self.members[0].client_url + "/v3/kv/put", {"key": "aGVsbG8=", "value": ""})

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every member, SIGKILL (the whole session) what is left after ``grace``
        seconds, then remove the data dirs. Safe to call twice."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- queries

    def log_tail(self, m: Member, chars: int = 2000) -> str:
        if self.root is None:
            return ""
        path = self.root / f"{m.name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def leader(self) -> Member:
        """The member that is the Raft leader (``POST /v3/maintenance/status`` on each member:
        its own id in ``header.member_id``, the leader's in ``leader``)."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for m in self.members:
                with contextlib.suppress(OSError, ValueError):
                    st = _post_json(m.client_url + "/v3/maintenance/status", {})
                    if str(st.get("leader")) == str(st.get("header", {}).get("member_id")):
                        return m
            time.sleep(0.05)
        raise RuntimeError(f"no etcd leader within {self.start_timeout} s")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]
