"""Who may call what: bearer tokens, the loopback rule for admin routes, client addresses."""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ian.api.responses import request_error_response
from ian.errors import AuthError

if TYPE_CHECKING:
    from ian.node import Node

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def bearer(request: Request) -> str | None:
    return _bearer_of(request.headers.get("authorization", ""))


def _bearer_of(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


def check_token(request: Request, expected: str | None) -> None:
    """Raise AuthError (401 missing, 403 wrong) unless ``expected`` is None or matches."""
    check_bearer(request.headers.get("authorization"), expected)


def check_bearer(authorization: str | None, expected: str | None) -> None:
    """:func:`check_token` for the value of an ``Authorization`` header (None: absent)."""
    if expected is None:
        return
    given = _bearer_of(authorization or "")
    if given is None:
        raise AuthError("a bearer token is required (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthError("the bearer token is wrong", forbidden=True)


async def require_admin(request: Request) -> None:
    """FastAPI dependency for /api/v1/admin/...: loopback only (unless allowed) and a token."""
    node = request.app.state.node
    host = request.client.host if request.client else ""
    if not node.settings.admin_allow_remote and host not in LOOPBACK:
        raise AuthError(
            "admin routes answer only on loopback (set admin_allow_remote to change that)",
            forbidden=True,
        )
    if node.admin_token is None:
        raise AuthError("no admin token is configured on this node", forbidden=True)
    check_token(request, node.admin_token)


@functools.lru_cache(maxsize=8)
def trusted_networks(
    proxies: Sequence[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The ``trusted_proxies`` setting as networks (parsed once per distinct setting)."""
    return [ipaddress.ip_network(p, strict=False) for p in proxies]


def forwarded_address(
    host: str,
    forwarded: str | None,
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The client's address: the socket's ``host``, or the last ``X-Forwarded-For`` hop when
    ``host`` is a trusted proxy (X-Forwarded-For from anyone else is not believed)."""
    if not proxies or host == "unknown" or not forwarded:
        return host
    try:
        trusted = any(ipaddress.ip_address(host) in net for net in proxies)
    except ValueError:
        trusted = False
    if trusted:
        return forwarded.split(",")[-1].strip() or host
    return host


class BanGuard:
    """ASGI middleware: a client whose address is banned (``ian peers ban IP|CIDR``, the same
    bans P2P uses, live and persisted in the peer book) gets 403 before anything else runs.
    Behind a trusted proxy the forwarded address is the one checked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = scope_ban_refusal(scope["app"].state.node, scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def client_host(scope: Scope) -> str:
    """The socket's address of an HTTP request's client ("unknown" when the server gave none)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def scope_ban_refusal(node: Node, scope: Scope) -> JSONResponse | None:
    """:func:`ban_refusal` for the client of an ASGI HTTP request (its X-Forwarded-For read only
    when trusted proxies are configured)."""
    host = client_host(scope)
    forwarded = None
    if host != "unknown" and node.settings.trusted_proxies:
        forwarded = Request(scope).headers.get("x-forwarded-for")
    return ban_refusal(node, host, forwarded)


def ban_refusal(node: Node, host: str, forwarded: str | None) -> JSONResponse | None:
    """The 403 for a client at ``host`` (the socket's address; ``forwarded``: its
    X-Forwarded-For) whose address is banned, or None."""
    proxies = trusted_networks(tuple(node.settings.trusted_proxies))
    why = node.http_ban_reason(forwarded_address(host, forwarded, proxies))
    if why is None:
        return None
    exc = AuthError(f"this address is banned: {why}", forbidden=True, code="banned")
    return request_error_response(exc)


class AdminGuard:
    """ASGI middleware: every ``/api/v1/admin/`` request passes :func:`require_admin` before
    its body is read, so an unauthenticated caller learns nothing from body validation."""

    PREFIX = "/api/v1/admin/"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every admin route is a POST; other methods reach the router (405 with Allow).
        admin = scope["type"] == "http" and scope["path"].startswith(self.PREFIX)
        if admin and scope["method"] == "POST":
            request = Request(scope)
            try:
                await require_admin(request)
            except AuthError as exc:
                await request_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
