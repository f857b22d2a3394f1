"""HTTP throughput and latency of POST /api/v1/contribute on a real `ian node run` process.

Usage::

    .venv/bin/python bench/http_bench.py [--quick] [--json-only] [--workers N] [--runs N]
                                         [--duration S] [--rate R] [--api-workers N]
                                         [--py-spy] [--wrk]
    .venv/bin/python bench/http_bench.py --etcd [--quick] [--runs N] [--duration S]
                                         [--api-workers N] [--no-install]

``--api-workers N`` starts every IAN node with ``IAN_API_WORKERS=N`` (API front processes);
the server CPU per answer counts the node's live child processes too.

Starts the node in a temporary data dir (``IAN_API_PORT=0``; the port is read from its
"serving the API on http://HOST:PORT" log line; per-client and per-contributor rate limits
raised for the bench) and drives it from separate client processes. Each client process runs
one asyncio loop (uvloop when installed) over hand-written HTTP/1.1 keep-alive connections, so
client overhead stays far below the node's. Every request carries a distinct contributor id and
a distinct demo-trading pack (no rate limiting, no dedup).

Measured:

- client ceiling: the same client against a stub server that answers at once (no node), and
  the node's own ceiling on ``GET /health``;
- (i) max throughput of durable answers: closed loop, N connections, 200 answers per second;
- (ii) latency at a fixed offered load (default 500/s), open loop: request k is sent at
  ``t0 + k/rate`` whatever happened to earlier ones, and its latency counts from that scheduled
  time (no coordinated omission); plus the acceptance split and every non-200 status;
- ``--py-spy``: where the node spends its time under max load (py-spy record, own-time top);
- ``--wrk``: a wrk cross-check with unique bodies from a Lua script, when wrk is installed.

Results: ``bench/results/http.json``. The node's log is scanned for errors afterwards.

``--etcd`` runs a comparison instead: the same closed-loop client, 32 connections, against one
IAN node, one etcd member (``bench/etcd_cluster.py``; Debian's ``etcd-server`` is installed when
missing, as root, unless ``--no-install``), three IAN authorities and three etcd members, all
on loopback, one after the other, writes sent to the leader in the replicated cases. etcd gets
``POST /v3/kv/put`` (gRPC-gateway JSON, base64 key and value) with a distinct key and a distinct
300-byte value per request; an answer counts once etcd returns 200, i.e. committed. IAN and etcd
are printed side by side with the ratios and the goals (IAN >= 1.0x etcd's rate, p99 <= 2x
etcd's). Results: ``bench/results/http_etcd.json`` (``http_etcd_api<N>.json`` with
``--api-workers N``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    b64,
    base_parser,
    demo_parameters,
    emit,
    environment,
    median,
    percentile,
    render_table,
    summarise_py_spy,
)

GOAL_ID = "DEMO_TRADING_AGENT"
CONTRIBUTE = "/api/v1/contribute"
TARGET_RPS = 2000.0
TARGET_P99_MS = 100.0
SERVING = re.compile(r"serving the API on http://([^:\s]+):(\d+)")
_ACCEPTED = b'"accepted":true'
_REJECTION = re.compile(rb'"rejection_type":"([a-z_]+)"')
_ERROR_CODE = re.compile(rb'"code":"([a-z_]+)"')
_ETCD_HEADER = b'{"header"'
ETCD_PUT = "/v3/kv/put"
ETCD_PREFIX = "bench/"
ETCD_VALUE_BYTES = 300

STUB_RESPONSE = (
    b'{"accepted":true,"reason":"accepted","rejection_type":null,"score":0.01,'
    b'"metrics":{"reward":0.01,"risk":0.001,"complexity":2.0},"log_index":1,'
    b'"contribution_hash":"' + b"ab" * 32 + b'"}'
)


# --------------------------------------------------------------------------- request bodies


def contribute_body(run_tag: str, index: int) -> bytes:
    doc = {
        "goal_id": GOAL_ID,
        "agent_pack": {"version": "1.0", "parameters": b64(demo_parameters(index))},
        "contributor_id": f"bench-{run_tag}-{index}",
        "seed": index,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


_FILLER = bytes(range(33, 127)) * 4  # printable, longer than any value


def etcd_value(tag: str, index: int, size: int = ETCD_VALUE_BYTES) -> bytes:
    """``size`` bytes, distinct per (tag, index): the index up front, then filler."""
    head = f"{tag}:{index}:".encode()
    if len(head) >= size:
        raise ValueError(f"value prefix {head!r} does not fit in {size} bytes")
    return head + _FILLER[: size - len(head)]


def etcd_put_body(tag: str, index: int) -> bytes:
    """An etcd v3 gRPC-gateway ``PUT`` body: a distinct key and a distinct 300-byte value."""
    doc = {
        "key": b64(f"{ETCD_PREFIX}{tag}/{index}".encode()),
        "value": b64(etcd_value(tag, index)),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def make_request(path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# --------------------------------------------------------------------------- the client


#: a pooled connection idle longer than this is not reused: servers close idle keep-alive
#: connections (uvicorn and IAN after 5 s), and a request sent as one closes would fail
STALE_AFTER_S = 4.0


class Connection:
    """One HTTP/1.1 keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used_at = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.used_at > STALE_AFTER_S

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
                break
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            return status, await self._read_chunked()
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.writer.close()


