"""HTTP request heads are bounded in bytes (issue "Hostile peers", item 1, HTTP part): a huge
header gets 431 at once and the connection is closed; memory stays flat. A real node."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest
from tests.support.attack_report import PeakSampler, record

pytestmark = pytest.mark.integration

HUGE = 64 * 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 40 * 1024


def send_huge_header(host: str, port: int, size: int) -> bytes:
    """Send a request whose one header is ``size`` bytes; return what the node answered."""
    sock = socket.create_connection((host, port), timeout=20)
    answer = b""
    try:
        sock.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        sent = 0
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node closed the connection before we finished: the point
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    return answer


def test_a_huge_header_is_431_and_memory_stays_flat(ian_nodes) -> None:
    node = ian_nodes.start()
    host, port = node.api_url.removeprefix("http://").rsplit(":", 1)
    before = node.rss_kib()
    rss = PeakSampler(node.rss_kib)
    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: answers.append(send_huge_header(host, int(port), HUGE)))
        for _ in range(8)
    ]
    with rss:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(answers) == 8
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(body)["error"]["code"] == "header_too_large"
    record(
        "8 HTTP requests at once, each with a 64 MiB header",
        before_kib=before,
        peak_kib=rss.peak,
        after_kib=node.rss_kib(),
        outcome="431 header_too_large each, connection closed",
    )
    assert node.rss_kib() - before < RSS_GROWTH_LIMIT_KIB
    # Ordinary requests (and bodies bigger than the head limit) are unaffected.
    assert httpx.get(node.api_url + "/api/v1/status", timeout=10).status_code == 200
    big_body = {"goal_id": "x" * 200_000}
    r = httpx.post(node.api_url + "/api/v1/contribute", json=big_body, timeout=10)
    assert r.status_code in (400, 404, 413), r.text


def test_integers_beyond_the_store_are_400_not_500(ian_nodes) -> None:
    node = ian_nodes.start()
    goal = "DEMO_TRADING_AGENT"
    for path in (f"/api/v1/log/{goal}?from=9223372036854775808", f"/api/v1/proof/{goal}/{2**64}"):
        r = httpx.get(node.api_url + path, timeout=10)
        assert r.status_code == 400, (path, r.text)
        assert "9223372036854775807" in r.json()["error"]["message"]
    assert not node.has_msg("unexpected error serving")
