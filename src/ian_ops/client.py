"""The toolkit's HTTP clients for a node's API; translate transport errors at one boundary.

:class:`NodeClient` (httpx) serves every command. :func:`get_json_once` is the one-shot GET of
``ian status`` without httpx: importing httpx costs ~90 ms, more than the whole request should
take. It sends the same request over a plain socket (TLS verified as httpx verifies it) and
reports failures with the same errors and messages; where httpx would route through a proxy
(``*_PROXY`` in the environment), or for a URL with credentials or a non-ASCII host, it hands
the call to :class:`NodeClient`.
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
    from urllib.parse import quote, urlsplit

    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    light = (
        parts.scheme in ("http", "https")
        and host.isascii()
        and port != -1
        and not (parts.query or parts.fragment or parts.username or parts.password)
        and not any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)
    )
    if not (light and host):
        with NodeClient(base_url, timeout=timeout) as client:
            return client.get_json(path)
    tls = parts.scheme == "https"
    port = port or (443 if tls else 80)
    # the path as httpx sends it: characters outside RFC 3986 percent-encoded
    target = quote(parts.path.rstrip("/") + path, safe="/%:@!$&'()*+,;=-._~")
    netloc = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        netloc += f":{port}"
    try:
        status, body = _get(host, port, netloc, target, timeout=timeout, tls=tls)
    except OSError as exc:
        raise _unreachable(base_url, exc) from None
    if status >= 400:
        text = body.decode("utf-8", "replace")
        raise _refused("GET", path, status, lambda: json.loads(body), text)
    return json.loads(body)


class _BadResponse(OSError):
    pass


def _get(
    host: str, port: int, netloc: str, target: str, *, timeout: float, tls: bool
) -> tuple[int, bytes]:
    """One HTTP/1.1 ``GET`` (``Connection: close``): the status and the body. A plain socket
    rather than :mod:`http.client`, whose import (email parsing, ssl) costs ~15 ms."""
    import socket

    # a bytes host skips the idna codec (and its unicodedata import); the host is ASCII
    sock = socket.create_connection((host.encode("ascii"), port), timeout=timeout)
    try:
        if tls:
            sock = _tls_context().wrap_socket(sock, server_hostname=host)
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {netloc}\r\nAccept: */*\r\n"
            "User-Agent: ian\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode("ascii"))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    finally:
        sock.close()
    raw = b"".join(chunks)
    if not raw:
        raise _BadResponse("Server disconnected without sending a response.")
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not (sep and version.startswith("HTTP/1.") and code.isdigit()):
        raise _BadResponse(f"malformed answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(body) < length:
            raise _BadResponse("Server disconnected before the end of the answer.")
        body = body[:length]
    return int(code), body


def _dechunk(data: bytes) -> bytes:
    out, at = [], 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            raise _BadResponse("Server disconnected before the end of the answer.")
        try:
            size = int(data[at:line_end].split(b";")[0], 16)
        except ValueError:
            raise _BadResponse("malformed chunked answer") from None
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        if len(data) < start + size:
            raise _BadResponse("Server disconnected before the end of the answer.")
        out.append(data[start : start + size])
        at = start + size + 2


def _tls_context() -> Any:
    """The context httpx verifies with (``SSL_CERT_FILE``/``SSL_CERT_DIR``, else certifi)."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
