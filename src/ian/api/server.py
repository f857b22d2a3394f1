"""Uvicorn inside the node's task group, on a socket the node binds itself.

Uvicorn's own signal capture is disabled: the node owns signals and decides the shutdown order
(HTTP first, then the sequencer drains). With ``api_workers`` the front processes
(:mod:`ian.api.fronts`) accept on the socket instead, and uvicorn serves what they hand over.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
import uvicorn
from anyio.abc import TaskStatus

from ian.api.fronts import ApiFronts
from ian.api.http_limits import BoundedHttpToolsProtocol
from ian.api.listen import listen_group

if TYPE_CHECKING:
    from ian.node import Node


class _EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(self, node: Node, host: str, port: int) -> None:
        self.node = node
        self.host = host
        self.port = port
        self._server: _EmbeddedServer | None = None
        self.fronts: ApiFronts | None = None
        self._done = anyio.Event()

    async def serve(self, *, task_status: TaskStatus[tuple[str, int]]) -> None:
        from ian.api.app import asgi_app

        workers = self.node.settings.api_workers
        socks = listen_group(
            self.host, self.port, max(1, workers), purpose="the API", setting="IAN_API_PORT"
        )
        config = uvicorn.Config(
            asgi_app(self.node),
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="none",
            http=BoundedHttpToolsProtocol,  # httptools, the request head bounded in bytes
            timeout_graceful_shutdown=5,
            server_header=False,
            # Client addresses are what the socket says; X-Forwarded-For is honoured only for
            # the configured trusted_proxies (ian.api.auth.forwarded_address).
            proxy_headers=False,
        )
        self._server = server = _EmbeddedServer(config)
        bound = socks[0].getsockname()[:2]
        try:
            if not workers:
                task_status.started((bound[0], bound[1]))
                await server.serve(sockets=socks)
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [])  # no socket of its own: what fronts hand over
                await server.ready.wait()
                self.fronts = ApiFronts(self.node, server, socks)
                await tg.start(self.fronts.run)
                task_status.started((bound[0], bound[1]))
        finally:
            for sock in socks:
                sock.close()
            self._done.set()

    async def shutdown(self) -> None:
        if self._server is not None:
            if self.fronts is not None:
                await self.fronts.stop()
            self._server.should_exit = True
            await self._done.wait()
