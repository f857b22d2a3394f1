"""The toolkit's HTTP clients for a node's API; translate transport errors at one boundary.

:class:`NodeClient` (httpx) serves every command. :func:`get_json_once` is the one-shot GET of
``ian status`` without httpx: importing httpx costs ~90 ms, more than the whole request should
take. It sends the same request over :mod:`http.client` (TLS verified as httpx verifies it) and
reports failures with the same errors and messages; where httpx would route through a proxy
(``*_PROXY`` in the environment) it hands the call to :class:`NodeClient`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ian.errors import NodeRefusedError, NodeUnreachableError

if TYPE_CHECKING:
    import httpx

UNREACHABLE_FIX = "is `ian node run` running? check --node-url / IAN_NODE_URL"
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


def _unreachable(base_url: str, reason: object) -> NodeUnreachableError:
    return NodeUnreachableError(
        f"cannot reach the node at {base_url}: {reason}", fix=UNREACHABLE_FIX
    )


def _refused(method: str, path: str, status: int, body: Any, text: str) -> NodeRefusedError:
    """The node's error answer: ``body`` is a callable giving its JSON, ``text`` its text."""
    try:
        err = body()["error"]
        message, field, code = err["message"], err.get("field"), err.get("code")
    except Exception:
        message, field, code = text[:200], None, None
    return NodeRefusedError(
        f"{method} {path} answered {status}: {message}",
        http_status=status,
        remote_code=code,
        field=field,
    )


class NodeClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from None
        if response.status_code >= 400:
            raise _refused(method, path, response.status_code, response.json, response.text)
        return response

    def get_json(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post_json(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json=body).json()


def get_json_once(base_url: str, path: str, *, timeout: float = 5.0) -> Any:
    """``NodeClient(base_url, timeout=timeout).get_json(path)``, without importing httpx."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError:
        port, parts = None, None  # type: ignore[assignment]
    light = (
        parts is not None
        and parts.scheme in ("http", "https")
        and parts.hostname
        and not parts.query
        and not parts.fragment
        and not any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)
    )
    if not light:
        with NodeClient(base_url, timeout=timeout) as client:
            return client.get_json(path)
    import http.client

    host = parts.hostname or ""
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=_tls_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    target = parts.path.rstrip("/") + path
    try:
        conn.request("GET", target, headers={"Accept": "*/*", "User-Agent": "ian"})
        response = conn.getresponse()
        body = response.read()
    except http.client.RemoteDisconnected:
        raise _unreachable(base_url, "Server disconnected without sending a response.") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(base_url, exc) from None
    finally:
        conn.close()
    if response.status >= 400:
        text = body.decode("utf-8", "replace")
        raise _refused("GET", path, response.status, lambda: json.loads(body), text)
    return json.loads(body)


def _tls_context() -> Any:
    """The context httpx verifies with (``SSL_CERT_FILE``/``SSL_CERT_DIR``, else certifi)."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
