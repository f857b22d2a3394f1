"""Fixtures shared by every test directory: the anyio backend and agent-pack builders.

``packs`` builds contribution request bodies and :class:`~ian.chain.contributions.Contribution`
objects. Demo packs are back-tested for real; the two parameter sets below were picked because
the demo goal's thresholds accept the first and refuse the second (reward below min_reward).
Distinct packs with the same parameters differ only in ``metadata`` (part of the pack hash, not
of the back-test), so they all get the same verdict.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ian.chain.contributions import Contribution, make_contribution
from ian.chain.goals import DEMO_GOAL as DEMO_SPEC
from ian.chain.goals import GoalSpec
from ian.chain.state import ChainState, Outcome
from ian.identity import Identity
from ian.ledger.sequencer import build_block
from ian.storage.store import Store

DEMO_GOAL = "DEMO_TRADING_AGENT"
TRIVIAL_GOAL = "TRIVIAL_GOAL"

# A shell that starts the suite in the background (`make test &` in a script) hands it SIGINT
# ignored, and every process it starts inherits that: the tests that press Ctrl-C on an `ian`
# command would wait for it in vain. Take the default back; the processes started then get it too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ACCEPTED_DEMO_PARAMS: dict[str, Any] = {
    "strategy": "momentum",
    "lookback": 2,
    "threshold": 0.01,
    "position_size": 0.1,
}
REJECTED_DEMO_PARAMS: dict[str, Any] = {
    "strategy": "momentum",
    "lookback": 20,
    "threshold": 0.01,
    "position_size": 1.0,
}


class Packs:
    demo_goal = DEMO_GOAL
    trivial_goal = TRIVIAL_GOAL
    accepted_params = ACCEPTED_DEMO_PARAMS
    rejected_params = REJECTED_DEMO_PARAMS

    @staticmethod
    def raw(goal_id: str, n: int, params: dict[str, Any] | None) -> bytes:
        if goal_id == DEMO_GOAL:
            return json.dumps(params if params is not None else ACCEPTED_DEMO_PARAMS).encode()
        return f"trivial pack {n}".encode()

    def body(
        self,
        n: int = 0,
        *,
        goal_id: str = DEMO_GOAL,
        contributor: str | None = None,
        params: dict[str, Any] | None = None,
        seed: int = 7,
        version: str = "1.0",
    ) -> dict[str, Any]:
        """A valid request body; ``n`` makes the pack (and default contributor) distinct."""
        return {
            "goal_id": goal_id,
            "agent_pack": {
                "version": version,
                "parameters": base64.b64encode(self.raw(goal_id, n, params)).decode("ascii"),
                "metadata": {"n": n},
            },
            "contributor_id": contributor if contributor is not None else f"contributor-{n}",
            "seed": seed,
        }

    def contribution(
        self,
        n: int = 0,
        *,
        goal_id: str = DEMO_GOAL,
        contributor: str | None = None,
        params: dict[str, Any] | None = None,
        seed: int = 7,
    ) -> Contribution:
        return make_contribution(
            goal_id=goal_id,
            version="1.0",
            parameters=self.raw(goal_id, n, params),
            metadata={"n": n},
            contributor_id=contributor if contributor is not None else f"contributor-{n}",
            seed=seed,
        )


class Chain:
    """A store, an identity and the chain state, advanced with the sequencer's public steps.

    :meth:`commit` does what the sequencer's worker does for one batch: ``build_block`` on a
    fresh rollback point, ``Store.append_block``, then the new head.
    """

    def __init__(self, path: Path) -> None:
        self.specs = [DEMO_SPEC, GoalSpec(id=TRIVIAL_GOAL, evaluator="trivial")]
        self.identity = Identity.generate()
        self.store = Store(path)
        self.state = ChainState.genesis(self.specs)

    def commit(self, contributions: list[Contribution]) -> list[Outcome]:
        state = self.state
        state.begin()
        outcomes, block, entries = build_block(
            state, self.identity, contributions, store=self.store
        )
        if block is not None:
            self.store.append_block(block, entries)
            state.height, state.head_hash = block.height, block.hash
            state.head_timestamp_ms = block.header.timestamp_ms
        state.begin()
        return outcomes


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(tmp_path / "chain.sqlite")
    yield c
    c.store.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def packs() -> Packs:
    return Packs()
