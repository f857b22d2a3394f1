"""The sequencer: block building, group commit, and rollback when the store write fails."""

from __future__ import annotations

import hashlib
import sqlite3

import anyio
import pytest

from ian.chain.blocks import GENESIS_HASH
from ian.chain.evaluation import evaluate_batch
from ian.chain.state import Outcome
from ian.errors import UnavailableError
from ian.identity import verify_signature
from ian.ledger.recovery import load_chain_state, verify_store
from ian.ledger.sequencer import (
    BatchResult,
    Sequencer,
    build_block,
    evaluate_new,
    seal_block,
    stored_packs,
)

DEMO = "DEMO_TRADING_AGENT"
TRIVIAL = "TRIVIAL_GOAL"

FAIL_TRIGGER = (
    "CREATE TRIGGER fail_blocks BEFORE INSERT ON blocks "
    "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"
)


def execute_sql(path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for s in statements:
            conn.execute(s)
    finally:
        conn.close()


def roots(state) -> dict:
    return {gid: g.roots() for gid, g in state.goals.items()}


# -- build_block ---------------------------------------------------------------------------------


def test_build_block_signs_and_links_the_accepted_entries(chain, packs) -> None:
    batch = [
        packs.contribution(1),
        packs.contribution(2, params=packs.rejected_params),
        packs.contribution(3, goal_id=TRIVIAL),
    ]
    chain.state.begin()
    outcomes, block, entries = build_block(
        chain.state, chain.identity, batch, store=chain.store, now_ms=lambda: 1234
    )
    assert [o.accepted for o in outcomes] == [True, False, True]
    assert outcomes[1].rejection_type == "threshold"
    assert block is not None
    h = block.header
    assert h.height == 1 and h.parent_hash == GENESIS_HASH and h.timestamp_ms == 1234
    assert h.sequencer == chain.identity.node_id
    assert h.sequencer_key == chain.identity.public_key
    assert block.hash == h.hash()
    assert verify_signature(chain.identity.public_key, block.signature, block.hash)
    assert block.entries == (batch[0], batch[2])
    assert [e.contribution for e in entries] == [batch[0], batch[2]]
    assert (
        h.entries_hash
        == hashlib.sha256(outcomes[0].contribution_hash + outcomes[2].contribution_hash).digest()
    )
    assert set(h.goals) == {DEMO, TRIVIAL}
    assert h.goals[DEMO] == chain.state.goals[DEMO].roots()
    assert h.goals[DEMO].log_size == 1
    assert [o.log_index for o in outcomes] == [0, None, 0]


def test_build_block_without_accepted_entries_makes_no_block(chain, packs) -> None:
    before = roots(chain.state)
    chain.state.begin()
    outcomes, block, entries = build_block(
        chain.state, chain.identity, [packs.contribution(1, params=packs.rejected_params)]
    )
    assert block is None and entries == []
    assert outcomes[0].accepted is False
    assert roots(chain.state) == before


def test_build_block_refuses_duplicates_in_batch_and_store(chain, packs) -> None:
    chain.commit([packs.contribution(1)])
    chain.state.begin()
    outcomes, block, _ = build_block(
        chain.state,
        chain.identity,
        [
            packs.contribution(1, contributor="late"),  # already in the store
            packs.contribution(2),
            packs.contribution(2, contributor="twin"),  # same pack earlier in this batch
        ],
        store=chain.store,
    )
    assert [o.accepted for o in outcomes] == [False, True, False]
    assert outcomes[0].rejection_type == outcomes[2].rejection_type == "duplicate"
    assert block is not None and len(block.entries) == 1
    assert block.header.height == 2


class CountingEvaluator:
    """A goal's real evaluator, recording the parameters of every pack it evaluates (in-line
    evaluations by ``execute`` included)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.costly = inner.costly
        self.evaluated: list[bytes] = []

    def check(self, parameters, metadata):
        return self.inner.check(parameters, metadata)

    def evaluate(self, parsed):
        self.evaluated.append(parsed if isinstance(parsed, bytes) else repr(parsed).encode())
        return self.inner.evaluate(parsed)


class CountingBatchEvaluator:
    """A BatchEvaluator (evaluation in this process) recording what it was given."""

    def __init__(self) -> None:
        self.given: list = []

    def evaluate(self, goals, contributions):
        self.given.extend(contributions)
        return evaluate_batch(goals, contributions)


def test_seal_block_evaluates_only_what_can_be_accepted(chain, packs) -> None:
    counting = CountingEvaluator(chain.state.goals[TRIVIAL].evaluator)
    chain.state.goals[TRIVIAL].evaluator = counting
    batches = CountingBatchEvaluator()
    first = seal_block(
        chain.state,
        chain.store,
        chain.identity,
        [packs.contribution(1, goal_id=TRIVIAL)],
        evaluator=batches,
    )
    assert first.outcomes[0].accepted and len(counting.evaluated) == 1
    batch = [
        packs.contribution(1, goal_id=TRIVIAL, contributor="late"),  # stored: a duplicate
        packs.contribution(2, goal_id=TRIVIAL),
        packs.contribution(2, goal_id=TRIVIAL, contributor="twin"),  # repeated in the batch
        packs.contribution(3, params=packs.rejected_params),  # refused by the thresholds...
        packs.contribution(3, params=packs.rejected_params, contributor="again"),  # ...twice
    ]
    demo = CountingEvaluator(chain.state.goals[DEMO].evaluator)
    chain.state.goals[DEMO].evaluator = demo
    result = seal_block(chain.state, chain.store, chain.identity, batch, evaluator=batches)
    got = [(o.accepted, o.rejection_type) for o in result.outcomes]
    assert got == [
        (False, "duplicate"),
        (True, None),
        (False, "duplicate"),
        (False, "threshold"),
        (False, "threshold"),
    ]
    assert result.outcomes[3].to_result() == result.outcomes[4].to_result()
    # Only the second and the fourth were evaluated, each once, and in the batch evaluator.
    assert counting.evaluated == [b"trivial pack 1", b"trivial pack 2"]
    assert len(demo.evaluated) == 1
    assert [c.contributor_id for c in batches.given] == [
        packs.contribution(1, goal_id=TRIVIAL).contributor_id,
        batch[1].contributor_id,
        batch[3].contributor_id,
    ]
    assert result.block is not None and result.block.entries == (batch[1],)
    # A batch of nothing but duplicates: nothing evaluated, no block.
    again = seal_block(chain.state, chain.store, chain.identity, batch[:3], evaluator=batches)
    assert [o.rejection_type for o in again.outcomes] == ["duplicate"] * 3
    assert again.block is None and len(counting.evaluated) == 2 and len(batches.given) == 3


def test_evaluate_new_builds_the_block_evaluating_everything_would(chain, packs) -> None:
    """Same outcomes and block as evaluating the whole batch, whatever the duplicates known
    beforehand: exact, none, out of date, or wrongly naming packs that are not duplicates."""
    chain.commit([packs.contribution(1), packs.contribution(5, goal_id=TRIVIAL)])
    batch = [
        packs.contribution(1, contributor="late"),
        packs.contribution(2),
        packs.contribution(2, contributor="twin"),
        packs.contribution(3, params=packs.rejected_params),
        packs.contribution(3, params=packs.rejected_params, contributor="again"),
        packs.contribution(4, goal_id=TRIVIAL),
        packs.contribution(5, goal_id=TRIVIAL, contributor="late"),
        packs.contribution(4, goal_id=TRIVIAL, contributor="twin"),
    ]
    goals = chain.state.goals

    def build(evaluations, stored=None):
        chain.state.begin()
        try:
            outcomes, block, _ = build_block(
                chain.state,
                chain.identity,
                batch,
                store=chain.store,
                now_ms=lambda: 99,
                evaluations=evaluations,
                stored=stored,
            )
            return [o.to_result() for o in outcomes], block, roots(chain.state)
        finally:
            chain.state.rollback()

    ref_outcomes, ref_block, ref_roots = build(evaluate_batch(goals, batch))
    assert ref_block is not None
    stored = stored_packs(chain.store, batch)
    assert stored == {DEMO: {batch[0].pack_hash}, TRIVIAL: {batch[6].pack_hash}}
    every_pack = {DEMO: {c.pack_hash for c in batch}, TRIVIAL: {c.pack_hash for c in batch}}
    for known in (stored, {}, every_pack):
        evaluations = evaluate_new(goals, batch, known)
        if known is every_pack:
            assert evaluations == [None] * len(batch)  # everything evaluated in-line
        else:
            assert (evaluations[0] is None) == bool(known)
            assert evaluations[2] is evaluations[1] and evaluations[4] is evaluations[3]
        for given in (None, stored):
            outcomes, block, after = build(evaluations, given)
            assert outcomes == ref_outcomes
            assert block is not None and block.hash == ref_block.hash
            assert block.signature == ref_block.signature
            assert after == ref_roots


def test_build_block_timestamps_never_go_backwards(chain, packs) -> None:
    chain.commit([packs.contribution(1)])
    last = chain.state.head_timestamp_ms
    chain.state.begin()
    _, block, _ = build_block(
        chain.state, chain.identity, [packs.contribution(2)], now_ms=lambda: 5
    )
    assert block is not None and block.header.timestamp_ms == last
    assert block.header.parent_hash == chain.state.head_hash


# -- the running sequencer -----------------------------------------------------------------------


@pytest.fixture
async def running(chain):
    batches: list[BatchResult] = []
    seq = Sequencer(
        chain.state,
        chain.store,
        chain.identity,
        on_batch=lambda result, seconds: batches.append(result),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(seq.run)
        yield seq, batches
        seq.close()


@pytest.mark.anyio
async def test_store_failure_rolls_back_and_answers_unavailable(running, chain, packs) -> None:
    seq, batches = running
    first = await seq.submit(packs.contribution(1))
    assert first.accepted and first.log_index == 0
    before = roots(chain.state)
    head = (chain.state.height, chain.state.head_hash)
    execute_sql(chain.store.path, FAIL_TRIGGER)

    with pytest.raises(UnavailableError) as info:
        await seq.submit(packs.contribution(2))
    assert info.value.http_status == 503
    assert "simulated disk failure" in info.value.message
    assert roots(chain.state) == before
    assert (chain.state.height, chain.state.head_hash) == head
    assert len(batches) == 1  # the failed batch was not published
    assert chain.store.log_size(DEMO) == 1
    assert chain.store.head()[0] == 1

    execute_sql(chain.store.path, "DROP TRIGGER fail_blocks")
    again = await seq.submit(packs.contribution(2))
    assert again.accepted and again.log_index == 1  # the failed attempt left no trace
    assert chain.state.height == 2
    report = verify_store(chain.store, chain.specs)
    assert report.ok, report.problem
    assert report.roots[DEMO] == chain.state.goals[DEMO].roots().to_doc()


@pytest.mark.anyio
async def test_whole_batch_fails_together(running, chain, packs) -> None:
    seq, _ = running
    execute_sql(chain.store.path, FAIL_TRIGGER)
    before = roots(chain.state)
    errors: list[BaseException] = []

    async def send(n: int) -> None:
        try:
            await seq.submit(packs.contribution(n, goal_id=TRIVIAL))
        except UnavailableError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(send, n)
    assert len(errors) == 20
    assert roots(chain.state) == before
    assert chain.state.height == 0


@pytest.mark.anyio
async def test_closed_store_answers_unavailable_and_keeps_state(running, chain, packs) -> None:
    seq, _ = running
    await seq.submit(packs.contribution(1))
    before = roots(chain.state)
    chain.store.close()
    with pytest.raises(UnavailableError):
        await seq.submit(packs.contribution(2))
    assert roots(chain.state) == before
    assert chain.state.height == 1


@pytest.mark.anyio
async def test_close_drains_queued_submissions(chain, packs) -> None:
    seq = Sequencer(chain.state, chain.store, chain.identity)
    results: dict[int, object] = {}

    async def send(n: int) -> None:
        results[n] = await seq.submit(packs.contribution(n, goal_id=TRIVIAL))

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(send, n)
        await anyio.wait_all_tasks_blocked()  # all 30 queued, none processed yet
        seq.close()
        with pytest.raises(UnavailableError, match="shutting down"):
            await seq.submit(packs.contribution(99, goal_id=TRIVIAL))
        tg.start_soon(seq.run)
    assert len(results) == 30
    assert all(r.accepted for r in results.values())
    assert chain.state.height == 1  # one batch: everything queued before close
    assert load_chain_state(chain.store, chain.specs).goals[TRIVIAL].roots() == (
        chain.state.goals[TRIVIAL].roots()
    )


@pytest.mark.anyio
async def test_blocks_are_sealed_before_they_outgrow_a_frame(chain, packs) -> None:
    """Submissions queued together still make several blocks when their wire size would not
    fit one P2P frame, and nothing is lost or reordered between them."""
    each = packs.contribution(0, goal_id=TRIVIAL).wire_size()
    batches: list[BatchResult] = []
    seq = Sequencer(
        chain.state,
        chain.store,
        chain.identity,
        max_block_bytes=3 * each,
        on_batch=lambda result, seconds: batches.append(result),
    )
    results = {}

    async def submit(i: int) -> None:
        results[i] = await seq.submit(packs.contribution(i, goal_id=TRIVIAL))

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as submitters:
            for i in range(8):  # all queued before the sequencer runs
                submitters.start_soon(submit, i)
            await tg.start(seq.run)
        seq.close()
    sizes = [len(b.block.entries) for b in batches if b.block is not None]
    assert sum(sizes) == 8 and max(sizes) <= 3 and len(sizes) >= 3
    assert sorted(r.log_index for r in results.values()) == list(range(8))


@pytest.mark.anyio
async def test_queue_is_bounded_in_bytes(chain, packs) -> None:
    """Waiting submissions may hold at most 4 blocks' worth of bytes; beyond that: 503."""
    one = packs.contribution(0, goal_id=TRIVIAL)
    seq = Sequencer(chain.state, chain.store, chain.identity, max_block_bytes=one.wire_size())
    results: list[object] = []

    async def submit(i: int) -> None:
        try:
            results.append(await seq.submit(packs.contribution(i, goal_id=TRIVIAL)))
        except UnavailableError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as submitters:
            for i in range(6):  # queued before the sequencer takes any
                submitters.start_soon(submit, i)
            await anyio.wait_all_tasks_blocked()
            await tg.start(seq.run)
        seq.close()
    refused = [r for r in results if isinstance(r, UnavailableError)]
    assert len(refused) == 2 and all(r.retry_after > 0 for r in refused)
    assert sum(1 for r in results if not isinstance(r, UnavailableError)) == 4


class HeldCommits:
    """A leader's ``commit`` that records each batch and returns only when the test lets it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release: list[anyio.Event] = []
        self.called = anyio.Event()
        self.held = True

    async def __call__(self, contributions) -> BatchResult:
        self.batches.append([c.seed for c in contributions])
        go = anyio.Event()
        self.release.append(go)
        self.called.set()
        self.called = anyio.Event()
        if self.held:  # (the sequencer's commits are shielded: a failed test must not hang)
            await go.wait()
        outcomes = [
            Outcome(accepted=False, goal_id=c.goal_id, reason="test") for c in contributions
        ]
        return BatchResult(outcomes=outcomes, block=None)

    async def batch(self, i: int) -> list[int]:
        """The ``i``-th batch handed to ``commit``, once it is."""
        with anyio.fail_after(5):
            while len(self.batches) <= i:
                await self.called.wait()
        return self.batches[i]

    def open(self) -> None:
        """Every commit held returns, and the next ones at once."""
        self.held = False
        for go in self.release:
            go.set()


async def _leader_batches(chain, packs, *, linger: float) -> tuple[list[list[int]], bool]:
    """Submissions 1; 2-4 while 1 commits; then 5 alone, and 6-7 only once the sequencer has had
    every chance to take 5 on its own. The batches, and whether 5's batch was taken before 6
    was sent."""
    commits = HeldCommits()
    seq = Sequencer(chain.state, chain.store, chain.identity, commit=commits, linger=linger)
    answered: list[int] = []

    async def submit(seed: int) -> None:
        await seq.submit(packs.contribution(seed, goal_id=TRIVIAL, seed=seed))
        answered.append(seed)

    async with anyio.create_task_group() as tg:
        tg.start_soon(_released_at_the_end, commits)
        await tg.start(seq.run)
        tg.start_soon(submit, 1)
        assert await commits.batch(0) == [1]
        for seed in (2, 3, 4):
            tg.start_soon(submit, seed)
        await anyio.wait_all_tasks_blocked()  # queued behind the block in flight
        commits.release[0].set()
        assert await commits.batch(1) == [2, 3, 4]
        commits.release[1].set()
        while len(answered) < 4:
            await anyio.wait_all_tasks_blocked()
        tg.start_soon(submit, 5)
        await anyio.wait_all_tasks_blocked()
        taken_alone = len(commits.batches) == 3
        tg.start_soon(submit, 6)
        tg.start_soon(submit, 7)
        await anyio.wait_all_tasks_blocked()
        commits.open()
        while len(answered) < 7:
            await anyio.wait_all_tasks_blocked()
        seq.close()
        tg.cancel_scope.cancel()
    return commits.batches, taken_alone


async def _released_at_the_end(commits: HeldCommits) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        commits.open()


@pytest.mark.anyio
async def test_a_leader_under_load_waits_for_as_many_as_its_last_batch(chain, packs) -> None:
    """With several authorities, after a batch of 3 the next one waits (up to the linger) for 3
    submissions: 5 is not cut alone just before 6 and 7 arrive. After a batch of one (light
    load) nothing waits: 1 went at once."""
    batches, taken_alone = await _leader_batches(chain, packs, linger=3.0)
    assert batches == [[1], [2, 3, 4], [5, 6, 7]]
    assert not taken_alone


@pytest.mark.anyio
async def test_without_linger_the_leader_cuts_the_batch_at_once(chain, packs) -> None:
    batches, taken_alone = await _leader_batches(chain, packs, linger=0.0)
    assert batches == [[1], [2, 3, 4], [5], [6, 7]]
    assert taken_alone


@pytest.mark.anyio
async def test_a_lingering_batch_goes_when_the_wait_is_over_or_the_sequencer_closes(
    chain, packs
) -> None:
    """Fewer submissions than the last batch held: the batch goes at the end of the linger; and
    closing the sequencer ends the wait at once (the batch is still committed and answered)."""
    for linger, close in ((0.05, False), (60.0, True)):
        commits = HeldCommits()
        seq = Sequencer(chain.state, chain.store, chain.identity, commit=commits, linger=linger)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_released_at_the_end, commits)
            await tg.start(seq.run)
            seq._last_batch = 3  # as after a batch of 3
            tg.start_soon(seq.submit, packs.contribution(1, goal_id=TRIVIAL, seed=1))
            await anyio.wait_all_tasks_blocked()
            if close:
                seq.close()
            assert await commits.batch(0) == [1]
            commits.open()
            seq.close()
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_one_authority_under_load_seals_the_batch_once_it_has_filled(chain, packs) -> None:
    """Sealing here too: after a block of 3, the next one waits (up to the linger) for 3."""
    seq = Sequencer(chain.state, chain.store, chain.identity, linger=3.0)
    async with anyio.create_task_group() as tg:
        await tg.start(seq.run)
        seq._last_batch = 3  # as after a block of 3
        tg.start_soon(seq.submit, packs.contribution(1, goal_id=TRIVIAL))
        await anyio.wait_all_tasks_blocked()
        assert chain.state.height == 0  # waiting for two more
        async with anyio.create_task_group() as more:
            more.start_soon(seq.submit, packs.contribution(2, goal_id=TRIVIAL))
            more.start_soon(seq.submit, packs.contribution(3, goal_id=TRIVIAL))
        seq.close()
    assert chain.state.height == 1
    assert chain.store.log_size(TRIVIAL) == 3
