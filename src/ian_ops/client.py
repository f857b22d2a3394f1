"""The toolkit's HTTP client for a node's API; translates transport errors at one boundary."""

from __future__ import annotations

from typing import Any

import httpx

from ian.errors import NodeRefusedError, NodeUnreachableError


class NodeClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
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
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise NodeUnreachableError(
                f"cannot reach the node at {self.base_url}: {exc}",
                fix="is `ian node run` running? check --node-url / IAN_NODE_URL",
            ) from None
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                message, field, code = err["message"], err.get("field"), err.get("code")
            except Exception:
                message, field, code = response.text[:200], None, None
            raise NodeRefusedError(
                f"{method} {path} answered {response.status_code}: {message}",
                http_status=response.status_code,
                remote_code=code,
                field=field,
            )
        return response

    def get_json(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post_json(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json=body).json()
