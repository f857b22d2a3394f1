"""The pure parts of the etcd comparison (``bench/http_bench.py --etcd``): member command lines,
request bodies, the comparison and its table. Nothing here starts etcd or a node."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import etcd_cluster  # noqa: E402
import http_bench  # noqa: E402


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_three_members_get_distinct_ports_and_one_initial_cluster(tmp_path: Path) -> None:
    members = etcd_cluster.plan_members(3, [2001, 2002, 2003, 3001, 3002, 3003], tmp_path)
    assert [m.client_port for m in members] == [2001, 2002, 2003]
    assert [m.peer_port for m in members] == [3001, 3002, 3003]
    assert len({m.data_dir for m in members}) == 3
    assert all(m.data_dir.parent == tmp_path for m in members)

    args = etcd_cluster.member_args("/usr/bin/etcd", members[1], members, "tok", 8 << 30)
    assert args[0] == "/usr/bin/etcd"
    assert _flag(args, "--name") == "m1"
    assert _flag(args, "--listen-client-urls") == "http://127.0.0.1:2002"
    assert _flag(args, "--advertise-client-urls") == "http://127.0.0.1:2002"
    assert _flag(args, "--listen-peer-urls") == "http://127.0.0.1:3002"
    assert _flag(args, "--initial-advertise-peer-urls") == "http://127.0.0.1:3002"
    assert _flag(args, "--initial-cluster") == (
        "m0=http://127.0.0.1:3001,m1=http://127.0.0.1:3002,m2=http://127.0.0.1:3003"
    )
    assert _flag(args, "--initial-cluster-state") == "new"
    assert _flag(args, "--initial-cluster-token") == "tok"
    assert _flag(args, "--quota-backend-bytes") == str(8 << 30)
    assert _flag(args, "--data-dir") == str(tmp_path / "m1.etcd")


def test_member_plan_refuses_repeated_or_missing_ports(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        etcd_cluster.plan_members(3, [1, 2, 3, 4, 5, 5], tmp_path)
    with pytest.raises(ValueError):
        etcd_cluster.plan_members(1, [1], tmp_path)
    with pytest.raises(ValueError):
        etcd_cluster.plan_members(0, [], tmp_path)


def test_free_ports_are_distinct() -> None:
    ports = etcd_cluster.free_ports(6)
    assert len(set(ports)) == 6
    assert all(0 < p < 65536 for p in ports)


def test_missing_etcd_not_allowed_to_install_says_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setattr(etcd_cluster, "find_etcd", lambda: None)
    with pytest.raises(etcd_cluster.EtcdUnavailable, match="apt-get install -y etcd-server"):
        etcd_cluster.ensure_etcd(allow_install=False)


def test_etcd_put_bodies_are_distinct_with_300_byte_values() -> None:
    bodies = [json.loads(http_bench.etcd_put_body("t", k)) for k in (0, 1, 10**9)]
    keys = {base64.b64decode(b["key"]) for b in bodies}
    values = [base64.b64decode(b["value"]) for b in bodies]
    assert len(keys) == 3
    assert all(k.startswith(http_bench.ETCD_PREFIX.encode()) for k in keys)
    assert len(set(values)) == 3
    assert {len(v) for v in values} == {http_bench.ETCD_VALUE_BYTES}


def test_the_client_reads_a_chunked_answer() -> None:
    import asyncio

    async def run() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
        )
        conn = http_bench.Connection(reader, _NullWriter())  # type: ignore[arg-type]
        return await conn.request(b"")

    assert asyncio.run(run()) == (200, b'{"a":1}')


class _NullWriter:
    def write(self, data: bytes) -> None:
        pass


def _side(rate: float, p50: float, p99: float) -> dict[str, object]:
    rounds = [{"loadavg_1m_at_start": 1.25}]
    return {"rate_ok_per_s": rate, "p50_ms": p50, "p99_ms": p99, "rounds": rounds}


def test_compare_applies_the_issue_goals() -> None:
    met = http_bench.compare(_side(1200, 10, 40), _side(1000, 8, 25))
    assert met["throughput_ratio"] == pytest.approx(1.2)
    assert met["p99_ratio"] == pytest.approx(1.6)
    assert met["goal_met"]
    slow = http_bench.compare(_side(900, 10, 40), _side(1000, 8, 25))
    assert not slow["throughput_goal_met"] and slow["p99_goal_met"] and not slow["goal_met"]
    tail = http_bench.compare(_side(2000, 10, 60), _side(1000, 8, 25))
    assert tail["throughput_goal_met"] and not tail["p99_goal_met"] and not tail["goal_met"]


def test_comparison_table_puts_ian_and_etcd_side_by_side() -> None:
    scenarios = {}
    for key, ian, etcd in (
        ("single", _side(764, 40, 100), _side(2077, 12, 46)),
        ("replicated", _side(3000, 5, 20), _side(1746, 15, 55)),
    ):
        scenarios[key] = {"ian": ian, "etcd": etcd, "comparison": http_bench.compare(ian, etcd)}
    doc = {"connections": 32, "runs": 3, "duration_s": 10.0, "scenarios": scenarios}
    lines = http_bench.comparison_table(doc).splitlines()
    assert "32 keep-alive connections" in lines[0]
    assert (
        "IAN 200/s" in lines[1]
        and "etcd 200/s" in lines[1]
        and "goal met" in lines[1]
        and "load" in lines[1]
    )
    single = next(ln for ln in lines if ln.startswith("single"))
    assert "764" in single and "2,077" in single and "0.37x" in single
    assert single.split()[-4:] == ["no", "1.2", "/", "1.2"]
    replicated = next(ln for ln in lines if ln.startswith("replicated"))
    assert "1.72x" in replicated and replicated.split()[-4] == "yes"
