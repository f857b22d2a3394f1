"""Peer API routes against a real PeerBook file and an in-memory stand-in for the P2P layer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ian.api.models import PeerEntry, PeerList
from ian.api.routes.peers import router
from ian.errors import RequestError
from ian.p2p.peer_book import PeerBook, PeerEvent

A = "a" * 40
B = "b" * 40
TOKEN = "s3cret"
T0 = 1_700_000_000.0


@dataclass
class Conn:
    node_id: str
    address: str
    direction: str = "inbound"
    connected_since: float = T0
    height: int = 7


class FakeP2P:
    """Records what the routes ask of the P2P layer."""

    def __init__(self) -> None:
        self.conns: dict[str, Conn] = {}
        self.disconnected: list[tuple[str, str]] = []
        self.configured: list[dict[str, Any]] = []
        self.dialled: list[str] = []

    def peers(self) -> list[Conn]:
        return list(self.conns.values())

    def disconnect(self, node_id: str, reason: str) -> None:
        self.disconnected.append((node_id, reason))
        self.conns.pop(node_id, None)

    async def connect(self, address: str) -> str:
        self.dialled.append(address)
        return "f" * 40

    def configure(self, max_peers=None, rate=None, burst=None) -> None:
        self.configured.append({"max_peers": max_peers, "rate": rate, "burst": burst})

    max_peers = 50
    rate_limit = (200.0, 400.0)


def make_app(book: PeerBook, p2p: FakeP2P | None) -> FastAPI:
    """The router with the node attributes it expects and JSON errors like the real app."""
    app = FastAPI()
    app.state.node = SimpleNamespace(
        peer_book=book,
        p2p=p2p,
        admin_token=TOKEN,
        settings=SimpleNamespace(admin_allow_remote=False),
    )

    @app.exception_handler(RequestError)
    async def _err(request: Request, exc: RequestError) -> JSONResponse:
        body = {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = {"error": {"code": "invalid_input", "message": str(exc.errors()[0]["msg"])}}
        return JSONResponse(body, status_code=400)

    app.include_router(router)
    return app


@pytest.fixture
def book(tmp_path: Path) -> PeerBook:
    return PeerBook.load(tmp_path / "peer_scores.json")


@pytest.fixture
def p2p() -> FakeP2P:
    return FakeP2P()


def client_for(
    app: FastAPI, host: str = "127.0.0.1", token: str | None = TOKEN
) -> httpx.AsyncClient:
    """An HTTP client of ``app`` (in process), calling from ``host``, with ``token``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(host, 5000)),
        base_url="http://ian.test",
        headers={"Authorization": f"Bearer {token}"} if token else None,
    )


@pytest.fixture
async def client(book: PeerBook, p2p: FakeP2P) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(book, p2p)) as c:
        yield c


