"""An in-process node behind httpx's ASGI transport: the real app, store and sequencer.

``start_api(**overrides)`` opens a node on a fresh data dir (settings from ``load_settings`` with
an empty environment), runs its sequencer in the test's task group and returns an :class:`Api`.
Everything is closed at teardown in the node's own order: stop the sequencer, let it drain,
close the store and the lock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ian.api.app import asgi_app
from ian.chain.goals import GoalSpec
from ian.config import load_settings
from ian.node import Node

TRIVIAL_GOAL = "TRIVIAL_GOAL"
BASE_URL = "http://ian.test"


@dataclass
class Api:
    node: Node
    client: httpx.AsyncClient
    stack: AsyncExitStack
    app: Any = field(repr=False)

    async def client_from(self, host: str, port: int = 40000) -> httpx.AsyncClient:
        """A client whose requests come from ``host`` (the ASGI scope's client address)."""
        transport = httpx.ASGITransport(app=self.app, client=(host, port))
        return await self.stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url=BASE_URL)
        )

    async def contribute(self, body: Any, **kw: Any) -> httpx.Response:
        return await self.client.post("/api/v1/contribute", json=body, **kw)


StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_api(tmp_path: Path) -> AsyncIterator[StartApi]:
    async with AsyncExitStack() as stack:
        started = 0

        async def start(**overrides: Any) -> Api:
            nonlocal started
            started += 1
            values: dict[str, Any] = {
                "data_dir": tmp_path / f"node{started}",
                "api_host": "127.0.0.1",
                "api_port": 0,
                "p2p_port": 0,
                "ws_port": 0,
                "goals": [
                    GoalSpec(
                        id=TRIVIAL_GOAL,
                        name="Trivial goal",
                        description="hash-based metrics",
                        evaluator="trivial",
                    )
                ],
            }
            values.update(overrides)
            settings = load_settings(env={}, overrides=values)
            node = Node.open(settings)
            stack.callback(node.close)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(node.sequencer.run)
            stack.callback(node.sequencer.close)  # runs first: the task group then drains
            p2p_tasks = await stack.enter_async_context(anyio.create_task_group())
            await p2p_tasks.start(node.p2p.run)
            stack.callback(p2p_tasks.cancel_scope.cancel)
            app = asgi_app(node)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
            )
            return Api(node=node, client=client, stack=stack, app=app)

        yield start


@pytest.fixture
async def api(start_api: StartApi) -> Api:
    return await start_api()


@pytest.fixture
def restore_log_level() -> Iterator[None]:
    names = ("ian", "uvicorn", "uvicorn.error")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response is a JSON error of the contract's shape; returns its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture
def error_of() -> Callable[..., dict]:
    return assert_error
