"""``Node.run(freeze_gc=True)`` (what ``ian node run`` asks for): once started, the objects made
during start-up are kept out of the cyclic garbage collector's full collections."""

from __future__ import annotations

import gc
from pathlib import Path

import anyio
import pytest

from ian.config import load_settings
from ian.node import Node

pytestmark = pytest.mark.anyio


async def frozen_while_serving(root: Path, *, freeze_gc: bool) -> int:
    """How many objects the collector had frozen once ``Node.run`` said it was serving."""
    node = Node.open(
        load_settings(
            env={},
            overrides={
                "data_dir": root,
                "api_host": "127.0.0.1",
                "api_port": 0,
                "p2p_host": "127.0.0.1",
                "p2p_port": 0,
                "ws_port": 0,
            },
        )
    )
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: node.run(
                handle_signals=False, freeze_gc=freeze_gc, task_status=task_status
            )
        )
        frozen = gc.get_freeze_count()
        node.request_stop()
    return frozen


async def test_a_node_run_for_its_own_process_freezes_what_start_up_made(
    tmp_path: Path,
) -> None:
    gc.unfreeze()
    try:
        assert await frozen_while_serving(tmp_path / "shared", freeze_gc=False) == 0
        # Everything alive once the node serves: the app, its schemas, the chain state.
        assert await frozen_while_serving(tmp_path / "own", freeze_gc=True) > 10_000
    finally:
        gc.unfreeze()  # this test process runs many nodes
