"""Real `ian node run` processes on loopback, and the `ian` CLI as a subprocess.

Shared test support: the integration tests get these as fixtures from
``tests/integration/conftest.py``; CLI, runbook and doc tests import them from here.

``ian_nodes.start()`` spawns ``ian node run`` (the venv's console script next to
``sys.executable``) on a fresh data dir with every port 0 and JSON logs, reads its stderr on a
thread and returns once the node logged every address it was asked to wait for (by default the
API's, from ``serving the API on http://HOST:PORT``). Add patterns to :data:`ADDRESS_PATTERNS`
(e.g. a P2P listen address) and pass ``wait=("api", "p2p")`` to learn more addresses.
``ian_nodes.start_many(n)`` spawns ``n`` nodes first and then waits for each, so they start in
parallel. Every process is killed and reaped at teardown, whatever the test did.

Networks: ``ian_nodes.start_network(n)`` starts one seed (the sequencer: no seeds of its own)
and ``n - 1`` followers whose only seed is it (they learn the sequencer from its hello), and
waits until every follower is connected to the seed. ``ian_nodes.restart(node)`` starts a new
process on the same data dir, env and (by default) the same ports. ``ian_module_nodes`` is the
same factory shared by a whole module, for read-mostly checks on one network.

Polling, not sleeping: :func:`wait_until` polls a predicate with a short interval and a deadline;
:meth:`NodeProcess.status` and friends read the node's API. :class:`FaultProxy` is an in-process
TCP proxy on loopback (its own thread and asyncio loop) that can cut a link (close every
connection and refuse new ones) and heal it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

IAN = Path(sys.executable).with_name("ian")
START_TIMEOUT_S = 20.0

# name -> regex over a log record's "msg"; group "address" is what the node bound.
ADDRESS_PATTERNS: dict[str, re.Pattern[str]] = {
    "api": re.compile(r"serving the API on (?P<address>http://\S+:\d+)"),
    "p2p": re.compile(r"node [0-9a-f]{40} \(\w+\) p2p on (?P<address>tcp://\S+:\d+)"),
}

#: Wait for both addresses (the API's and the P2P listener's).
P2P_WAIT: tuple[str, ...] = ("api", "p2p")

DEMO_GOAL = "DEMO_TRADING_AGENT"
TRIVIAL_GOAL = "NET_TRIVIAL"
#: Every node of a test network declares the same goals (they are part of consensus).
TRIVIAL_GOALS_JSON = json.dumps([{"id": TRIVIAL_GOAL, "evaluator": "trivial"}])
#: Accepted / refused by the demo goal's thresholds (see tests/conftest.py).
DEMO_ACCEPTED = {"strategy": "momentum", "lookback": 2, "threshold": 0.01, "position_size": 0.1}
DEMO_REJECTED = {"strategy": "momentum", "lookback": 20, "threshold": 0.01, "position_size": 1.0}

#: Env for nodes of a replication network: the trivial goal, rate limits out of the way.
NETWORK_ENV: dict[str, str] = {
    "IAN_GOALS": TRIVIAL_GOALS_JSON,
    "IAN_CLIENT_RATE": "100000",
    "IAN_CLIENT_BURST": "100000",
    "IAN_CONTRIBUTOR_RATE": "100000",
    "IAN_CONTRIBUTOR_BURST": "100000",
    "IAN_MIN_PEERS": "0",
}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without inherited IAN_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def node_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "IAN_DATA_DIR": str(data_dir),
        "IAN_API_HOST": "127.0.0.1",
        "IAN_API_PORT": "0",
        "IAN_P2P_HOST": "127.0.0.1",
        "IAN_P2P_PORT": "0",
        "IAN_WS_PORT": "0",
        "IAN_LOG_FORMAT": "json",
        "IAN_LOG_LEVEL": "INFO",
    }
    env.update(extra or {})
    return clean_env(env)


class NodeProcess:
    """One `ian node run` process and everything it wrote on stderr."""

    def __init__(self, data_dir: Path, env: dict[str, str], args: Iterable[str] = ()) -> None:
        self.data_dir = data_dir
        self.env = env
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.addresses: dict[str, str] = {}
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            [str(IAN), "node", "run", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._drain_stdout, daemon=True),
        ]
        for t in self._readers:
            t.start()

    # -- reading ---------------------------------------------------------------------------
    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            with self._cond:
                self.lines.append(line)
                if isinstance(record, dict):
                    self.records.append(record)
                    msg = str(record.get("msg", ""))
                    for name, pattern in ADDRESS_PATTERNS.items():
                        m = pattern.search(msg)
                        if m and name not in self.addresses:
                            self.addresses[name] = m.group("address")
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = START_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first log record matching ``predicate``; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                for record in self.records[checked:]:
                    if predicate(record):
                        return record
                checked = len(self.records)
                if self._eof:
                    pytest.fail(f"node exited ({self.proc.poll()}) first:\n{self.stderr_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no matching log line after {timeout}s:\n{self.stderr_text()}")
                self._cond.wait(left)

    def wait_for_msg(self, fragment: str, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        return self.wait_for(lambda r: fragment in str(r.get("msg", "")), timeout)

    def has_msg(self, fragment: str) -> bool:
        with self._cond:
            return any(fragment in str(r.get("msg", "")) for r in self.records)

    def wait_ready(self, names: Iterable[str] = ("api",), timeout: float = START_TIMEOUT_S) -> None:
        names = tuple(names)
        self.wait_for(lambda _r: all(n in self.addresses for n in names), timeout)

    def stderr_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_stderr_closed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._eof and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())

    # -- addresses -------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        url = self.addresses["api"]
        return url.replace("://0.0.0.0:", "://127.0.0.1:")

    @property
    def p2p_address(self) -> str:
        """``tcp://127.0.0.1:PORT`` (needs ``wait=(..., "p2p")`` or :meth:`wait_ready`)."""
        if "p2p" not in self.addresses:
            self.wait_ready(("p2p",))
        return self.addresses["p2p"].replace("://0.0.0.0:", "://127.0.0.1:")

    def port(self, name: str) -> int:
        return int(self.addresses[name].rsplit(":", 1)[1])

    @property
    def node_id(self) -> str:
        doc = json.loads((self.data_dir / "identity.json").read_text())
        return str(doc["node_id"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- API -------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.api_url + path, params=params or None, timeout=10)

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.api_url + path, json=body, timeout=kwargs.pop("timeout", 15))

    def status(self) -> dict[str, Any]:
        r = self.get("/api/v1/status")
        r.raise_for_status()
        return r.json()

    def connected(self) -> dict[str, dict[str, Any]]:
        """Connected peers by node id, from ``GET /api/v1/peers``."""
        r = self.get("/api/v1/peers")
        r.raise_for_status()
        return {p["node_id"]: p for p in r.json()["connected"]}

    def metrics(self) -> dict[str, float]:
        """Every sample on /metrics, label sets summed: ``{"ian_block_height": 3.0, ...}``."""
        r = self.get("/metrics")
        r.raise_for_status()
        return parse_metrics(r.text)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def chain_view(self) -> dict[str, Any]:
        """Height, head and every goal's roots: equal on nodes that hold the same chain."""
        st = self.status()
        return {
            "height": st["height"],
            "head_hash": st["head_hash"],
            "goals": {
                gid: {
                    k: g[k]
                    for k in ("log_size", "log_root", "leaderboard_size", "leaderboard_root")
                }
                for gid, g in sorted(st["goals"].items())
            },
        }

    # -- stopping --------------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code; fails if the node takes longer than ``timeout``."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node did not exit within {timeout}s of SIGTERM:\n{self.stderr_text()}")
        self.wait_stderr_closed()
        return code

    def kill(self) -> int:
        """SIGKILL (no chance to clean up) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(10)
        self.wait_stderr_closed()
        return code

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


class NodeFactory:
    """Starts nodes on fresh data dirs under ``tmp_path``; kills them all at cleanup."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[NodeProcess] = []
        self._count = 0

    def data_dir(self) -> Path:
        self._count += 1
        return self.tmp_path / f"node{self._count}"

    def spawn(
        self,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> NodeProcess:
        data_dir = data_dir if data_dir is not None else self.data_dir()
        node = NodeProcess(data_dir, node_env(data_dir, env), args)
        self.started.append(node)
        return node

    def start(
        self,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        wait: Iterable[str] = ("api",),
    ) -> NodeProcess:
        node = self.spawn(data_dir, env)
        node.wait_ready(wait)
        return node

    def start_many(
        self, n: int, env: Mapping[str, str] | None = None, wait: Iterable[str] = ("api",)
    ) -> list[NodeProcess]:
        nodes = [self.spawn(env=env) for _ in range(n)]
        for node in nodes:
            node.wait_ready(wait)
        return nodes

    def start_follower(
        self,
        seed: NodeProcess | str,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> NodeProcess:
        """A node whose only seed is ``seed`` (a node or a ``tcp://`` address)."""
        address = seed if isinstance(seed, str) else seed.p2p_address
        return self.start(data_dir, {**(env or {}), "IAN_SEED_NODES": address}, P2P_WAIT)

    def start_network(
        self, n: int, env: Mapping[str, str] | None = None, *, timeout: float = 20.0
    ) -> list[NodeProcess]:
        """``[seed, *followers]``: the seed orders blocks (no seeds: sequencer), the ``n - 1``
        followers start in parallel with the seed as their only seed; returns once each is
        connected to the seed and knows it is a follower."""
        seed = self.start(env=env, wait=P2P_WAIT)
        followers = [
            self.spawn(env={**(env or {}), "IAN_SEED_NODES": seed.p2p_address})
            for _ in range(n - 1)
        ]
        for f in followers:
            f.wait_ready(P2P_WAIT)
        for f in followers:
            wait_connected(f, seed, timeout=timeout)
        return [seed, *followers]

    def restart(
        self,
        node: NodeProcess,
        env: Mapping[str, str] | None = None,
        *,
        same_ports: bool = True,
        wait: Iterable[str] = P2P_WAIT,
    ) -> NodeProcess:
        """A new process on ``node``'s data dir and env (plus ``env``); the old one must have
        exited. ``same_ports`` reuses the API and P2P ports it had (peers keep its address)."""
        if node.alive:
            raise AssertionError("restart() of a node that is still running")
        extra = {k: v for k, v in node.env.items() if k.startswith("IAN_")}
        if same_ports:
            for name, var in (("api", "IAN_API_PORT"), ("p2p", "IAN_P2P_PORT")):
                if name in node.addresses:
                    extra[var] = str(node.port(name))
        extra.update(env or {})
        again = self.spawn(node.data_dir, extra)
        again.wait_ready(wait)
        return again

    def cleanup(self) -> None:
        for node in self.started:
            node.cleanup()


def run_ian(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the `ian` CLI to completion (never inheriting IAN_* settings)."""
    return subprocess.run(
        [str(IAN), *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- polling and data


def wait_until(
    probe: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``probe`` until it returns a truthy value (returned); fail after ``timeout`` s.

    Exceptions from ``probe`` (a node restarting, a connection refused) count as "not yet";
    the last value or exception is shown when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def wait_connected(a: NodeProcess, b: NodeProcess, *, timeout: float = 20.0) -> None:
    """Until ``a`` and ``b`` list each other as connected peers."""
    wait_until(
        lambda: b.node_id in a.connected() and a.node_id in b.connected(),
        timeout=timeout,
        what=f"{a.data_dir.name} <-> {b.data_dir.name} connected",
    )


def wait_same_chain(
    reference: NodeProcess, others: Iterable[NodeProcess], *, timeout: float = 20.0
) -> dict[str, Any]:
    """Until every node in ``others`` shows ``reference``'s height, head and roots."""
    others = list(others)
    seen: dict[str, Any] = {}

    def same() -> dict[str, Any] | None:
        want = reference.chain_view()
        seen.clear()
        seen[reference.data_dir.name] = want
        for o in others:
            seen[o.data_dir.name] = o.chain_view()
        return want if all(v == want for v in seen.values()) else None

    try:
        return wait_until(same, timeout=timeout, what="identical heights and roots")
    except pytest.fail.Exception as exc:
        logs = {
            n.data_dir.name: [
                f"{r.get('logger')}: {str(r.get('msg'))[:200]}"
                for r in list(n.records)
                if str(r.get("logger", "")).startswith(("ian.sync", "ian.p2p"))
            ][-15:]
            for n in [reference, *others]
        }
        raise pytest.fail.Exception(
            f"{exc}\nlast views: {json.dumps(seen, indent=1)}\n"
            f"last sync/p2p log lines: {json.dumps(logs, indent=1)}"
        ) from None


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def contribution(
    n: int,
    *,
    goal: str = TRIVIAL_GOAL,
    params: Mapping[str, Any] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """A POST /contribute body, distinct per ``(n, tag)``. Trivial-goal packs are always
    accepted; demo packs follow ``params`` (default: accepted)."""
    if goal == DEMO_GOAL:
        raw = json.dumps(dict(params or DEMO_ACCEPTED)).encode()
    else:
        raw = f"net-{tag}-{n}".encode()
    return {
        "goal_id": goal,
        "agent_pack": {
            "version": "1.0",
            "parameters": base64.b64encode(raw).decode(),
            "metadata": {"n": n, "tag": tag},
        },
        "contributor_id": f"contributor-{tag}-{n % 7}",
        "seed": n,
    }


# --------------------------------------------------------------------------- fault injection


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (port 0) that forwards to ``target`` until :meth:`cut`.

    ``cut()`` aborts every proxied connection and makes new ones be accepted and closed at
    once (the dialler sees its peer hang up); ``heal()`` forwards again. Runs its own asyncio
    loop on a daemon thread, so sync tests can drive it; :meth:`close` stops everything.
    """

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target
        self.is_cut = False
        self.accepted = 0
        self.refused = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _cut(self) -> None:
        self.is_cut = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _heal(self) -> None:
        self.is_cut = False

    def cut(self) -> None:
        self._call(self._cut())

    def heal(self) -> None:
        self._call(self._heal())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut or self.target is None:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1
            writer.transport.abort()
            return
        if self.is_cut:  # cut while we were dialling
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    def close(self) -> None:
        async def stop() -> None:
            await self._cut()
            self._server.close()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# --------------------------------------------------------------------------- prebuilt chains


def build_chain(data_dir: Path, *, blocks: int, per_block: int, tag: str = "prebuilt") -> int:
    """Write a data dir whose store already holds ``blocks`` signed blocks of ``per_block``
    trivial-goal contributions each (the goals of :data:`NETWORK_ENV`), made offline the way
    the sequencer makes them (``build_block`` + ``Store.append_block``) with the data dir's own
    identity, so ``ian node run`` on it is that chain's sequencer. Returns the height.

    No ``node_state.json`` is written: the node verifies the whole store at start, as after a
    restore.
    """
    from ian.chain.contributions import make_contribution
    from ian.chain.goals import BUILTIN_GOALS, GoalSpec
    from ian.chain.state import ChainState
    from ian.evaluators import get_evaluator
    from ian.ledger.sequencer import seal_block
    from ian.storage.datadir import init_data_dir
    from ian.storage.store import Store

    init = init_data_dir(data_dir)
    specs = [*BUILTIN_GOALS, *(GoalSpec(**g) for g in json.loads(TRIVIAL_GOALS_JSON))]
    state = ChainState.genesis(specs)
    check = get_evaluator("trivial").check
    store = Store(init.datadir.store_file)
    n = 0
    try:
        for _ in range(blocks):
            batch = []
            for _ in range(per_block):
                c = make_contribution(
                    goal_id=TRIVIAL_GOAL,
                    version="1.0",
                    parameters=f"{tag}-{n}".encode(),
                    metadata={},
                    contributor_id=f"{tag}-{n % 13}",
                    seed=n,
                )
                c.parsed = check(c.parameters, c.metadata)
                batch.append(c)
                n += 1
            assert seal_block(state, store, init.identity, batch).block is not None
    finally:
        store.close()
    return state.height