@pytest.mark.anyio
async def test_list_and_show(client: httpx.AsyncClient, book: PeerBook, p2p: FakeP2P) -> None:
    book.on_connected(A, "tcp://10.0.0.1:9000")
    p2p.conns[A] = Conn(A, "tcp://10.0.0.1:9000")
    book.record(B, PeerEvent.RATE_LIMIT_VIOLATION)
    body = (await client.get("/api/v1/peers")).json()
    assert body["known"] == 2 and body["banned"] == 0 and "peers" not in body
    assert body["connected"][0]["node_id"] == A and body["connected"][0]["score"] == 100
    body = (await client.get("/api/v1/peers", params={"all": 1, "sort": "violations"})).json()
    assert [p["node_id"] for p in body["peers"]] == [B, A]
    assert (await client.get(f"/api/v1/peers/{B}")).json()["rate_limit_violations"] == 1
    missing = await client.get(f"/api/v1/peers/{'c' * 40}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await client.get("/api/v1/peers", params={"all": 1, "sort": "nope"})).status_code == 400


@pytest.mark.anyio
async def test_admin_routes_require_the_token(book: PeerBook, p2p: FakeP2P) -> None:
    ban = {"target": A, "seconds": 5, "reason": "x"}
    async with client_for(make_app(book, p2p), token=None) as anon:
        assert (await anon.post("/api/v1/admin/peers/ban", json=ban)).status_code == 401
    async with client_for(make_app(book, p2p), host="203.0.113.9") as remote:
        assert (await remote.post("/api/v1/admin/peers/ban", json=ban)).status_code == 403
    assert book.get(A) is None


@pytest.mark.anyio
async def test_ban_saves_and_disconnects(
    client: httpx.AsyncClient, book: PeerBook, p2p: FakeP2P
) -> None:
    for node, addr in ((A, "tcp://10.1.2.3:9000"), (B, "tcp://192.0.2.1:9000")):
        book.on_connected(node, addr)
        p2p.conns[node] = Conn(node, addr)
    r = await client.post(
        "/api/v1/admin/peers/ban", json={"target": "10.0.0.0/8", "seconds": 60, "reason": "lab"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["disconnected"] == [A] and r.json()["kind"] == "ip"
    assert p2p.disconnected == [(A, "banned: lab")]
    saved = json.loads(book.path.read_text())
    assert "10.0.0.0/8" in saved["ip_bans"]
    r = await client.post(
        "/api/v1/admin/peers/ban", json={"target": B, "seconds": 60, "reason": "x"}
    )
    assert r.json()["disconnected"] == [B]
    assert json.loads(book.path.read_text())["peers"][B]["ban_reason"] == "x"
    bad = await client.post(
        "/api/v1/admin/peers/ban", json={"target": "1.2.3.4/8", "seconds": 1, "reason": "x"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "target"
    assert (await client.post("/api/v1/admin/peers/ban", json={"target": B})).status_code == 400


@pytest.mark.anyio
async def test_unban_reset_prune(client: httpx.AsyncClient, book: PeerBook) -> None:
    book.ban(A, seconds=60, reason="x")
    assert (await client.post("/api/v1/admin/peers/unban", json={"target": A})).json() == {
        "target": A,
        "removed": True,
    }
    for _ in range(3):
        book.record(B, PeerEvent.PROTOCOL_VIOLATION)
    r = await client.post("/api/v1/admin/peers/reset", json={"node_id": B})
    assert r.json()["score"] == 100 and r.json()["protocol_violations"] == 3
    r = await client.post("/api/v1/admin/peers/reset", json={"node_id": "c" * 40})
    assert r.status_code == 404
    r = await client.post("/api/v1/admin/peers/prune", json={"older_than_s": 0, "dry_run": True})
    assert r.json() == {"kept": 0, "removed": 2, "removed_ids": [A, B], "dry_run": True}
    assert len(book) == 2
    r = await client.post("/api/v1/admin/peers/prune", json={"older_than_s": 0})
    assert r.json()["removed"] == 2 and len(book) == 0
    assert json.loads(book.path.read_text())["peers"] == {}


@pytest.mark.anyio
async def test_connect_and_limits(client: httpx.AsyncClient, p2p: FakeP2P, book: PeerBook) -> None:
    r = await client.post("/api/v1/admin/peers/connect", json={"address": "10.0.0.9:9000"})
    assert r.json() == {"address": "tcp://10.0.0.9:9000", "node_id": "f" * 40}
    r = await client.post("/api/v1/admin/peers/connect", json={"address": "http://x:1"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "address"
    r = await client.post("/api/v1/admin/p2p/limits", json={"max_peers": 12})
    assert r.json()["applied"] == {"max_peers": 12}
    assert set(r.json()["limits"]) == {"max_peers", "rate", "burst"}
    assert p2p.configured == [{"max_peers": 12, "rate": None, "burst": None}]
    assert (await client.post("/api/v1/admin/p2p/limits", json={})).status_code == 400
    assert (await client.post("/api/v1/admin/p2p/limits", json={"rate": -1})).status_code == 400
    async with client_for(make_app(book, None)) as no_p2p:
        r = await no_p2p.post("/api/v1/admin/peers/connect", json={"address": "10.0.0.9:9000"})
        assert r.status_code == 503
        assert (await no_p2p.get("/api/v1/peers")).json()["connected"] == []


def test_peer_entry_declares_every_field_of_a_peer_record(book: PeerBook) -> None:
    """PeerEntry is the one declaration of the record's JSON; a field the core adds to
    PeerRecord.to_dict without adding it there is refused, not silently dropped."""
    book.on_connected(A, "tcp://10.0.0.1:9000")
    record = book.get(A)
    assert record is not None
    doc = record.to_dict()
    assert set(PeerEntry.model_fields) == set(doc)
    assert PeerEntry.of(record).model_dump(mode="json") == doc
    with pytest.raises(ValidationError):
        PeerEntry.model_validate({**doc, "new_counter": 1})


@pytest.mark.anyio
async def test_the_list_is_the_shared_peer_list_shape(tmp_path: Path) -> None:
    """The route answers PeerList.of(...), the builder `ian peers list` uses offline: same keys,
    same values, `peers` absent unless asked for."""
    book = PeerBook.load(tmp_path / "peer_scores.json", clock=lambda: T0)
    book.on_connected(A, "tcp://10.0.0.1:9000")
    book.record(B, PeerEvent.RATE_LIMIT_VIOLATION)
    book.ban("10.9.0.0/16", seconds=60, reason="lab")
    async with client_for(make_app(book, None), token=None) as client:
        listed = (await client.get("/api/v1/peers", params={"all": 1})).json()
        shared = PeerList.of(book, [], book.records()).model_dump(mode="json", exclude_unset=True)
        assert listed == shared
        assert [p["node_id"] for p in listed["peers"]] == [A, B]
        assert listed["ip_bans"] == [
            {"target": "10.9.0.0/16", "kind": "ip", "banned_until": T0 + 60, "reason": "lab"}
        ]
        short = (await client.get("/api/v1/peers")).json()
        assert "peers" not in short
        assert short == PeerList.of(book, [], None).model_dump(mode="json", exclude_unset=True)
