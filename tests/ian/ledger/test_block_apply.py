from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgspec
import pytest

from ian.chain.blocks import Block, InvalidBlockError
from ian.chain.contributions import make_contribution, wire_size_bound
from ian.chain.goals import DEMO_GOAL, GoalSpec, Thresholds
from ian.chain.state import ChainState
from ian.identity import Identity
from ian.ledger.block_apply import apply_block, apply_blocks
from ian.ledger.sequencer import build_block
from ian.p2p.errors import InvalidMessage
from ian.p2p.messages import (
    BlockDoc,
    block_from_doc,
    block_to_doc,
    decode_block,
    doc_to_data,
    encode_block,
)
from ian.storage.store import Store

TRIVIAL = GoalSpec(
    id="TRIVIAL", evaluator="trivial", thresholds=Thresholds(), leaderboard_capacity=5
)
SPECS = [DEMO_GOAL, TRIVIAL]


def _contribution(i: int, goal: str = "TRIVIAL"):
    return make_contribution(
        goal_id=goal,
        version="1",
        parameters=f"params-{i}".encode(),
        metadata={"i": i},
        contributor_id=f"c{i % 3}",
        seed=i,
    )


def _sequence(tmp_path: Path, n_blocks: int, per_block: int = 4) -> tuple[Identity, list[Block]]:
    """Make a chain on a 'sequencer' store and return its blocks as peers would receive them."""
    ident = Identity.generate()
    state = ChainState.genesis(SPECS)
    store = Store(tmp_path / "seq.sqlite")
    blocks = []
    for b in range(n_blocks):
        state.begin()
        cs = [_contribution(b * per_block + k) for k in range(per_block)]
        _, block, entries = build_block(state, ident, cs, store=store)
        assert block is not None
        store.append_block(block, entries)
        state.height, state.head_hash = block.height, block.hash
        state.head_timestamp_ms = block.header.timestamp_ms
        blocks.append(block)
    store.close()
    # Round-trip through the wire form, as a follower gets them.
    return ident, [decode_block(encode_block(b)) for b in blocks]


def _follower(tmp_path: Path) -> tuple[ChainState, Store]:
    return ChainState.genesis(SPECS), Store(tmp_path / "follower.sqlite")


def test_follower_reaches_the_same_roots(tmp_path: Path) -> None:
    ident, blocks = _sequence(tmp_path, 5)
    state, store = _follower(tmp_path)
    for block in blocks:
        apply_block(state, store, block, sequencer=ident.node_id)
    assert state.height == 5
    assert state.head_hash == blocks[-1].hash
    assert state.goals["TRIVIAL"].roots() == blocks[-1].header.goals["TRIVIAL"]
    # And the follower can serve the same blocks on to others.
    served = store.blocks(1, 10, max_bytes=1 << 30)
    assert [b.hash for b in served] == [b.hash for b in blocks]
    assert [len(b.entries) for b in served] == [4] * 5


def _resign(block: Block, ident: Identity, **header_changes) -> Block:
    header = dataclasses.replace(block.header, **header_changes)
    h = header.hash()
    return Block(header=header, hash=h, signature=ident.sign(h), entries=block.entries)


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("signature", "bad signature"),
        ("other_sequencer", "not the sequencer"),
        ("parent", "parent"),
        ("root", "roots of TRIVIAL differ"),
        ("height", "does not follow"),
        ("entries", "entries hash"),
        ("unknown_goal", "unknown goal"),
    ],
)
def test_bad_blocks_are_rejected_and_nothing_changes(
    tmp_path: Path, tamper: str, message: str
) -> None:
    ident, blocks = _sequence(tmp_path, 2)
    state, store = _follower(tmp_path)
    apply_block(state, store, blocks[0], sequencer=ident.node_id)
    before = (state.height, state.head_hash, state.goals["TRIVIAL"].roots())
    good = blocks[1]
    h = good.header
    if tamper == "signature":
        bad = dataclasses.replace(good, signature=bytes(64))
    elif tamper == "other_sequencer":
        other = Identity.generate()
        bad = _resign(good, other, sequencer=other.node_id, sequencer_key=other.public_key)
    elif tamper == "parent":
        bad = _resign(good, ident, parent_hash=bytes(32))
    elif tamper == "root":
        roots = dataclasses.replace(h.goals["TRIVIAL"], log_root=bytes(32))
        bad = _resign(good, ident, goals={"TRIVIAL": roots})
    elif tamper == "height":
        bad = _resign(good, ident, height=5)
    elif tamper == "entries":
        bad = dataclasses.replace(good, entries=good.entries[:-1])
    else:
        stranger = dataclasses.replace(good.entries[0], goal_id="NOPE")
        bad = dataclasses.replace(good, entries=(stranger, *good.entries[1:]))
    with pytest.raises(InvalidBlockError, match=message):
        apply_block(state, store, bad, sequencer=ident.node_id)
    assert (state.height, state.head_hash, state.goals["TRIVIAL"].roots()) == before
    assert store.head()[0] == 1
    # The genuine block still applies afterwards.
    apply_block(state, store, good, sequencer=ident.node_id)
    assert state.height == 2


def test_replayed_block_is_a_duplicate(tmp_path: Path) -> None:
    ident, blocks = _sequence(tmp_path, 1)
    state, store = _follower(tmp_path)
    apply_block(state, store, blocks[0], sequencer=ident.node_id)
    replay = _resign(
        blocks[0],
        ident,
        height=2,
        parent_hash=blocks[0].hash,
        timestamp_ms=blocks[0].header.timestamp_ms,
    )
    with pytest.raises(InvalidBlockError, match="duplicate pack"):
        apply_block(state, store, replay, sequencer=ident.node_id)


