"""The SQLite store: schema versions, atomic block writes, reads, truncation."""

from __future__ import annotations

import json
import sqlite3

import pytest
from tests.support.stores import as_schema_1, indexes

from ian.errors import SchemaError, StoreError
from ian.ledger.recovery import load_chain_state, verify_store
from ian.storage import store as store_mod
from ian.storage.store import SCHEMA_VERSION, WAL_BACKSTOP_PAGES, Store

DEMO = "DEMO_TRADING_AGENT"
TRIVIAL = "TRIVIAL_GOAL"


def sql(path, query: str, *args):
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def test_new_store_records_its_schema_and_uses_wal(tmp_path) -> None:
    path = tmp_path / "chain.sqlite"
    Store(path).close()
    assert sql(path, "SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]
    # Reopening (read-write and read-only) accepts its own schema.
    Store(path).close()
    ro = Store(path, readonly=True)
    assert ro.head() == (0, bytes(32), 0)
    ro.close()


@pytest.mark.parametrize(("durable", "synchronous"), [(True, 2), (False, 1)])
def test_commits_wait_for_the_disk_unless_the_store_is_derived(
    tmp_path, durable: bool, synchronous: int
) -> None:
    """FULL (fsync per commit) by default; NORMAL for a store rebuilt from the consensus log."""
    store = Store(tmp_path / "chain.sqlite", durable_commits=durable)
    try:
        assert store._w is not None
        assert store._w.execute("PRAGMA synchronous").fetchone() == (synchronous,)
    finally:
        store.close()


def test_commits_are_copied_from_the_wal_by_a_thread_of_their_own(chain, packs) -> None:
    """The writer's own checkpoint is only a backstop (256 MiB of WAL): after a commit the
    store's checkpoint thread copies the pages into the database file, on its own connection.
    Closing the store ends the thread."""
    store = chain.store
    assert store._w is not None
    assert store._w.execute("PRAGMA wal_autocheckpoint").fetchone() == (WAL_BACKSTOP_PAGES,)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    path = store.path
    before = checkpointer.completed
    size = path.stat().st_size
    chain.commit([packs.contribution(i) for i in range(200)])
    assert checkpointer.wait_completed(before + 1, timeout=10)
    assert path.stat().st_size > size  # the pages are in the database file now
    assert sql(path, "SELECT COUNT(*) FROM contributions") == [(200,)]
    store.close()
    assert not checkpointer._thread.is_alive()


def test_a_failing_checkpoint_is_logged_once_until_it_works_again(
    tmp_path, monkeypatch, caplog
) -> None:
    """A disk that stays full would fail a checkpoint twice a second: one warning when they start
    failing, one when they work again. (SQLite cannot be made to fail one here on demand, so the
    checkpoint thread's connection does: three times, then it passes the call on.)"""
    real_connect = store_mod._connect
    failures = 3

    class Failing:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, query: str, *args):
            nonlocal failures
            if "wal_checkpoint" in query and failures:
                failures -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return self.conn.execute(query, *args)

        def close(self) -> None:
            self.conn.close()

    path = tmp_path / "chain.sqlite"
    Store(path).close()
    monkeypatch.setattr(store_mod, "_connect", lambda p, **kw: Failing(real_connect(p, **kw)))
    checkpointer = store_mod._Checkpointer(path, interval=0.0)
    try:
        with caplog.at_level("WARNING", logger="ian.storage"):
            for n in range(1, 6):
                checkpointer.poke()
                assert checkpointer.wait_completed(n, timeout=10)
    finally:
        checkpointer.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(": ", 1)[1] for m in messages] == [
        "background checkpoint failed: database or disk is full",
        "background checkpoints work again",
    ]


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_is_refused_and_left_alone(tmp_path, readonly) -> None:
    path = tmp_path / "chain.sqlite"
    Store(path).close()
    sql(path, "UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(SchemaError) as info:
        Store(path, readonly=readonly)
    assert "99" in info.value.message and str(SCHEMA_VERSION) in info.value.message
    assert str(path) in info.value.message
    assert info.value.fix
    assert sql(path, "SELECT value FROM meta WHERE key='schema_version'") == [("99",)]


def test_a_schema_1_store_is_read_as_it_is_and_upgraded_by_a_writable_open(
    chain, packs, caplog
) -> None:
    """Schema 1 found duplicate packs through a unique index of (goal_id, pack_hash); 2 through
    an index of the hash's first 8 bytes. A read-only open (``ian node verify``, a backup's
    snapshot) reads a schema 1 file as it is; the node's writable open upgrades it, once."""
    a, b = packs.contribution(1), packs.contribution(2)
    t = packs.contribution(3, goal_id=TRIVIAL)
    chain.commit([a, b, t])
    path = chain.store.path
    roots = chain.store.latest_roots()
    chain.store.close()
    as_schema_1(path)
    asked = [a.pack_hash, b.pack_hash, t.pack_hash, bytes(32)]

    ro = Store(path, readonly=True)
    try:
        assert ro.schema_version == 1
        assert ro.has_packs(DEMO, asked) == {a.pack_hash, b.pack_hash}
        assert ro.has_packs(TRIVIAL, asked) == {t.pack_hash}
    finally:
        ro.close()
    assert "contributions_pack" in indexes(path)

    with caplog.at_level("WARNING", logger="ian.storage"):
        store = Store(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert "upgrading schema 1 -> 2" in caplog.text and "3 contributions" in caplog.text
        assert sql(path, "SELECT value FROM meta WHERE key='schema_version'") == [("2",)]
        assert indexes(path) == {"contributions_log", "contributions_pack_prefix"}
        assert store.has_packs(DEMO, asked, writer=True) == {a.pack_hash, b.pack_hash}
        assert store.has_packs(TRIVIAL, asked) == {t.pack_hash}
        assert store.latest_roots() == roots
    finally:
        store.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="ian.storage"):
        Store(path).close()  # once
    assert "upgrading" not in caplog.text


def test_has_packs_compares_whole_hashes_and_goals(chain, packs) -> None:
    """The index holds 8 bytes of each hash: a stored pack whose hash shares them with an asked
    one is not a duplicate of it, nor is a pack of another goal. Asked in chunks (SQLite's limit
    on parameters): a hash at any position is found."""
    a, t = packs.contribution(1), packs.contribution(2, goal_id=TRIVIAL)
    chain.commit([a, t])
    store = chain.store
    twin = a.pack_hash[:8] + bytes(24)  # the same 8 bytes, another hash
    assert store.has_packs(DEMO, [twin]) == set()
    assert store.has_packs(DEMO, [twin, a.pack_hash]) == {a.pack_hash}
    assert store.has_packs(TRIVIAL, [a.pack_hash, t.pack_hash]) == {t.pack_hash}
    assert store.has_packs("OTHER", [a.pack_hash]) == set()
    many = [i.to_bytes(32, "big") for i in range(1, 1201)]
    many[950] = a.pack_hash
    assert store.has_packs(DEMO, many) == {a.pack_hash}
    assert store.has_packs(DEMO, many, writer=True) == {a.pack_hash}


@pytest.mark.parametrize("version", ["0", "-1"])
def test_an_invalid_schema_version_is_refused(tmp_path, version) -> None:
    path = tmp_path / "chain.sqlite"
    Store(path).close()
    sql(path, "UPDATE meta SET value = ? WHERE key='schema_version'", version)
    with pytest.raises(SchemaError, match="invalid schema version"):
        Store(path)


def test_garbage_file_is_a_store_error_with_a_fix(tmp_path) -> None:
    path = tmp_path / "chain.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(path) in info.value.message
    assert "ian node verify" in (info.value.fix or "") or "ian restore" in (info.value.fix or "")


def test_read_only_store_refuses_writes(chain, packs) -> None:
    chain.commit([packs.contribution(1)])
    ro = Store(chain.store.path, readonly=True)
    try:
        assert ro.head()[0] == 1
        with pytest.raises(StoreError):
            ro.truncate_above(0)
    finally:
        ro.close()


def test_reads_after_commits(chain, packs) -> None:
    a, b, t = packs.contribution(1), packs.contribution(2), packs.contribution(3, goal_id=TRIVIAL)
    chain.commit([a])
    out = chain.commit([b, t])
    store = chain.store
    height, head_hash, ts = store.head()
    assert height == 2 and head_hash == chain.state.head_hash
    assert ts == chain.state.head_timestamp_ms
    assert store.log_size(DEMO) == 2 and store.log_size(TRIVIAL) == 1
    assert store.log_size("OTHER") == 0
    assert sorted(store.goal_ids()) == [DEMO, TRIVIAL]
    assert store.count_contributions() == 3
    assert store.has_packs(DEMO, [a.pack_hash, b.pack_hash, t.pack_hash]) == {
        a.pack_hash,
        b.pack_hash,
    }
    e = store.log_entry(DEMO, 1)
    assert e is not None
    assert e.contribution_hash == out[0].contribution_hash
    assert e.contributor_id == b.contributor_id and e.block_height == 2
    assert e.metrics == out[0].metrics and e.score == out[0].score
    assert store.log_entry(DEMO, 2) is None
    assert store.pack(DEMO, 0) == (a.version, a.parameters, a.metadata)
    assert [x.log_index for x in store.log_entries(DEMO, 0, 10)] == [0, 1]
    assert [x.log_index for x in store.log_entries(DEMO, 1, 10)] == [1]
    latest = store.latest_roots()
    assert latest[DEMO] == chain.state.goals[DEMO].roots().to_doc()
    assert latest[TRIVIAL] == chain.state.goals[TRIVIAL].roots().to_doc()
    header, bhash, sig = store.block_header(2)
    assert header.height == 2 and bhash == chain.state.head_hash and len(sig) == 64
    assert store.block_header(3) is None
    assert list(store.iter_contribution_hashes(DEMO)) == [
        store.log_entry(DEMO, 0).contribution_hash,
        out[0].contribution_hash,
    ]


def test_failed_block_write_leaves_nothing_behind(chain, packs) -> None:
    chain.commit([packs.contribution(1)])
    sql(
        chain.store.path,
        "CREATE TRIGGER fail_rows BEFORE INSERT ON contributions "
        "BEGIN SELECT RAISE(ABORT, 'no space left'); END",
    )
    with pytest.raises(StoreError) as info:
        chain.commit([packs.contribution(2), packs.contribution(3, goal_id=TRIVIAL)])
    assert "block 2" in info.value.message and "no space left" in info.value.message
    # Nothing of block 2 reached the database: not the block, not its contributions.
    assert sql(chain.store.path, "SELECT COUNT(*) FROM blocks") == [(1,)]
    assert sql(chain.store.path, "SELECT COUNT(*) FROM contributions") == [(1,)]
    assert chain.store.head()[0] == 1


def test_truncate_above_restores_an_earlier_chain(chain, packs) -> None:
    chain.commit([packs.contribution(1)])
    chain.commit([packs.contribution(2, goal_id=TRIVIAL)])
    at_2 = {gid: g.roots() for gid, g in chain.state.goals.items()}
    head_2 = chain.state.head_hash
    chain.commit([packs.contribution(3), packs.contribution(4, goal_id=TRIVIAL)])
    chain.commit([packs.contribution(5)])
    assert chain.store.head()[0] == 4

    assert chain.store.truncate_above(2) == 2
    assert chain.store.head()[:2] == (2, head_2)
    state = load_chain_state(chain.store, chain.specs)
    assert {gid: g.roots() for gid, g in state.goals.items()} == at_2
    report = verify_store(chain.store, chain.specs)
    assert report.ok, report.problem
    assert report.blocks == 2 and report.contributions == 2
    # Nothing of the removed blocks stays behind (MMR nodes live in the contribution rows).
    assert sql(chain.store.path, "SELECT COUNT(*) FROM contributions WHERE goal_id=?", DEMO) == [
        (1,)
    ]

    assert chain.store.truncate_above(0) == 2
    assert sql(chain.store.path, "SELECT COUNT(*) FROM contributions") == [(0,)]
    assert load_chain_state(chain.store, chain.specs).height == 0


def test_block_header_is_stored_as_canonical_json(chain, packs) -> None:
    chain.commit([packs.contribution(1)])
    (text,) = sql(chain.store.path, "SELECT header FROM blocks WHERE height=1")[0]
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert doc["height"] == 1 and doc["sequencer"] == chain.identity.node_id


def test_goal_ids_are_found_by_index_seeks_in_id_order(tmp_path) -> None:
    """Goal ids come from the (goal_id, log_index) index one seek per goal: ids that share a
    prefix, sort around each other or hold many rows are each listed once, in id order."""
    store = Store(tmp_path / "chain.sqlite")
    assert store.goal_ids() == []
    goals = ["B", "A", "AA", "A_", "b", "Z" * 64]
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.executemany(
        "INSERT INTO contributions (goal_id, log_index, contribution_hash, pack_hash, "
        "contributor_id, seed, version, parameters, metadata, score, metrics, block_height, "
        "mmr_nodes) VALUES (?, ?, x'00', ?, 'c', 0, '1', x'00', '{}', 0, '{}', 1, x'')",
        [(g, i, f"{g}/{i}".encode()) for g in goals for i in range(50 if g == "A" else 2)],
    )
    conn.close()
    assert store.goal_ids() == sorted(goals)
    assert store.goal_ids() == sorted(
        g for (g,) in sql(store.path, "SELECT DISTINCT goal_id FROM contributions")
    )
    store.close()


def test_goal_ids_do_not_scan_the_contributions(chain, packs) -> None:
    chain.commit([packs.contribution(1), packs.contribution(2, goal_id=TRIVIAL)])
    plans: list[str] = []
    conn = chain.store._r
    conn.set_trace_callback(plans.append)
    try:
        assert chain.store.goal_ids() == sorted([DEMO, TRIVIAL])
    finally:
        conn.set_trace_callback(None)
    # One statement per goal and one to find there is none after the last: each reads one
    # entry of the covering (goal_id, log_index) index.
    assert len(plans) == 3
    for statement in plans:
        assert statement.rstrip().endswith("LIMIT 1"), statement
        detail = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {statement}"))
        assert "COVERING INDEX contributions_log" in detail, detail


def test_a_page_of_log_entries_decodes_each_row_s_metrics(chain, packs) -> None:
    outs = chain.commit([packs.contribution(n) for n in range(1, 8)])
    accepted = [o for o in outs if o.accepted]
    assert len(accepted) >= 2
    page = chain.store.log_entries(DEMO, 0, 100)
    assert [e.metrics for e in page] == [o.metrics for o in accepted]
    assert [e.score for e in page] == [o.score for o in accepted]
    assert chain.store.log_entries(DEMO, len(accepted), 10) == []


def all_nodes(store, goal_id: str, size: int) -> dict[int, bytes]:
    from ian.chain import mmr

    return store.nodes(goal_id, range(mmr.node_count(size)))


def test_high_mmr_nodes_are_cached_and_a_truncation_forgets_them(chain, packs, monkeypatch) -> None:
    """Nodes at CACHED_NODE_HEIGHT and above are served from memory once read; after a
    truncation the same positions hold other nodes, and those are what is served."""
    from ian.chain import mmr
    from ian.storage import store as store_mod

    monkeypatch.setattr(store_mod, "CACHED_NODE_HEIGHT", 1)
    chain.commit([packs.contribution(n, goal_id=TRIVIAL) for n in range(8)])
    chain.commit([packs.contribution(n, goal_id=TRIVIAL) for n in range(8, 12)])
    store = chain.store
    before = all_nodes(store, TRIVIAL, 12)
    assert len(before) == mmr.node_count(12)
    cached = dict(store._node_cache)
    assert cached and all(g == TRIVIAL for g, _ in cached)
    assert all(mmr.appended_by(pos)[1] >= 1 for _, pos in cached)  # no leaves
    assert {pos: h for (_, pos), h in cached.items()} == {pos: before[pos] for _, pos in cached}
    # Served from memory: a row's nodes changed behind the store's back are not read again.
    sql(store.path, "UPDATE contributions SET mmr_nodes = x'' WHERE goal_id = ?", TRIVIAL)
    assert all_nodes(store, TRIVIAL, 12) == {pos: before[pos] for _, pos in cached}
    sql(store.path, "DELETE FROM contributions WHERE goal_id = ?", TRIVIAL)
    sql(store.path, "DELETE FROM blocks")
    chain.state = chain.state.genesis(chain.specs)

    # Truncated and grown again with other entries: the cache must not serve the old nodes.
    assert store.truncate_above(0) == 0
    assert store._node_cache == {}
    chain.commit([packs.contribution(n, goal_id=TRIVIAL) for n in range(100, 112)])
    after = all_nodes(store, TRIVIAL, 12)
    assert after.keys() == before.keys()
    top = mmr.peak_positions(12)[0]
    assert after[top] != before[top]
    assert after == all_nodes(store, TRIVIAL, 12)  # from the cache this time
    root = mmr.bag_peaks([after[p] for p in mmr.peak_positions(12)])
    assert root == chain.state.goals[TRIVIAL].mmr.root()


def test_a_node_read_that_races_a_truncation_is_not_cached(chain, packs, monkeypatch) -> None:
    from ian.storage import store as store_mod

    monkeypatch.setattr(store_mod, "CACHED_NODE_HEIGHT", 1)
    chain.commit([packs.contribution(n, goal_id=TRIVIAL) for n in range(8)])
    store = chain.store
    reads = 0

    def truncate_during_the_read(_statement: str) -> None:
        nonlocal reads
        reads += 1
        if reads == 1:
            store.truncate_above(1)  # a truncation between the read and the cache update

    store._r.set_trace_callback(truncate_during_the_read)
    try:
        assert all_nodes(store, TRIVIAL, 8)
    finally:
        store._r.set_trace_callback(None)
    assert reads == 1 and store._node_cache == {}