class Tally:
    """What one client process saw."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.max_connections = 0

    def record(self, status: int, body: bytes, latency_s: float) -> None:
        self.statuses[status] += 1
        self.latencies_ms.append(latency_s * 1000.0)
        if status == 200:
            if _ACCEPTED in body:
                self.outcomes["accepted"] += 1
            elif body.startswith(_ETCD_HEADER):
                self.outcomes["etcd put"] += 1
            else:
                m = _REJECTION.search(body)
                self.outcomes[f"rejected:{m.group(1).decode() if m else '?'}"] += 1
        else:
            m = _ERROR_CODE.search(body)
            self.outcomes[f"http {status}:{m.group(1).decode() if m else '?'}"] += 1

    def to_doc(self, elapsed: float) -> dict[str, Any]:
        return {
            "elapsed_s": elapsed,
            "latencies_ms": self.latencies_ms,
            "statuses": dict(self.statuses),
            "outcomes": dict(self.outcomes),
            "errors": dict(self.errors),
            "max_connections": self.max_connections,
        }


def _requests(kind: str, tag: str, worker: int, workers: int, base: int):
    """An endless stream of request bytes; contribute bodies are unique per worker and phase
    (the pack hash ignores the contributor id, so the index also goes into the parameters)."""
    if kind == "health":
        data = make_request("/health", None)
        while True:
            yield data
    k = base + worker
    if kind == "etcd":
        while True:
            yield make_request(ETCD_PUT, etcd_put_body(tag, k))
            k += workers
    while True:
        yield make_request(CONTRIBUTE, contribute_body(tag, k))
        k += workers


async def closed_loop(
    host, port, kind, tag, base, worker, workers, connections, duration, start_at
):
    tally = Tally()
    requests = _requests(kind, tag, worker, workers, base)
    conns = [await Connection.open(host, port) for _ in range(connections)]
    tally.max_connections = connections
    await asyncio.sleep(max(0.0, start_at - time.time()))
    clock = time.perf_counter
    started = clock()
    deadline = started + duration

    async def drive(conn: Connection) -> None:
        while clock() < deadline:
            t0 = clock()
            try:
                status, body = await conn.request(next(requests))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                tally.errors[type(exc).__name__] += 1
                return
            tally.record(status, body, clock() - t0)

    await asyncio.gather(*(drive(c) for c in conns))
    elapsed = clock() - started
    for c in conns:
        c.close()
    return tally.to_doc(elapsed)


async def open_loop(
    host, port, kind, tag, base, worker, workers, rate, duration, start_at, max_conns
):
    """Send at a fixed schedule; a request waits for no earlier answer (new connection if
    every open one is busy, up to ``max_conns``)."""
    tally = Tally()
    requests = _requests(kind, tag, worker, workers, base)
    idle: deque[Connection] = deque()
    for _ in range(8):
        idle.append(await Connection.open(host, port))
    opened = len(idle)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    loop = asyncio.get_running_loop()
    started = loop.time() + 0.01
    total = int(rate * duration)
    tasks = set()
    gate = asyncio.Semaphore(max_conns)

    async def one(data: bytes, scheduled: float) -> None:
        nonlocal opened
        async with gate:
            while idle and idle[0].stale:  # the oldest idle ones first (LIFO pool)
                idle.popleft().close()
            if idle:
                conn = idle.pop()
            else:
                conn = await Connection.open(host, port)
                opened += 1
                tally.max_connections = max(tally.max_connections, opened)
            try:
                status, body = await conn.request(data)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                tally.errors[type(exc).__name__] += 1
                conn.close()
                return
            tally.record(status, body, loop.time() - scheduled)
            conn.used_at = time.monotonic()  # idle from now
            idle.append(conn)

    for k in range(total):
        scheduled = started + k / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(next(requests), scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    elapsed = loop.time() - started
    for c in idle:
        c.close()
    tally.max_connections = max(tally.max_connections, opened)
    return tally.to_doc(elapsed)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def client_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point of a client process."""
    loop = _new_loop()
    try:
        if spec["mode"] == "closed":
            coro = closed_loop(
                spec["host"],
                spec["port"],
                spec["kind"],
                spec["tag"],
                spec["base"],
                spec["worker"],
                spec["workers"],
                spec["connections"],
                spec["duration"],
                spec["start_at"],
            )
        else:
            coro = open_loop(
                spec["host"],
                spec["port"],
                spec["kind"],
                spec["tag"],
                spec["base"],
                spec["worker"],
                spec["workers"],
                spec["rate"],
                spec["duration"],
                spec["start_at"],
                spec["max_conns"],
            )
        return loop.run_until_complete(coro)
    finally:
        loop.close()


