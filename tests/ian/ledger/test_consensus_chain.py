"""Chain blocks as consensus payloads, and where applying resumes after a restore."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import TRIVIAL_GOAL, Chain, Packs

from ian.chain.blocks import Block as ChainBlock
from ian.chain.blocks import InvalidBlockError
from ian.chain.state import ChainState
from ian.consensus import Block, BlockKind, DurableState
from ian.consensus.log import ListColdLog
from ian.errors import EvaluationError
from ian.identity import Identity
from ian.ledger.block_apply import apply_blocks
from ian.ledger.consensus_chain import ChainBridge, applied_mark, block_from_payload, payload_of
from ian.storage.store import Store

CHAIN = "cd" * 32


def chain_blocks(chain: Chain, packs: Packs, n: int) -> list[ChainBlock]:
    for i in range(n):
        chain.commit([packs.contribution(i, goal_id=TRIVIAL_GOAL)])
    return chain.store.blocks(1, n, max_bytes=1 << 30)


def consensus_log(payloads: list[bytes | None]) -> list[Block]:
    """A log of data blocks (None: a leader's empty first block of its term)."""
    out: list[Block] = []
    parent = b"\0" * 32
    for height, payload in enumerate(payloads, start=1):
        kind = BlockKind.LEADER_START if payload is None else BlockKind.DATA
        b = Block.build(
            CHAIN, height=height, term=1, parent_hash=parent, kind=kind, payload=payload or b""
        )
        out.append(b)
        parent = b.hash
    return out


def test_a_chain_block_survives_the_payload_round_trip(chain: Chain, packs: Packs) -> None:
    [block] = chain_blocks(chain, packs, 1)
    again = block_from_payload(payload_of(block))
    assert again == block
    with pytest.raises(InvalidBlockError, match="not a chain block"):
        block_from_payload(b'{"header": 1}')
    with pytest.raises(InvalidBlockError, match="not a chain block"):
        block_from_payload(b"\xff")


def _mark(log: list[Block], applied: int, chain_height: int, base: int = 0) -> int:
    """applied_mark on a state holding ``log`` from ``base`` up (below it: a cold log)."""
    cold = ListColdLog(log, {}) if base else None
    state = DurableState(log=log[base:], applied_height=applied, base=base, cold=cold)
    return applied_mark(state, chain_height)


def test_applying_resumes_below_every_block_the_store_lacks(chain: Chain, packs: Packs) -> None:
    blocks = chain_blocks(chain, packs, 3)
    # consensus heights: 1 leader start, 2-4 chain blocks 1-3, 5 leader start
    log = consensus_log([None, *(payload_of(b) for b in blocks), None])
    for base in (0, 3):  # all in memory; heights 1-3 only on disk
        assert _mark(log, 5, 3, base) == 5  # the store has everything: unchanged
        assert _mark(log, 5, 1, base) == 2  # restored to chain height 1
        assert _mark(log, 5, 0, base) == 1
        assert _mark(log, 3, 3, base) == 3  # the store ahead: applied again by hash
        assert _mark(log, 9, 3, base) == 5  # a mark beyond the log is clamped
    garbage = consensus_log([b"not a block", payload_of(blocks[0])])
    assert _mark(garbage, 2, chain_height=0) == 1


class _FailingPool:
    """An evaluator whose workers always fail (as after two dead workers on one batch)."""

    calls = 0

    def evaluate(self, goals, contributions):
        self.calls += 1
        raise EvaluationError("evaluation workers failed twice")


def test_committed_blocks_are_applied_in_process_when_the_workers_fail(
    chain: Chain, packs: Packs, tmp_path: Path
) -> None:
    blocks = chain_blocks(chain, packs, 3)
    follower_state = ChainState.genesis(chain.specs)
    follower_store = Store(tmp_path / "follower.sqlite")
    pool = _FailingPool()
    bridge = ChainBridge(
        state=follower_state,
        store=follower_store,
        identity=Identity.generate(),
        driver=None,  # type: ignore[arg-type]  # not used by applying
        on_applied=lambda block: None,
        evaluator=pool,
    )
    signer = {chain.identity.node_id: chain.identity.public_key}
    written = bridge._apply_payloads([(payload_of(b), signer, i + 2) for i, b in enumerate(blocks)])
    assert pool.calls == 1
    assert [b.hash for b in written] == [b.hash for b in blocks]
    assert bridge.skipped_blocks == 0  # nothing skipped: the workers' failure decides nothing
    assert follower_state.goals[TRIVIAL_GOAL].roots() == chain.state.goals[TRIVIAL_GOAL].roots()
    follower_store.close()


def test_failed_evaluation_changes_nothing(chain: Chain, packs: Packs, tmp_path: Path) -> None:
    """apply_blocks evaluates before it touches the state: a failure leaves it as it was."""
    blocks = chain_blocks(chain, packs, 2)
    state = ChainState.genesis(chain.specs)
    store = Store(tmp_path / "f.sqlite")
    before = {g: s.roots() for g, s in state.goals.items()}
    with pytest.raises(EvaluationError):
        apply_blocks(
            state, store, blocks, sequencer=chain.identity.node_id, evaluator=_FailingPool()
        )
    assert {g: s.roots() for g, s in state.goals.items()} == before
    assert (state.height, store.head()[0]) == (0, 0)
    assert apply_blocks(state, store, blocks, sequencer=chain.identity.node_id) == (2, None)
    store.close()
