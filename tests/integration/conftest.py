"""Real `ian node run` processes on loopback, and the `ian` CLI as a subprocess.

``ian_nodes.start()`` spawns ``ian node run`` (the venv's console script next to
``sys.executable``) on a fresh data dir with every port 0 and JSON logs, reads its stderr on a
thread and returns once the node logged every address it was asked to wait for (by default the
API's, from ``serving the API on http://HOST:PORT``). Add patterns to :data:`ADDRESS_PATTERNS`
(e.g. a P2P listen address) and pass ``wait=("api", "p2p")`` to learn more addresses.
``ian_nodes.start_many(n)`` spawns ``n`` nodes first and then waits for each, so they start in
parallel. Every process is killed and reaped at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

IAN = Path(sys.executable).with_name("ian")
START_TIMEOUT_S = 20.0

# name -> regex over a log record's "msg"; group "address" is what the node bound.
ADDRESS_PATTERNS: dict[str, re.Pattern[str]] = {
    "api": re.compile(r"serving the API on (?P<address>http://\S+:\d+)"),
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
    def pid(self) -> int:
        return self.proc.pid

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

    def cleanup(self) -> None:
        for node in self.started:
            node.cleanup()


@pytest.fixture
def ian_nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


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


@pytest.fixture
def ian() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_ian