_PHASE_STRIDE = 100_000_000  # request indices of one phase; no phase sends that many
_phases = iter(range(1, 1_000_000))


def drive(pool, host, port, *, mode, kind, workers, duration, tag, **extra) -> dict[str, Any]:
    """Run one load phase across ``workers`` client processes and merge what they saw."""
    base = next(_phases) * _PHASE_STRIDE
    start_at = time.time() + 0.5  # every worker connects first, then all start together
    specs = []
    for w in range(workers):
        spec = {
            "mode": mode,
            "host": host,
            "port": port,
            "kind": kind,
            "tag": tag,
            "base": base,
            "worker": w,
            "workers": workers,
            "duration": duration,
            "start_at": start_at,
        }
        if mode == "closed":
            spec["connections"] = max(1, extra["connections"] // workers)
        else:
            spec["rate"] = extra["rate"] / workers
            spec["max_conns"] = max(1, extra["max_conns"] // workers)
        specs.append(spec)
    parts = list(pool.map(client_worker, specs))
    return merge(parts, mode=mode, **extra)


def merge(parts: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    latencies = sorted(x for p in parts for x in p["latencies_ms"])
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for p in parts:
        statuses.update({str(k): v for k, v in p["statuses"].items()})
        outcomes.update(p["outcomes"])
        errors.update(p["errors"])
    elapsed = max(p["elapsed_s"] for p in parts)
    ok = statuses.get("200", 0)
    return {
        **info,
        "elapsed_s": elapsed,
        "requests": len(latencies),
        "ok": ok,
        "rate_ok_per_s": ok / elapsed if elapsed else 0.0,
        "rate_all_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "statuses": dict(statuses),
        "outcomes": dict(outcomes),
        "client_errors": dict(errors),
        "max_connections": sum(p["max_connections"] for p in parts),
    }


# --------------------------------------------------------------------------- stub server


async def _stub_serve(port_out) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(STUB_RESPONSE)}\r\n\r\n".encode()
        + STUB_RESPONSE
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_out.put(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def stub_server_main(port_out) -> None:
    loop = _new_loop()
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(_stub_serve(port_out))


# --------------------------------------------------------------------------- the node


class NodeProcess:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.log_path = work / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0

    def start(self, timeout: float = 60.0) -> None:
        ian = Path(sys.executable).with_name("ian")
        if not ian.exists():
            raise SystemExit(f"no `ian` script next to {sys.executable}; install the project")
        env = {
            **os.environ,
            "IAN_DATA_DIR": str(self.work / "data"),
            "IAN_API_HOST": "127.0.0.1",
            "IAN_API_PORT": "0",
            "IAN_P2P_HOST": "127.0.0.1",
            "IAN_P2P_PORT": "0",  # free ports: runs beside other nodes
            "IAN_WS_PORT": "0",
            "IAN_LOG_LEVEL": "INFO",
            "IAN_CLIENT_RATE": "1000000",
            "IAN_CLIENT_BURST": "1000000",
            "IAN_CONTRIBUTOR_RATE": "1000000",
            "IAN_CONTRIBUTOR_BURST": "1000000",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(ian), "node", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = SERVING.search(self.log_path.read_text(errors="replace"))
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"the node did not start; its log:\n{self.log_path.read_text()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_problems(self) -> dict[str, Any]:
        text = self.log_path.read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if re.search(r"ERROR|CRITICAL|Traceback", ln)]
        return {"error_lines": len(bad), "first_error_lines": bad[:5]}


# --------------------------------------------------------------------------- py-spy and wrk


_SPY_MARKERS = (
    "Sequencer._apply_batch",
    "build_block",
    "execute",
    "backtest",
    "Store.append_block",
    "contribute",
    "Intake.prepare",
    "Store.has_packs",
    "make_contribution",
    "BaseModel.model_validate_json",
    "serialize_response",
    "HttpToolsProtocol.data_received",
)


def py_spy_profile(pid: int, seconds: float, out_dir: Path) -> dict[str, Any] | None:
    """Sample the node for ``seconds`` (all threads). Returns, over busy samples (idle waits
    dropped): own time by function, time under a few key frames, and busy samples per thread."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    raw = out_dir / "node_profile.txt"
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    cmd += ["--format", "raw", "--output", str(raw), "--nonblocking", "--threads"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not raw.exists():
        print(f"py-spy failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return summarise_py_spy(raw, _SPY_MARKERS)


WRK_LUA = """
local lines = {}
local id = 0
function setup(thread) thread:set("id", __COUNTER__) __COUNTER__ = __COUNTER__ + 1 end
function init(args)
  local k = 0
  for line in io.lines("__BODIES__") do
    if k % __THREADS__ == id then lines[#lines + 1] = line end
    k = k + 1
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
local n = 0
function request()
  n = n + 1
  if n > #lines then n = 1 end
  return wrk.format(nil, "/api/v1/contribute", nil, lines[n])
end
local counts = {}
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
"""


def wrk_cross_check(host, port, out_dir, threads, connections, duration) -> dict[str, Any] | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    bodies = out_dir / "wrk_bodies.txt"
    count = int(20_000 * duration)  # more bodies than wrk can send: no repeats, no dedup
    with bodies.open("wb") as f:
        for k in range(count):
            f.write(contribute_body("wrk", k) + b"\n")
    lua = out_dir / "wrk.lua"
    script = WRK_LUA.replace("__BODIES__", str(bodies)).replace("__THREADS__", str(threads))
    lua.write_text(script.replace("__COUNTER__", "_G.counter").replace("local id = 0", "id = 0"))
    lua.write_text("_G.counter = 0\n" + lua.read_text())
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{int(duration)}s"]
    cmd += ["--latency", "-s", str(lua), f"http://{host}:{port}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    bodies.unlink()
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    return {
        "threads": threads,
        "connections": connections,
        "requests_per_s": float(rps.group(1)) if rps else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
        "raw": out[-1500:],
    }


# --------------------------------------------------------------------------- etcd comparison

COMPARE_CONNECTIONS = 32
GOAL_THROUGHPUT_RATIO = 1.0  # IAN >= 1.0x etcd's durable answers per second
GOAL_P99_RATIO = 2.0  # IAN's p99 <= 2x etcd's
SCENARIOS = (
    ("single", "IAN 1 node (demo goal)", "etcd 1 member"),
    ("replicated", "IAN 3 authorities, to the leader", "etcd 3 members, to the leader"),
)


def _ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def compare(ian: dict[str, Any], etcd: dict[str, Any]) -> dict[str, Any]:
    """IAN against etcd on one scenario: the ratios and whether the issue's goals are met
    (IAN throughput >= 1.0x etcd's, IAN p99 <= 2x etcd's)."""
    throughput = _ratio(ian["rate_ok_per_s"], etcd["rate_ok_per_s"])
    p99 = _ratio(ian["p99_ms"], etcd["p99_ms"])
    return {
        "throughput_ratio": throughput,
        "p99_ratio": p99,
        "throughput_goal_met": throughput >= GOAL_THROUGHPUT_RATIO,
        "p99_goal_met": p99 <= GOAL_P99_RATIO,
        "goal_met": throughput >= GOAL_THROUGHPUT_RATIO and p99 <= GOAL_P99_RATIO,
    }


def comparison_table(doc: dict[str, Any]) -> str:
    """One row per scenario, IAN and etcd side by side."""
    rows = []
    for key, ian_name, etcd_name in SCENARIOS:
        sc = doc["scenarios"].get(key)
        if sc is None:
            continue
        ian, etcd, cmp_ = sc["ian"], sc["etcd"], sc["comparison"]
        rows.append(
            [
                f"{key}: {ian_name} vs {etcd_name}",
                ian["rate_ok_per_s"],
                ian["p50_ms"],
                ian["p99_ms"],
                etcd["rate_ok_per_s"],
                etcd["p50_ms"],
                etcd["p99_ms"],
                f"{cmp_['throughput_ratio']:.2f}x",
                f"{cmp_['p99_ratio']:.2f}x",
                "yes" if cmp_["goal_met"] else "no",
                f"{_load(ian):.1f} / {_load(etcd):.1f}",
            ]
        )
    return render_table(
        f"durable writes, closed loop, {doc['connections']} keep-alive connections, same client, "
        f"median of {doc['runs']} x {doc['duration_s']:g} s (goal: IAN >= "
        f"{GOAL_THROUGHPUT_RATIO:g}x etcd/s and p99 <= {GOAL_P99_RATIO:g}x etcd's)",
        [
            "scenario",
            "IAN 200/s",
            "IAN p50 ms",
            "IAN p99 ms",
            "etcd 200/s",
            "etcd p50 ms",
            "etcd p99 ms",
            "IAN/etcd /s",
            "IAN/etcd p99",
            "goal met",
            "load 1m IAN / etcd",
        ],
        rows,
    )


def _load(side: dict[str, Any]) -> float:
    """The median 1-minute load average when the side's rounds started."""
    return median([r["loadavg_1m_at_start"] for r in side.get("rounds", [])])


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids``, their live descendants (evaluation
    workers, API fronts) and their waited-for children."""
    total = 0.0
    for pid in _with_descendants(pids):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def _with_descendants(pids: list[int]) -> list[int]:
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def _measure(pool, host, port, pids, *, kind, label, runs, duration) -> dict[str, Any]:
    """A 1 s warm-up, then ``runs`` closed-loop rounds of ``duration`` s; server CPU per
    answer (all its processes) from /proc."""
    phase = {"mode": "closed", "workers": 1, "connections": COMPARE_CONNECTIONS}
    warm = drive(pool, host, port, kind=kind, duration=1.0, tag=f"{label}-warm", **phase)
    rounds = []
    for r in range(runs):
        cpu0 = _cpu_s(pids)
        load = os.getloadavg()[0]
        out = drive(pool, host, port, kind=kind, duration=duration, tag=f"{label}-r{r}", **phase)
        out["server_cpu_ms_per_ok"] = 1000 * (_cpu_s(pids) - cpu0) / out["ok"] if out["ok"] else 0
        out["loadavg_1m_at_start"] = load
        rounds.append(out)
    summary = _summarise(rounds, target=f"{host}:{port}")
    summary["server_cpu_ms_per_ok"] = median([r["server_cpu_ms_per_ok"] for r in rounds])
    summary["ok_with_warm_up"] = warm["ok"] + sum(r["ok"] for r in rounds)
    return summary


def _etcd_keys(member_url: str) -> int | None:
    """How many benchmark keys etcd holds (a count-only range over the bench prefix)."""
    import urllib.request

    end = ETCD_PREFIX[:-1] + chr(ord(ETCD_PREFIX[-1]) + 1)
    req = urllib.request.Request(
        member_url + "/v3/kv/range",
        data=json.dumps(
            {"key": b64(ETCD_PREFIX.encode()), "range_end": b64(end.encode()), "count_only": True}
        ).encode(),
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read()).get("count", 0))
    except (OSError, ValueError):
        return None


def _measure_etcd(pool, cluster, label: str, runs: int, duration: float) -> dict[str, Any]:
    """:func:`_measure` against ``cluster``'s leader, with the keys it stored afterwards."""
    m = cluster.leader()
    out = _measure(
        pool,
        "127.0.0.1",
        m.client_port,
        cluster.pids(),
        kind="etcd",
        label=label,
        runs=runs,
        duration=duration,
    )
    out["sent_to"] = f"leader {m.name}"
    out["keys_stored"] = _etcd_keys(m.client_url)
    return out


def _node_env(args) -> dict[str, str]:
    """Settings given to every IAN node of the comparison."""
    return {} if args.api_workers is None else {"IAN_API_WORKERS": str(args.api_workers)}


def run_etcd_comparison(args, runs: int, duration: float, out_dir: Path) -> dict[str, Any]:
    """IAN and etcd, one node/member then three, one after the other with the same client."""
    import httpx

    from consensus_bench import Network  # imports this module: imported here, not on top
    from etcd_cluster import EtcdCluster, ensure_etcd

    ensure_etcd(allow_install=not args.no_install)  # before any IAN phase: fail early
    ctx = multiprocessing.get_context("fork")
    doc: dict[str, Any] = {
        "connections": COMPARE_CONNECTIONS,
        "runs": runs,
        "duration_s": duration,
        "ian_body_bytes": len(contribute_body("size", 12345)),
        "etcd_body_bytes": len(etcd_put_body("size", 12345)),
        "etcd_value_bytes": ETCD_VALUE_BYTES,
        "scenarios": {},
    }
    measured: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        # The client's own ceiling with etcd's (larger) bodies: a server that answers at once.
        port_q = ctx.Queue()
        stub = ctx.Process(target=stub_server_main, args=(port_q,), daemon=True)
        stub.start()
        try:
            ceiling = drive(
                pool,
                "127.0.0.1",
                port_q.get(timeout=10),
                mode="closed",
                kind="etcd",
                workers=1,
                duration=min(duration, 3.0),
                tag="stub",
                connections=COMPARE_CONNECTIONS,
            )
        finally:
            stub.terminate()
            stub.join()
        ceiling["loadavg_1m_at_start"] = os.getloadavg()[0]
        doc["client_vs_stub"] = ceiling
        work = out_dir / "ian1"
        work.mkdir()
        node = NodeProcess(work)
        try:
            node.start()
            measured["ian single"] = _measure(
                pool,
                node.host,
                node.port,
                [node.proc.pid],
                kind="contribute",
                label="ian1",
                runs=runs,
                duration=duration,
            )
        finally:
            node.stop()
        measured["ian single"]["node_log"] = node.log_problems()

        with EtcdCluster(1, allow_install=not args.no_install) as cluster:
            doc["etcd_version"] = cluster.version
            measured["etcd single"] = _measure_etcd(pool, cluster, "etcd1", runs, duration)

        net = Network(out_dir, "cmp", env=_node_env(args))
        try:
            with httpx.Client(timeout=5) as client:
                leader = net.leader(client)
            host, port = leader.api.removeprefix("http://").rsplit(":", 1)
            measured["ian replicated"] = _measure(
                pool,
                host,
                int(port),
                [n.proc.pid for n in net.authorities],
                kind="contribute",
                label="ian3",
                runs=runs,
                duration=duration,
            )
            measured["ian replicated"]["sent_to"] = f"leader {leader.name}"
            measured["ian replicated"]["node_log"] = [
                ln for n in net.authorities for ln in n.log_problems()
            ][:5]
        finally:
            net.stop()

        with EtcdCluster(3, allow_install=not args.no_install) as cluster:
            measured["etcd replicated"] = _measure_etcd(pool, cluster, "etcd3", runs, duration)

    for key, _, _ in SCENARIOS:
        ian, etcd = measured[f"ian {key}"], measured[f"etcd {key}"]
        doc["scenarios"][key] = {"ian": ian, "etcd": etcd, "comparison": compare(ian, etcd)}
    return doc


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--runs", type=int, default=None, help="repeats per phase (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop offered load /s")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=None, help="closed-loop concurrency"
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        default=None,
        help="the node's IAN_API_WORKERS (API front processes; default: the node's default)",
    )
    parser.add_argument("--py-spy", action="store_true", help="profile the node under load")
    parser.add_argument("--wrk", action="store_true", help="wrk cross-check (if installed)")
    parser.add_argument(
        "--etcd",
        action="store_true",
        help="instead of the phases above: IAN against etcd (1 node/member, then 3), closed "
        f"loop, {COMPARE_CONNECTIONS} connections, side by side (results: http_etcd.json)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="with --etcd: do not apt-get install etcd-server when etcd is missing",
    )
    args = parser.parse_args()
    if args.api_workers is not None:  # every node this bench starts (NodeProcess keeps env)
        os.environ["IAN_API_WORKERS"] = str(args.api_workers)
    # SIGTERM unwinds like Ctrl-C: every node and etcd member started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.etcd:
        main_etcd(args)
        return
    runs = args.runs or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 5.0)
    conn_levels = args.connections or ([64] if args.quick else [32, 128])
    workers = args.workers
    ctx = multiprocessing.get_context("fork")

    out_dir = Path(tempfile.mkdtemp(prefix="ian-http-bench-"))
    doc: dict[str, Any] = {
        "benchmark": "http",
        "quick": args.quick,
        "environment": environment(out_dir),
        "client_workers": workers,
        "api_workers": args.api_workers,
        "duration_s": duration,
        "runs": runs,
        "targets": {"max_rate_per_s": TARGET_RPS, "p99_ms_at_rate": TARGET_P99_MS},
    }
    node = NodeProcess(out_dir)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            # Client ceiling: the same client against a server that does nothing.
            port_q = ctx.Queue()
            stub = ctx.Process(target=stub_server_main, args=(port_q,), daemon=True)
            stub.start()
            stub_port = port_q.get(timeout=10)
            doc["client_vs_stub"] = drive(
                pool,
                "127.0.0.1",
                stub_port,
                mode="closed",
                kind="contribute",
                workers=workers,
                duration=min(duration, 3.0),
                tag="stub",
                connections=64,
            )
            stub.terminate()
            stub.join()

            node.start()
            doc["node"] = {"host": node.host, "port": node.port, "pid": node.proc.pid}
            drive(  # warm-up: imports, first blocks, pydantic caches
                pool,
                node.host,
                node.port,
                mode="closed",
                kind="contribute",
                workers=workers,
                duration=1.0,
                tag="warm",
                connections=16,
            )
            doc["health"] = drive(
                pool,
                node.host,
                node.port,
                mode="closed",
                kind="health",
                workers=workers,
                duration=min(duration, 3.0),
                tag="health",
                connections=64,
            )
            doc["max_throughput"] = []
            for conns in conn_levels:
                rounds = [
                    drive(
                        pool,
                        node.host,
                        node.port,
                        mode="closed",
                        kind="contribute",
                        workers=workers,
                        duration=duration,
                        tag=f"max{conns}r{r}",
                        connections=conns,
                    )
                    for r in range(runs)
                ]
                doc["max_throughput"].append(_summarise(rounds, connections=conns))
            rounds = [
                drive(
                    pool,
                    node.host,
                    node.port,
                    mode="open",
                    kind="contribute",
                    workers=workers,
                    duration=duration,
                    tag=f"open{r}",
                    rate=args.rate,
                    max_conns=512,
                )
                for r in range(runs)
            ]
            doc["fixed_rate"] = _summarise(rounds, rate=args.rate)

            if args.py_spy:
                best = max(doc["max_throughput"], key=lambda x: x["rate_ok_per_s"])["connections"]
                spy_doc: dict[str, Any] = {"connections": best}
                future = pool.submit(
                    client_worker,
                    {
                        "mode": "closed",
                        "host": node.host,
                        "port": node.port,
                        "kind": "contribute",
                        "tag": "spy",
                        "base": next(_phases) * _PHASE_STRIDE,
                        "worker": 0,
                        "workers": 1,
                        "connections": best,
                        "duration": duration + 2,
                        "start_at": time.time() + 0.5,
                    },
                )
                time.sleep(1.5)
                spy_doc["profile"] = py_spy_profile(node.proc.pid, duration - 1, out_dir)
                future.result()
                doc["py_spy"] = spy_doc
        if args.wrk:
            doc["wrk"] = wrk_cross_check(
                node.host, node.port, out_dir, threads=2, connections=64, duration=duration
            )
    finally:
        doc["node_exit_code"] = node.stop()
        if node.proc is not None:
            doc["node_log"] = node.log_problems()
            doc["node_log_path"] = str(node.log_path)

    emit(_result_name("http", args), _strip_latencies(doc), _tables(doc), json_only=args.json_only)


def _result_name(base: str, args) -> str:
    """``base``, or ``base_api<N>`` with ``--api-workers N``: one results file per setting."""
    return base if args.api_workers is None else f"{base}_api{args.api_workers}"


def main_etcd(args) -> None:
    runs = args.runs or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 10.0)
    out_dir = Path(tempfile.mkdtemp(prefix="ian-http-etcd-bench-"))
    doc: dict[str, Any] = {
        "benchmark": "http_etcd",
        "quick": args.quick,
        "api_workers": args.api_workers,
    }
    doc["environment"] = environment(out_dir)
    try:
        doc.update(run_etcd_comparison(args, runs, duration, out_dir))
    except RuntimeError as exc:  # etcd missing or not starting: say so, one line
        raise SystemExit(f"etcd comparison: {exc}") from exc
    finally:  # node data and logs (a failed start already printed its log)
        shutil.rmtree(out_dir, ignore_errors=True)
    doc["environment"]["loadavg_at_end"] = os.getloadavg()
    load = doc["environment"]
    footer = (
        f"IAN nodes with IAN_API_WORKERS={_workers(doc)}\n"
        f"client ceiling (same client, {COMPARE_CONNECTIONS} connections, a stub server that "
        f"answers at once): {doc['client_vs_stub']['rate_ok_per_s']:,.0f}/s\n"
        f"load average (1, 5, 15 min) at start {_loads(load['loadavg_at_start'])}, at end "
        f"{_loads(load['loadavg_at_end'])}\n"
        f"etcd {doc.get('etcd_version')}; bodies: IAN {doc['ian_body_bytes']} B, etcd "
        f"{doc['etcd_body_bytes']} B ({doc['etcd_value_bytes']}-byte values)\n"
        "server CPU ms per answer (all its processes): "
        + ", ".join(
            f"{who} {k} {sc[who]['server_cpu_ms_per_ok']:.2f}"
            for k, sc in doc["scenarios"].items()
            for who in ("ian", "etcd")
        )
    )
    emit(
        _result_name("http_etcd", args),
        _strip_latencies(doc),
        [comparison_table(doc), footer],
        json_only=args.json_only,
    )


def _workers(doc: dict[str, Any]) -> str:
    workers = doc.get("api_workers")
    return "default" if workers is None else str(workers)


def _loads(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "?"


def _summarise(rounds: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    """Medians over rounds of the headline figures; the rounds themselves are kept."""
    keys = ("rate_ok_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    out = {**info, **{k: median([r[k] for r in rounds]) for k in keys}}
    outcomes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for r in rounds:
        outcomes.update(r["outcomes"])
        statuses.update(r["statuses"])
    out["outcomes"] = dict(outcomes)
    out["statuses"] = dict(statuses)
    out["client_errors"] = sum(sum(r["client_errors"].values()) for r in rounds)
    out["rounds"] = rounds
    return out


def _strip_latencies(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip_latencies(v) for k, v in doc.items() if k != "latencies_ms"}
    if isinstance(doc, list):
        return [_strip_latencies(v) for v in doc]
    return doc


def _split(outcomes: dict[str, int]) -> str:
    total = sum(outcomes.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(outcomes.items()))


def _tables(doc: dict[str, Any]) -> list[str]:
    rows = [
        ["client vs stub server", 64, doc["client_vs_stub"]["rate_ok_per_s"], "", "", "", ""],
        ["GET /health", 64, doc["health"]["rate_ok_per_s"], doc["health"]["p50_ms"], "", "", ""],
    ]
    for m in doc["max_throughput"]:
        rows.append(
            [
                "contribute, closed loop",
                m["connections"],
                m["rate_ok_per_s"],
                m["p50_ms"],
                m["p99_ms"],
                m["client_errors"],
                _split(m["outcomes"]),
            ]
        )
    f = doc["fixed_rate"]
    rows.append(
        [
            f"contribute, open loop {f['rate']:.0f}/s",
            max(r["max_connections"] for r in f["rounds"]),
            f["rate_ok_per_s"],
            f["p50_ms"],
            f["p99_ms"],
            f["client_errors"],
            _split(f["outcomes"]),
        ]
    )
    tables = [
        render_table(
            f"HTTP API, {doc['client_workers']} client process(es), "
            f"IAN_API_WORKERS={_workers(doc)}, median of {doc['runs']} "
            f"x {doc['duration_s']:.0f} s (targets: >= {TARGET_RPS:,.0f}/s; "
            f"p99 < {TARGET_P99_MS:.0f} ms at 500/s)",
            ["phase", "conns", "200/s", "p50 ms", "p99 ms", "errors", "split"],
            rows,
        )
    ]
    prof = (doc.get("py_spy") or {}).get("profile")
    if prof:
        for key, title in (
            ("own_top", "own time by function"),
            ("inclusive", "time under key frames"),
            ("threads", "busy samples by thread"),
        ):
            tables.append(
                render_table(
                    f"node under max load (py-spy, {doc['py_spy']['connections']} connections, "
                    f"{prof['busy_samples']} busy samples): {title}",
                    ["function", "samples", "share %"],
                    [
                        [t["function"][:80], t["samples"], 100 * t["share_of_busy"]]
                        for t in prof[key]
                    ],
                )
            )
    if doc.get("wrk"):
        w = doc["wrk"]
        tables.append(
            render_table(
                "wrk cross-check (unique bodies from Lua)",
                ["threads", "conns", "req/s", "non-2xx", "p50", "p99"],
                [
                    [
                        w["threads"],
                        w["connections"],
                        w["requests_per_s"],
                        w["non_2xx"],
                        w["p50"],
                        w["p99"],
                    ]
                ],
            )
        )
    log = doc.get("node_log", {})
    tables.append(
        f"node exit code {doc.get('node_exit_code')}; error lines in its log: "
        f"{log.get('error_lines')} {log.get('first_error_lines') or ''}"
    )
    return tables


if __name__ == "__main__":
    main()
