"""`ian status --watch` in a real pseudo-terminal against a real `ian node run` process.

The dashboard runs as a child of :func:`pty.fork`, so it sees a TTY: full screen (alternate
buffer), keys read in cbreak mode. Each refresh starts with the cursor-home sequence, which is
how the output is cut into frames. The node is stopped and restarted on the same port to see the
dashboard notice the outage and recover; `q` and Ctrl-C must end it cleanly with the terminal
restored (checked by running `stty -a` on the same terminal afterwards).

With the node's event stream reachable the dashboard re-polls right after each block: with a
30 s interval a contribution still shows up within a second or two (header "live"); with the
stream unreachable it polls (header "polling every 0.5s").
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shlex
import signal
import socket
import struct
import termios
import time
from collections.abc import Iterator

import pytest
from tests.support.nodes import (
    DEMO_GOAL,
    IAN,
    NodeProcess,
    clean_env,
    contribution,
)

pytestmark = pytest.mark.integration

HOME = b"\x1b[H"
ALT_SCREEN_ON, ALT_SCREEN_OFF, CURSOR_SHOW = b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[?25h"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Terminal:
    """A command running on a new pseudo-terminal (120x40); everything it wrote is kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child: the terminal is our stdin/stdout/stderr
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.code: int | None = None

    def _pump(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False once the child closed it."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child exited and the slave side is closed
            return False
        self.output += data
        return bool(data)

    def frames(self, start: int = 0) -> list[bytes]:
        return self.output[start:].split(HOME)

    def wait_for(self, predicate, timeout: float = 20.0, start: int = 0) -> bytes:
        """The first frame (after byte ``start``) for which ``predicate(frame)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames(start):
                if predicate(frame):
                    return frame
            if time.monotonic() > deadline:
                tail = self.output[-3000:].decode("utf-8", "replace")
                pytest.fail(f"no matching frame after {timeout}s; output ends with:\n{tail}")
            if not self._pump(0.2):
                tail = self.output[-3000:].decode("utf-8", "replace")
                pytest.fail(f"the command exited first; output ends with:\n{tail}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._pump(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._pump(0.05):  # drain what is left
                    pass
                self.code = os.waitstatus_to_exitcode(status)
                return self.code
        pytest.fail(f"still running after {timeout}s:\n{self.output[-2000:]!r}")

    def close(self) -> None:
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for t in opened:
            t.close()


def watch(
    terminals: list[Terminal],
    url: str,
    *,
    then_stty: bool = False,
    interval: str = "0.5s",
    env: dict[str, str] | None = None,
) -> Terminal:
    env = clean_env({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", **(env or {})})
    command = [str(IAN), "status", "--watch", "--interval", interval, "--node-url", url]
    if then_stty:  # the same terminal, after the dashboard exits: were its modes restored?
        # `trap true INT`: Ctrl-C reaches the whole foreground group; the shell must survive
        # it to report, while ian (exec resets trapped signals to default) gets SIGINT.
        script = f"trap true INT; {shlex.join(command)}; echo EXIT=$?; stty -a"
        argv = ["/bin/sh", "-c", script]
    else:
        argv = command
    t = Terminal(argv, env)
    terminals.append(t)
    return t


def test_watch_survives_a_node_restart_and_quits_on_q(ian_nodes, terminals) -> None:
    port = free_port()
    node = ian_nodes.start(env={"IAN_API_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    term = watch(terminals, url, then_stty=True)

    panels = (b"node health", b"throughput", b"security", b"sync lag", b"consensus", b"breaker")
    panels += (b"certificate", b"alerts")
    # A frame may reach us in several reads: wait until one full frame is on screen.
    term.wait_for(lambda f: all(text in f for text in panels))
    assert ALT_SCREEN_ON in term.output
    # throughput needs two polls; then it shows per-minute rates
    term.wait_for(lambda f: b"/min" in f and b"received" in f)

    assert node.terminate() == 0
    mark = len(term.output)
    # The last known state stays on screen (waiting for both: a frame may come in pieces).
    down = term.wait_for(lambda f: b"unreachable since" in f and b"last data from" in f, start=mark)
    assert b"retrying" in down

    ian_nodes.start(data_dir=node.data_dir, env={"IAN_API_PORT": str(port)})
    mark = len(term.output)
    term.wait_for(
        lambda f: b"node health" in f and b"unreachable" not in f and b"updated" in f,
        start=mark,
    )

    term.send(b"q")
    assert term.wait_exit() == 0
    text = term.output.decode("utf-8", "replace")
    assert "EXIT=0" in text
    assert "Traceback" not in text
    assert ALT_SCREEN_OFF in term.output and CURSOR_SHOW in term.output
    stty = text.rsplit("EXIT=0", 1)[1]
    words = stty.split()
    assert "icanon" in words and "echo" in words  # not "-icanon" / "-echo": cbreak undone


def test_ctrl_c_quits_cleanly(ian_nodes, terminals) -> None:
    node = ian_nodes.start()
    term = watch(terminals, node.api_url, then_stty=True)
    term.wait_for(lambda f: b"node health" in f)
    term.send(b"\x03")  # the terminal turns it into SIGINT (cbreak keeps ISIG)
    assert term.wait_exit() == 0
    text = term.output.decode("utf-8", "replace")
    assert "EXIT=0" in text and "Traceback" not in text
    assert ALT_SCREEN_OFF in term.output
    words = text.rsplit("EXIT=0", 1)[1].split()
    assert "icanon" in words and "echo" in words


def test_watch_starts_against_a_node_that_is_down(terminals) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    term = watch(terminals, url)
    frame = term.wait_for(lambda f: b"unreachable since" in f)
    assert url.encode() in frame
    term.send(b"q")
    assert term.wait_exit() == 0


def test_watch_json_without_a_terminal_prints_one_object_per_poll(ian_nodes) -> None:
    import json
    import subprocess

    node = ian_nodes.start()
    proc = subprocess.Popen(
        [str(IAN), "status", "--watch", "--json", "--interval", "0.2s", "--node-url", node.api_url],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        docs = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert proc.returncode == 0
    assert all(d["reachable"] for d in docs)
    assert docs[0]["status"]["node_id"] == docs[-1]["status"]["node_id"]
    assert docs[-1]["taken_at"] > docs[0]["taken_at"]
    assert set(docs[0]) >= {"taken_at", "url", "reachable", "error", "status", "readiness"}


WS_ADDRESS = re.compile(r"events on ws://\S+:(?P<port>\d+)")


def ws_port(node: NodeProcess) -> int:
    """The port the node's event stream listens on (it was started with IAN_WS_PORT=0)."""
    record = node.wait_for(lambda r: WS_ADDRESS.search(str(r.get("msg", ""))) is not None)
    match = WS_ADDRESS.search(str(record["msg"]))
    assert match is not None
    return int(match.group("port"))


def height_shown(frame: bytes, height: int) -> bool:
    return b"node health" in frame and f"{height} / network".encode() in frame


def submit(node: NodeProcess, n: int) -> None:
    r = node.post("/api/v1/contribute", contribution(n, goal=DEMO_GOAL))
    assert r.status_code == 200, r.text


def test_events_update_the_screen_long_before_the_interval(ian_nodes, terminals) -> None:
    node = ian_nodes.start()
    stream = {"IAN_WS_PORT": str(ws_port(node)), "IAN_DATA_DIR": str(node.data_dir)}
    term = watch(terminals, node.api_url, interval="30s", env=stream)
    # Subscribed (the token came from the node's data dir): the header says so.
    frame = term.wait_for(lambda f: height_shown(f, 0) and b"live" in f)
    assert b"polling every" not in frame

    for height in (1, 2):
        mark = len(term.output)
        sent = time.monotonic()
        submit(node, height)
        term.wait_for(lambda f, h=height: height_shown(f, h), start=mark, timeout=15)
        # The next scheduled poll is 30 s after the first: this came from the event.
        assert time.monotonic() - sent < 10

    term.send(b"q")
    assert term.wait_exit() == 0
    assert b"Traceback" not in term.output


def test_without_the_stream_it_polls(ian_nodes, terminals) -> None:
    node = ian_nodes.start()
    nowhere = {"IAN_WS_PORT": str(free_port()), "IAN_DATA_DIR": str(node.data_dir)}
    term = watch(terminals, node.api_url, interval="0.5s", env=nowhere)
    term.wait_for(lambda f: height_shown(f, 0) and b"polling every 0.5s" in f)
    mark = len(term.output)
    submit(node, 1)
    frame = term.wait_for(lambda f: height_shown(f, 1), start=mark)
    assert b"polling every 0.5s" in frame
    term.send(b"q")
    assert term.wait_exit() == 0
    assert b"live" not in term.output and b"Traceback" not in term.output