def test_block_whose_header_was_changed_is_rejected(tmp_path: Path) -> None:
    ident, blocks = _sequence(tmp_path, 1)
    state, store = _follower(tmp_path)
    forged = dataclasses.replace(
        blocks[0], header=dataclasses.replace(blocks[0].header, timestamp_ms=1)
    )
    with pytest.raises(InvalidBlockError, match="hash does not match"):
        apply_block(state, store, forged, sequencer=ident.node_id)


def test_malformed_wire_entry(tmp_path: Path) -> None:
    _, blocks = _sequence(tmp_path, 1)
    doc = doc_to_data(block_to_doc(blocks[0]))
    doc["entries"][0]["agent_pack"]["parameters"] = "***"
    with pytest.raises(InvalidMessage, match="invalid contribution"):
        block_from_doc(msgspec.json.decode(json.dumps(doc), type=BlockDoc))


def test_served_ranges_fit_the_byte_budget_but_hold_at_least_one_block(tmp_path: Path) -> None:
    ident, blocks = _sequence(tmp_path, 6)
    state, store = _follower(tmp_path)
    for block in blocks:
        apply_block(state, store, block, sequencer=ident.node_id)
    one_block = wire_size_bound(len(b"params-00"), len('{"i":0}')) * 4
    assert len(store.blocks(1, 64, max_bytes=1)) == 1  # never nothing
    got = store.blocks(1, 64, max_bytes=3 * one_block + 500)
    assert 2 <= len(got) <= 3 and [b.height for b in got] == list(range(1, len(got) + 1))
    assert len(store.blocks(1, 64, max_bytes=1 << 30)) == 6


def test_a_fetched_batch_applies_in_one_go_and_stops_at_the_first_bad_block(
    tmp_path: Path,
) -> None:
    ident, blocks = _sequence(tmp_path, 5)
    state, store = _follower(tmp_path)
    bad = dataclasses.replace(blocks[3], signature=bytes(64))
    applied, error = apply_blocks(state, store, [*blocks[:3], bad, blocks[4]], sequencer=None)
    assert applied == 3 and isinstance(error, InvalidBlockError)
    assert state.height == store.head()[0] == 3 and state.head_hash == blocks[2].hash
    assert state.goals["TRIVIAL"].roots() == blocks[2].header.goals["TRIVIAL"]
    applied, error = apply_blocks(state, store, blocks[3:], sequencer=ident.node_id)
    assert (applied, error) == (2, None) and state.height == 5


def test_the_head_moves_only_once_the_store_holds_the_blocks(tmp_path: Path) -> None:
    """The event loop reads the head while blocks are applied in a worker thread, and must
    find the blocks of the height it reads in the store."""
    ident, blocks = _sequence(tmp_path, 3)
    state, store = _follower(tmp_path)
    write = store.append_blocks
    seen: list[tuple[int, int]] = []

    def watched(done):  # the real write, with what the head says while it runs
        seen.append((state.height, store.head()[0]))
        write(done)

    store.append_blocks = watched  # type: ignore[method-assign]
    applied, error = apply_blocks(state, store, blocks, sequencer=ident.node_id)
    assert (applied, error) == (3, None)
    assert seen == [(0, 0)]
    assert (state.height, state.head_hash) == (3, blocks[-1].hash) and store.head()[0] == 3


def test_a_pack_repeated_across_blocks_of_one_batch_is_a_duplicate(tmp_path: Path) -> None:
    ident, blocks = _sequence(tmp_path, 1)
    state, store = _follower(tmp_path)
    replay = _resign(
        blocks[0], ident, height=2, parent_hash=blocks[0].hash,
        timestamp_ms=blocks[0].header.timestamp_ms,
    )  # fmt: skip
    applied, error = apply_blocks(state, store, [blocks[0], replay], sequencer=ident.node_id)
    assert applied == 1 and error is not None and "duplicate pack" in str(error)
    assert store.head()[0] == 1


def test_a_batch_whose_blocks_touch_different_goals_applies_whole(tmp_path: Path) -> None:
    ident = Identity.generate()
    state = ChainState.genesis(SPECS)
    source = Store(tmp_path / "seq.sqlite")
    blocks = []
    for b, goal in enumerate(["TRIVIAL", "DEMO_TRADING_AGENT", "TRIVIAL"]):
        c = _contribution(b, goal)
        if goal != "TRIVIAL":  # a demo pack the goal accepts
            c = make_contribution(
                goal_id=goal,
                version="1",
                parameters=b'{"strategy":"breakout","lookback":20,"threshold":0.01,'
                b'"position_size":0.5}',
                metadata={},
                contributor_id="d",
                seed=b,
            )
        state.begin()
        _, block, entries = build_block(state, ident, [c], store=source)
        assert block is not None, goal
        source.append_block(block, entries)
        state.height, state.head_hash = block.height, block.hash
        state.head_timestamp_ms = block.header.timestamp_ms
        blocks.append(block)
    follower, store = _follower(tmp_path)
    assert apply_blocks(follower, store, blocks, sequencer=ident.node_id) == (3, None)
    assert {g: s.roots() for g, s in follower.goals.items()} == {
        g: s.roots() for g, s in state.goals.items()
    }
