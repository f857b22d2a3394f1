"""The plain `ian status --json` is answered without Typer (ian_ops.status_fast): for every
command line and environment, the entry point must print, report and exit exactly as the Typer
app does, and answer without Typer only the plain form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ian_ops.status_fast import plain_form

SRC = Path(__file__).resolve().parents[2] / "src"
DOC = {"node_id": "n" * 40, "height": 7, "goals": {"G": {"log_size": 3}}, "ü": "é"}
UNREACHABLE = "http://127.0.0.1:9"


class _Handler(BaseHTTPRequestHandler):
    refuse = False

    def do_GET(self) -> None:
        if self.refuse:
            status, doc = 500, {"error": {"code": "internal", "message": "boom", "field": None}}
        elif self.path.endswith("/api/v1/status"):
            status, doc = 200, {**DOC, "path": self.path}
        else:
            status, doc = 404, {"error": {"code": "not_found", "message": self.path}}
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Refusing(_Handler):
    refuse = True


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """(URL of a node answering its status, URL of one answering 500)."""
    made = [ThreadingHTTPServer(("127.0.0.1", 0), cls) for cls in (_Handler, _Refusing)]
    for server in made:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in made)  # type: ignore[misc]
    finally:
        for server in made:
            server.shutdown()
            server.server_close()


RUN = """
import atexit, os, sys
sys.argv = ["ian", *{args!r}]
atexit.register(lambda: open(os.environ["MARK"], "w").write(str("typer" in sys.modules)))
{call}
"""


def run(
    args: list[str], env: dict[str, str], *, fast: bool, mark: Path, closed_stdout: bool = False
) -> tuple[Any, ...]:
    """``ian ARGS`` in a fresh process: through the entry point (``fast``) or straight through
    the Typer app; with ``closed_stdout``, its stdout a pipe nobody reads (the reader closed
    it). (exit code, stdout, stderr, whether Typer was imported)."""
    call = (
        "from ian_ops.app import main; main()"
        if fast
        else "from ian_ops.typer_app import run; run()"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    stdout: int = subprocess.PIPE
    if closed_stdout:
        read_end, stdout = os.pipe()
        os.close(read_end)
    try:
        ran = subprocess.run(
            [sys.executable, "-c", RUN.format(args=args, call=call)],
            env={
                **base,
                "NO_COLOR": "1",
                "COLUMNS": "80",
                "PYTHONPATH": str(SRC),
                "MARK": str(mark),
                **env,
            },
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if closed_stdout:
            os.close(stdout)
    return ran.returncode, ran.stdout or "", ran.stderr, mark.read_text() == "True"


def cases(ok: str, refusing: str, tmp: Path) -> list[tuple[str, list[str], dict[str, str], bool]]:
    """(id, args, IAN_* env, answered without Typer)."""
    port = ok.rsplit(":", 1)[1]
    for name, url in (("ok", ok), ("refusing", refusing)):
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name / "config.toml").write_text(f"api_port = {url.rsplit(':', 1)[1]}\n")
    ok_dir, refusing_dir = str(tmp / "ok"), str(tmp / "refusing")
    return [
        ("url", ["status", "--json", "--node-url", ok], {}, True),
        ("url= trailing slash", ["status", f"--node-url={ok}/", "--json"], {}, True),
        ("url with a path", ["status", "--json", "--node-url", ok + "/base/"], {}, True),
        ("IAN_NODE_URL", ["status", "--json"], {"IAN_NODE_URL": ok}, True),
        (
            "flag beats env",
            ["status", "--json", "--node-url", ok],
            {"IAN_NODE_URL": UNREACHABLE},
            True,
        ),
        ("IAN_DATA_DIR config", ["status", "--json"], {"IAN_DATA_DIR": ok_dir}, True),
        ("--data-dir config", ["status", "--json", "--data-dir", ok_dir], {}, True),
        (
            "--data-dir= beats IAN_DATA_DIR",
            ["status", f"--data-dir={refusing_dir}", "--json"],
            {"IAN_DATA_DIR": ok_dir},
            True,
        ),
        ("IAN_API_PORT", ["status", "--json"], {"IAN_API_PORT": port}, True),
        (
            "empty IAN_NODE_URL",
            ["status", "--json"],
            {"IAN_NODE_URL": "", "IAN_API_PORT": port},
            True,
        ),
        (
            "empty IAN_DATA_DIR",
            ["status", "--json", "--node-url", ok],
            {"IAN_DATA_DIR": ""},
            True,
        ),
        ("unreachable", ["status", "--json", "--node-url", UNREACHABLE], {}, True),
        ("refused", ["status", "--json", "--node-url", refusing], {}, True),
        ("unreachable from config", ["status", "--json"], {"IAN_API_PORT": "9"}, True),
        # not the plain form, or not understood: the Typer app answers in both runs
        ("no scheme", ["status", "--json", "--node-url", "127.0.0.1:9"], {}, False),
        ("no scheme in env", ["status", "--json"], {"IAN_NODE_URL": "127.0.0.1:9"}, False),
        ("a goal", ["status", "--json", "G", "--node-url", ok], {}, False),
        ("twice", ["status", "--json", "--json", "--node-url", ok], {}, False),
        ("no value", ["status", "--json", "--node-url"], {}, False),
        ("option as value", ["status", "--node-url", "--json"], {}, False),
        ("root option", ["--debug", "status", "--json", "--node-url", ok], {}, False),
        ("help", ["status", "--json", "-h"], {}, False),
        ("another option", ["status", "--node-url", ok, "--json", "-i", "1s"], {}, False),
        (
            "config left to the full loader",
            ["status", "--json"],
            {"IAN_API_PORT": port, "IAN_MAX_PEERS": "60"},
            False,
        ),
        ("other command", ["tau", "status", "--json", "--node-url", ok], {}, False),
    ]


def test_both_ways_answer_the_same(servers: tuple[str, str], tmp_path: Path) -> None:
    ok, refusing = servers
    mark = tmp_path / "mark"
    for case_id, args, env, answered_fast in cases(ok, refusing, tmp_path):
        *fast, fast_typer = run(args, env, fast=True, mark=mark)
        *typer_way, _ = run(args, env, fast=False, mark=mark)
        assert fast == typer_way, case_id
        assert fast_typer is not answered_fast, case_id
        if case_id == "url":
            assert fast[0] == 0 and json.loads(fast[1]) == {**DOC, "path": "/api/v1/status"}
        if case_id == "refused":
            assert fast[0] == 7 and "answered 500: boom" in fast[2]


def test_a_reader_that_went_away_gets_exit_1_and_no_noise_both_ways(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    """``ian status --json | head -c1``: stdout is closed before the answer is written."""
    args = ["status", "--json", "--node-url", servers[0]]
    for fast in (True, False):
        code, _, err, _ = run(args, {}, fast=fast, mark=tmp_path / "mark", closed_stdout=True)
        assert (code, err) == (1, ""), (fast, err)


def test_a_traceback_with_ian_debug_both_ways(tmp_path: Path) -> None:
    args, env = ["status", "--json", "--node-url", UNREACHABLE], {"IAN_DEBUG": "1"}
    fast = run(args, env, fast=True, mark=tmp_path / "mark")
    typer_way = run(args, env, fast=False, mark=tmp_path / "mark")
    assert fast[0] == typer_way[0] == 1
    assert fast[1] == typer_way[1] == ""
    last = fast[2].strip().splitlines()[-1]
    assert last == typer_way[2].strip().splitlines()[-1]
    assert last.startswith("ian.errors.NodeUnreachableError: cannot reach the node")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status", "--json"], (None, None)),
        (["status", "--data-dir", "d", "--json", "--node-url=u"], ("u", Path("d"))),
        (["status", "--json", "--node-url="], None),
        (["status", "--json", "--data-dir", ""], None),
        (["status", "--json=1"], None),
        (["status", "--watch", "--json"], None),
        (["status", "-w", "--json"], None),
        (["status", "--json", "--"], None),
        (["status"], None),
        ([], None),
        (["doctor", "--json"], None),
    ],
)
def test_the_plain_form(args: list[str], expected: Any) -> None:
    assert plain_form(args) == expected
