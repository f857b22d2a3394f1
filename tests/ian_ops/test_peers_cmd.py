"""`ian peers ...` in process (the `ian` fixture) on a real data dir, offline and online."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ian.errors import (
    CorruptFileError,
    DataDirError,
    InputError,
    NodeLockedError,
    NodeUnreachableError,
    NotFoundError,
)
from ian.p2p.peer_book import PeerBook, PeerEvent
from ian.storage.datadir import DataDir
from ian.storage.lock import NodeLock
from ian_ops import peers_cmd
from ian_ops.durations import format_duration, parse_duration
from ian_ops.target import Target

A = "a" * 40
B = "b" * 40
C = "c" * 40
TOKEN = "tok-123"


LOCK_HOLDER = (
    "import sys\n"
    "from ian.storage.lock import NodeLock\n"
    "lock = NodeLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    return DataDir(root)


@pytest.fixture
def seeded(data: DataDir) -> DataDir:
    """A book with A (good, has an address), B (violations) and C (old, not seen for 40 days)."""
    now = time.time()
    book = PeerBook(data.peer_scores_file, clock=lambda: now - 40 * 86400)
    book.note_address(C, "tcp://10.0.0.3:9000")
    book._clock = lambda: now  # the rest happens today
    book.record(A, PeerEvent.SUCCESSFUL_SYNC)
    book.note_address(A, "tcp://10.0.0.1:9000")
    for _ in range(3):
        book.record(B, PeerEvent.RATE_LIMIT_VIOLATION)
    book.save()
    return data


def free_port() -> int:
    """A loopback port nothing listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def foreign_lock(data: DataDir) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the data dir's node.lock (and serves nothing)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(data.lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


# --------------------------------------------------------------------------- durations


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("12h") == 43200
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("2w") == 14 * 86400
    assert parse_duration(" 1D12h ") == 1.5 * 86400
    assert parse_duration("0.5h") == 1800
    for bad in ("30", "", "d", "3x", "-1d", "1d 2h", "0s"):
        with pytest.raises(InputError) as err:
            parse_duration(bad, option="--older-than")
        assert "--older-than" in err.value.message
    with pytest.raises(InputError) as err:
        parse_duration("30")
    assert "30d" in (err.value.fix or "")
    assert [format_duration(s) for s in (45, 720, 12600, 172800, 1814400)] == [
        "45s",
        "12m",
        "3.5h",
        "2d",
        "3w",
    ]


# --------------------------------------------------------------------------- offline reads


def test_list_offline_json(seeded: DataDir, ian) -> None:
    result = ian("peers", "list", "--data-dir", str(seeded.root), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["node_id"] for p in doc["peers"]] == [A, C, B]
    assert (doc["known"], doc["banned"], doc["connected"]) == (3, 0, [])
    assert f"offline on {seeded.peer_scores_file}" in result.stderr
    by_violations = json.loads(
        ian(
            "peers", "list", "--data-dir", str(seeded.root), "--json", "--sort", "violations"
        ).stdout
    )
    assert by_violations["peers"][0]["node_id"] == B
    assert by_violations["peers"][0]["violations"] == 3
    top = json.loads(
        ian("peers", "list", "--data-dir", str(seeded.root), "--json", "--top", "1").stdout
    )
    assert [p["node_id"] for p in top["peers"]] == [A]


def test_list_offline_table_and_banned_filter(seeded: DataDir, ian) -> None:
    result = ian("peers", "list", "--data-dir", str(seeded.root))
    assert result.exit_code == 0, result.output
    assert "3 known, 0 connected, 0 banned" in result.stdout
    assert A in result.stdout and "tcp://10.0.0.1:9000" in result.stdout
    result = ian("peers", "list", "--data-dir", str(seeded.root), "--banned", "--json")
    assert json.loads(result.stdout)["peers"] == []
    result = ian("peers", "list", "--data-dir", str(seeded.root), "--sort", "age")
    assert isinstance(result.exception, InputError)


