"""Admin routes: bearer token always, loopback only by default (ARCHITECTURE §5)."""

from __future__ import annotations

import logging
import stat

import pytest

pytestmark = pytest.mark.anyio

ROUTE = "/api/v1/admin/log-level"


def file_token(api) -> str:
    path = api.node.datadir.root / "api_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    return token


async def test_admin_needs_a_token(api, error_of, restore_log_level) -> None:
    r = await api.client.post(ROUTE, json={"level": "DEBUG"})
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api.client.post(
        ROUTE, json={"level": "DEBUG"}, headers={"authorization": "Bearer not-the-token"}
    )
    error_of(r, 403, "forbidden")
    assert logging.getLogger("ian").level != logging.DEBUG


async def test_admin_works_with_the_data_dir_token(api, restore_log_level) -> None:
    token = file_token(api)
    r = await api.client.post(
        ROUTE, json={"level": "debug"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"level": "DEBUG"}
    assert logging.getLogger("ian").level == logging.DEBUG
    r = await api.client.post(
        ROUTE, json={"level": "WARNING"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200
    assert logging.getLogger("ian").level == logging.WARNING


async def test_admin_works_over_ipv6_loopback(api, restore_log_level) -> None:
    client = await api.client_from("::1")
    r = await client.post(
        ROUTE, json={"level": "INFO"}, headers={"authorization": f"Bearer {file_token(api)}"}
    )
    assert r.status_code == 200, r.text


async def test_admin_refused_from_a_remote_client_even_with_the_token(
    api, error_of, restore_log_level
) -> None:
    remote = await api.client_from("10.1.2.3", 123)
    r = await remote.post(
        ROUTE, json={"level": "DEBUG"}, headers={"authorization": f"Bearer {file_token(api)}"}
    )
    err = error_of(r, 403, "forbidden")
    assert "loopback" in err["message"]
    assert logging.getLogger("ian").level != logging.DEBUG


async def test_admin_remote_allowed_when_configured(start_api, restore_log_level) -> None:
    api = await start_api(admin_allow_remote=True)
    remote = await api.client_from("10.1.2.3", 123)
    r = await remote.post(
        ROUTE, json={"level": "ERROR"}, headers={"authorization": f"Bearer {file_token(api)}"}
    )
    assert r.status_code == 200, r.text


async def test_configured_token_replaces_the_file_token(
    start_api, error_of, restore_log_level
) -> None:
    api = await start_api(api_token="operator-token-1234")
    r = await api.client.post(
        ROUTE, json={"level": "INFO"}, headers={"authorization": f"Bearer {file_token(api)}"}
    )
    error_of(r, 403, "forbidden")
    r = await api.client.post(
        ROUTE, json={"level": "INFO"}, headers={"authorization": "Bearer operator-token-1234"}
    )
    assert r.status_code == 200


async def test_admin_bad_level_is_400(api, error_of, restore_log_level) -> None:
    auth = {"authorization": f"Bearer {file_token(api)}"}
    err = error_of(await api.client.post(ROUTE, json={"level": "LOUD"}, headers=auth), 400)
    assert err["field"] == "level"
    err = error_of(await api.client.post(ROUTE, json={}, headers=auth), 400)
    assert err["field"] == "level"


async def test_admin_checks_the_token_before_the_body(api, error_of, restore_log_level) -> None:
    """An unauthenticated caller learns nothing from the body's validation."""
    r = await api.client.post(
        ROUTE, content=b"{not json", headers={"content-type": "application/json"}
    )
    error_of(r, 401, "unauthorized")
    r = await api.client.post(ROUTE, json={"nope": 1})
    error_of(r, 401, "unauthorized")


async def test_certificate_reload_answers_the_cert_doc(api) -> None:
    """The route's model is the schema of ian.certs.cert_doc, which `ian certs show` prints."""
    from ian.api.models import CertificateInfo
    from ian.certs import cert_doc

    r = await api.client.post(
        "/api/v1/admin/certs/reload", headers={"authorization": f"Bearer {file_token(api)}"}
    )
    assert r.status_code == 200, r.text
    doc, answered = cert_doc(api.node.cert), r.json()
    assert set(CertificateInfo.model_fields) == set(doc)
    # days_left is computed at call time: equal up to the rounding step.
    assert abs(answered.pop("days_left") - doc.pop("days_left")) <= 0.01
    assert answered == doc
    assert r.json()["node_id"] == api.node.identity.node_id
