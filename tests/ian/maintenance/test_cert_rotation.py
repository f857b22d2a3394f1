"""Certificate rotation: files and modes, the kept old pair, interrupted-rotation recovery,
renewal timing and the reload route."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from ian.api.routes.certs import router
from ian.certs import load_certificate
from ian.errors import DataDirError, IdentityError, RequestError
from ian.maintenance.cert_rotation import (
    recover_interrupted_rotation,
    renewal_due,
    rotate_certificate,
    staging_dir,
)
from ian.storage.datadir import DataDir, init_data_dir

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def dd(tmp_path: Path):
    result = init_data_dir(tmp_path / "data")
    return result.datadir, result.identity, result.cert


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_rotation_swaps_in_a_new_pair_and_keeps_the_old(dd) -> None:
    datadir, identity, old = dd
    old_cert = datadir.cert_file.read_bytes()
    info = rotate_certificate(datadir, identity, 30, now=NOW)

    assert info.fingerprint_sha256 != old.fingerprint_sha256
    assert info.node_id == identity.node_id
    assert info.not_after == NOW + timedelta(days=30)
    assert load_certificate(datadir.certs_dir, identity, now=NOW) == info
    assert mode(datadir.certs_dir) == 0o700 and mode(datadir.key_file) == 0o600
    assert mode(datadir.cert_file) == 0o644
    kept = sorted(datadir.certs_old_dir.iterdir())
    assert [p.name for p in kept] == ["20300101T000000Z"]
    assert mode(datadir.certs_old_dir) == 0o700 and mode(kept[0]) == 0o700
    assert (kept[0] / "node_cert.pem").read_bytes() == old_cert
    assert not staging_dir(datadir).exists()

    # A second rotation in the same second gets its own slot.
    rotate_certificate(datadir, identity, 30, now=NOW)
    assert [p.name for p in sorted(datadir.certs_old_dir.iterdir())] == [
        "20300101T000000Z",
        "20300101T000000Z-2",
    ]


def test_recovery_of_each_interrupted_state(dd) -> None:
    datadir, identity, _old = dd
    live_fp = load_certificate(datadir.certs_dir, identity).fingerprint_sha256
    assert recover_interrupted_rotation(datadir, identity) is None

    # 1. crashed while writing staging: staging dropped, live pair untouched
    staging = staging_dir(datadir)
    staging.mkdir()
    (staging / "node_key.pem").write_bytes(b"half")
    assert "removed" in (recover_interrupted_rotation(datadir, identity) or "")
    assert not staging.exists()
    assert load_certificate(datadir.certs_dir, identity).fingerprint_sha256 == live_fp

    # 2. crashed between "certs -> certs-old" and "certs.new -> certs": finished
    info = rotate_certificate(datadir, identity, 30)
    slot = datadir.certs_old_dir / "interrupted"
    datadir.certs_dir.rename(staging)  # the new pair is staged again ...
    assert not datadir.certs_dir.exists()
    assert "finished" in (recover_interrupted_rotation(datadir, identity) or "")
    assert load_certificate(datadir.certs_dir, identity).fingerprint_sha256 == (
        info.fingerprint_sha256
    )

    # 3. no live pair and no usable staging: the newest old pair comes back
    datadir.certs_dir.rename(slot)
    staging.mkdir()
    assert "put back" in (recover_interrupted_rotation(datadir, identity) or "")
    assert load_certificate(datadir.certs_dir, identity).fingerprint_sha256 == (
        info.fingerprint_sha256
    )
    assert not staging.exists()


def test_failed_rotation_keeps_the_live_pair(dd, monkeypatch: pytest.MonkeyPatch) -> None:
    datadir, identity, old = dd
    real_rename = Path.rename

    def rename(self: Path, dest: Path) -> Path:
        if self.name == "certs":
            raise OSError(28, "No space left on device")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(DataDirError, match=r"rotation .* failed") as info:
        rotate_certificate(datadir, identity, 30)
    assert "ian certs rotate" in (info.value.fix or "")
    assert load_certificate(datadir.certs_dir, identity).fingerprint_sha256 == (
        old.fingerprint_sha256
    )
    assert not staging_dir(datadir).exists()


def test_renewal_due(dd) -> None:
    _datadir, _identity, cert = dd
    expiry = cert.not_after
    assert not renewal_due(cert, expiry - timedelta(days=22), 21)
    assert renewal_due(cert, expiry - timedelta(days=21), 21)
    assert renewal_due(cert, expiry + timedelta(days=1), 21)
    assert renewal_due(cert, expiry, 0)


class FakeNode:
    def __init__(self, datadir: DataDir, identity, fail: bool = False) -> None:
        self.settings = SimpleNamespace(admin_allow_remote=True)
        self.admin_token = "secret"
        self.datadir, self.identity, self.fail = datadir, identity, fail

    def reload_certificates(self):
        if self.fail:
            raise IdentityError("broken pair")
        return load_certificate(self.datadir.certs_dir, self.identity)


def client_for(node: FakeNode) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.node = node
    app.include_router(router)

    @app.exception_handler(RequestError)
    async def _err(request, exc: RequestError):  # the real app's mapping, in miniature
        from fastapi.responses import JSONResponse

        return JSONResponse(
            {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.http_status
        )

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ian.test")


@pytest.mark.anyio
async def test_reload_route(dd) -> None:
    datadir, identity, _old = dd
    info = rotate_certificate(datadir, identity, 10)
    auth = {"Authorization": "Bearer secret"}
    async with client_for(FakeNode(datadir, identity)) as client:
        assert (await client.post("/api/v1/admin/certs/reload")).status_code == 401
        r = await client.post("/api/v1/admin/certs/reload", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["fingerprint_sha256"] == info.fingerprint_sha256
    assert r.json()["node_id"] == identity.node_id
    async with client_for(FakeNode(datadir, identity, fail=True)) as bad:
        r = await bad.post("/api/v1/admin/certs/reload", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "certificate_unusable"