def test_show_offline(seeded: DataDir, ian) -> None:
    result = ian("peers", "show", B.upper(), "--data-dir", str(seeded.root), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rate_limit_violations"] == 3 and doc["score"] == pytest.approx(70, abs=0.01)
    text = ian("peers", "show", B, "--data-dir", str(seeded.root)).stdout
    assert "rate_limit_violations" in text and "score 70.0" in text
    assert isinstance(
        ian("peers", "show", "c0ffee", "--data-dir", str(seeded.root)).exception, InputError
    )
    missing = ian("peers", "show", "d" * 40, "--data-dir", str(seeded.root))
    assert isinstance(missing.exception, NotFoundError)


def test_missing_data_dir_is_one_clear_error(tmp_path: Path, ian) -> None:
    result = ian("peers", "list", "--data-dir", str(tmp_path / "nope"))
    assert isinstance(result.exception, DataDirError)
    assert "does not exist" in result.exception.message
    assert "--data-dir" in (result.exception.fix or "")


def test_empty_data_dir_lists_nothing(data: DataDir, ian) -> None:
    result = ian("peers", "list", "--data-dir", str(data.root), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["known"] == 0


# --------------------------------------------------------------------------- offline writes


def load(data: DataDir) -> dict:
    return json.loads(data.peer_scores_file.read_text())


def test_ban_unban_offline_by_id_and_cidr(seeded: DataDir, ian) -> None:
    before = time.time()
    result = ian(
        "peers", "ban", A, "--for", "2h", "--reason", "spam", "--data-dir", str(seeded.root)
    )
    assert result.exit_code == 0, result.output
    assert f"offline on {seeded.peer_scores_file}" in result.stderr
    assert f"banned {A}" in result.stdout and "(2h): spam" in result.stdout
    peer = load(seeded)["peers"][A]
    assert peer["ban_reason"] == "spam"
    assert before + 7200 <= peer["banned_until"] <= time.time() + 7200
    result = ian("peers", "ban", "10.0.0.0/8", "--reason", "lab", "--data-dir", str(seeded.root))
    assert result.exit_code == 0, result.output
    ip_ban = load(seeded)["ip_bans"]["10.0.0.0/8"]
    assert ip_ban["banned_until"] - ip_ban["created_at"] == 86400  # default ban_seconds
    listed = json.loads(
        ian("peers", "list", "--banned", "--json", "--data-dir", str(seeded.root)).stdout
    )
    assert [p["node_id"] for p in listed["peers"]] == [A] and listed["banned"] == 1
    assert (
        ian("peers", "unban", A, "--data-dir", str(seeded.root)).stdout.strip() == f"unbanned {A}"
    )
    assert load(seeded)["peers"][A]["banned_until"] is None
    again = ian("peers", "unban", A, "--data-dir", str(seeded.root))
    assert again.exit_code == 0 and "was not banned" in again.stdout


def test_bad_ban_target_and_duration(seeded: DataDir, ian) -> None:
    before = seeded.peer_scores_file.read_bytes()
    bad = ian("peers", "ban", "10.0.0.1/8", "--reason", "x", "--data-dir", str(seeded.root))
    assert isinstance(bad.exception, InputError) and "10.0.0.0/8" in (bad.exception.fix or "")
    bad = ian("peers", "ban", "peer-7", "--reason", "x", "--data-dir", str(seeded.root))
    assert isinstance(bad.exception, InputError) and "CIDR" in (bad.exception.fix or "")
    bad = ian("peers", "ban", A, "--for", "24", "--reason", "x", "--data-dir", str(seeded.root))
    assert isinstance(bad.exception, InputError) and "24d" in (bad.exception.fix or "")
    assert seeded.peer_scores_file.read_bytes() == before


def test_reset_offline(seeded: DataDir, ian) -> None:
    result = ian("peers", "reset", B, "--data-dir", str(seeded.root))
    assert result.exit_code == 0, result.output
    peer = load(seeded)["peers"][B]
    assert peer["score"] == 100 and peer["rate_limit_violations"] == 3
    assert isinstance(ian("peers", "reset", "--data-dir", str(seeded.root)).exception, InputError)
    unknown = ian("peers", "reset", "d" * 40, "--data-dir", str(seeded.root))
    assert isinstance(unknown.exception, NotFoundError)


def test_prune_offline_dry_run_then_real(seeded: DataDir, ian) -> None:
    before = seeded.peer_scores_file.read_bytes()
    result = ian(
        "peers", "prune", "--older-than", "30d", "--dry-run", "--data-dir", str(seeded.root)
    )
    assert result.exit_code == 0, result.output
    assert "kept 2, would remove 1" in result.stdout and "dry run" in result.stdout
    assert seeded.peer_scores_file.read_bytes() == before
    result = ian("peers", "prune", "--older-than", "30d", "--json", "--data-dir", str(seeded.root))
    doc = json.loads(result.stdout)
    assert (doc["kept"], doc["removed"], doc["removed_ids"]) == (2, 1, [C])
    assert set(load(seeded)["peers"]) == {A, B}
    # the default comes from peer_prune_days (30): nothing else is old enough
    result = ian("peers", "prune", "--json", "--data-dir", str(seeded.root))
    assert json.loads(result.stdout)["removed"] == 0
    result = ian("peers", "prune", "--older-than", "soon", "--data-dir", str(seeded.root))
    assert isinstance(result.exception, InputError)


def test_corrupt_file_and_reset_all(seeded: DataDir, ian) -> None:
    seeded.peer_scores_file.write_text('{"version": 1, "peers": {"x":')
    result = ian("peers", "list", "--data-dir", str(seeded.root))
    assert isinstance(result.exception, CorruptFileError)
    assert str(seeded.peer_scores_file) in result.exception.message
    assert "ian peers reset --all" in (result.exception.fix or "")
    result = ian("peers", "reset", "--all", "--yes", "--data-dir", str(seeded.root))
    assert result.exit_code == 0, result.output
    moved = [p for p in seeded.root.iterdir() if p.name.startswith("peer_scores.json.")]
    assert len(moved) == 1 and moved[0].read_text().startswith('{"version": 1')
    assert not seeded.peer_scores_file.exists()
    result = ian("peers", "list", "--json", "--data-dir", str(seeded.root))
    assert json.loads(result.stdout)["known"] == 0
    declined = ian("peers", "reset", "--all", "--data-dir", str(seeded.root), input="n\n")
    assert declined.exit_code != 0


# --------------------------------------------------------------------------- the lock


def test_offline_write_refused_while_another_process_holds_the_lock(
    seeded: DataDir, foreign_lock: subprocess.Popen[str], ian
) -> None:
    (seeded.root / "api_token").write_text(TOKEN + "\n")
    before = seeded.peer_scores_file.read_bytes()
    url = f"http://127.0.0.1:{free_port()}"
    for args in (
        ("ban", A, "--reason", "x"),
        ("unban", A),
        ("reset", B),
        ("prune", "--older-than", "1d"),
    ):
        result = ian("peers", *args, "--data-dir", str(seeded.root), "--node-url", url)
        assert isinstance(result.exception, NodeLockedError), (args, result.output)
        assert f"pid {foreign_lock.pid}" in result.exception.message
    reset_all = ian("peers", "reset", "--all", "--yes", "--data-dir", str(seeded.root))
    assert isinstance(reset_all.exception, NodeLockedError)
    # the race path: the lock was taken between the check and the write
    place = Target(
        SimpleNamespace(ban_seconds=60.0),
        seeded,
        url,
        online=False,  # type: ignore[arg-type]
    )
    with pytest.raises(NodeLockedError):
        peers_cmd._offline_write(place, lambda b: b.ban(A, seconds=5, reason="x"))
    assert seeded.peer_scores_file.read_bytes() == before
    # reads fall back to the file when the lock holder does not answer
    result = ian("peers", "list", "--json", "--data-dir", str(seeded.root), "--node-url", url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["known"] == 3
    assert "does not answer" in result.stderr


def test_online_only_commands_need_a_node(seeded: DataDir, ian) -> None:
    result = ian("peers", "connect", "tcp://10.0.0.9:9000", "--data-dir", str(seeded.root))
    assert isinstance(result.exception, NodeUnreachableError)
    assert "ian node run" in (result.exception.fix or "")
    result = ian("peers", "limits", "--max-peers", "5", "--data-dir", str(seeded.root))
    assert isinstance(result.exception, NodeUnreachableError)
    # Reading the limits needs the node too; a rate of 0 is refused before anything is asked.
    assert isinstance(
        ian("peers", "limits", "--data-dir", str(seeded.root)).exception, NodeUnreachableError
    )
    assert isinstance(ian("peers", "limits", "--rate", "0").exception, InputError)
    bad = ian("peers", "connect", "http://x:1", "--data-dir", str(seeded.root))
    assert isinstance(bad.exception, InputError)


# --------------------------------------------------------------------------- online


class _P2P:
    def __init__(self) -> None:
        self.conns = {A: SimpleNamespace(node_id=A, address="tcp://10.0.0.1:9000")}
        self.disconnected: list[str] = []
        self.configured: list[dict] = []

    def peers(self) -> list[SimpleNamespace]:
        return list(self.conns.values())

    def disconnect(self, node_id: str, reason: str) -> None:
        self.disconnected.append(node_id)

    async def connect(self, address: str) -> str:
        return C

    def configure(self, **kw: object) -> None:
        self.configured.append(kw)

    max_peers = 50
    rate_limit = (200.0, 400.0)


@pytest.fixture
def live_node(seeded: DataDir) -> Iterator[tuple[str, PeerBook, _P2P]]:
    """A real HTTP server with the peer routes on a pre-bound loopback socket (no waiting:
    connections queue in the backlog until it accepts), and node.lock held as a node would."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from ian.api.routes.peers import router
    from ian.errors import RequestError

    book = PeerBook.load(seeded.peer_scores_file)
    p2p = _P2P()
    api = FastAPI()
    api.state.node = SimpleNamespace(
        peer_book=book,
        p2p=p2p,
        admin_token=TOKEN,
        settings=SimpleNamespace(admin_allow_remote=False),
    )

    @api.exception_handler(RequestError)
    async def _err(request: Request, exc: RequestError) -> JSONResponse:
        body = {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}
        return JSONResponse(body, status_code=exc.http_status)

    api.include_router(router)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    (seeded.root / "api_token").write_text(TOKEN + "\n")
    with NodeLock(seeded.lock_file):
        thread.start()
        try:
            yield url, book, p2p
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()


def test_online_commands_go_through_the_admin_api(
    seeded: DataDir, live_node: tuple[str, PeerBook, _P2P], ian
) -> None:
    url, book, p2p = live_node
    before = seeded.peer_scores_file.read_bytes()
    common = ("--data-dir", str(seeded.root), "--node-url", url)
    result = ian("peers", "list", "--json", *common)
    assert result.exit_code == 0, result.output
    assert f"online via {url}" in result.stderr
    assert json.loads(result.stdout)["connected"][0]["node_id"] == A

    result = ian("peers", "ban", A, "--for", "1h", "--reason", "online ban", *common)
    assert result.exit_code == 0, result.output
    assert f"online via {url}" in result.stderr and f"disconnected {A}" in result.stdout
    assert p2p.disconnected == [A] and book.ban_reason(node_id=A) is not None
    assert json.loads(seeded.peer_scores_file.read_text())["peers"][A]["ban_reason"] == (
        "online ban"
    )
    assert seeded.peer_scores_file.read_bytes() != before

    assert "unbanned" in ian("peers", "unban", A, *common).stdout
    reset = ian("peers", "reset", B, *common)
    assert reset.exit_code == 0 and book.get(B).score == 100  # type: ignore[union-attr]
    doc = json.loads(ian("peers", "prune", "--older-than", "30d", "--json", *common).stdout)
    assert (doc["kept"], doc["removed"]) == (2, 1) and C not in book
    assert C in ian("peers", "connect", "tcp://10.0.0.9:9000", *common).stdout
    assert ian("peers", "limits", "--rate", "5", *common).exit_code == 0
    assert p2p.configured == [{"rate": 5.0}]
    show = json.loads(ian("peers", "show", A, "--json", *common).stdout)
    assert show["node_id"] == A and show["banned"] is False


def test_online_needs_the_admin_token(seeded: DataDir, live_node: tuple, ian) -> None:
    url = live_node[0]
    (seeded.root / "api_token").unlink()
    result = ian(
        "peers", "ban", A, "--reason", "x", "--data-dir", str(seeded.root), "--node-url", url
    )
    assert isinstance(result.exception, DataDirError) and "IAN_API_TOKEN" in (
        result.exception.fix or ""
    )
    result = ian(
        "peers",
        "ban",
        A,
        "--reason",
        "x",
        "--data-dir",
        str(seeded.root),
        "--node-url",
        url,
        env={"IAN_API_TOKEN": "wrong"},
    )
    assert result.exception is not None and "403" in str(result.exception)
