from __future__ import annotations

import hashlib
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ian.chain.leaderboard import Leaderboard, LeaderboardEntry
from ian.chain.mmr import EMPTY_ROOT, MMR


def entry(log_index: int, score: float, who: str = "alice") -> LeaderboardEntry:
    return LeaderboardEntry(
        log_index=log_index,
        score=score,
        contribution_hash=hashlib.sha256(b"c%d" % log_index).digest(),
        contributor_id=who,
    )


def ranked(board: Leaderboard) -> list[tuple[int, float]]:
    return [(e.log_index, e.score) for e in board.entries]


def expected_root(entries: list[LeaderboardEntry]) -> bytes:
    """Root written from the documented definition, independent of the cached leaf hashes."""
    mmr = MMR()
    for e in entries:
        contributor = json.dumps(e.contributor_id, ensure_ascii=False)
        doc = (
            f'{{"contribution_hash":"{e.contribution_hash.hex()}",'
            f'"contributor_id":{contributor},'
            f'"log_index":{e.log_index},"score":{e.score!r}}}'
        )
        mmr.append(doc.encode())
    return mmr.root()


def test_leaf_hash_known_answer() -> None:
    e = LeaderboardEntry(
        log_index=7, score=1.5, contribution_hash=b"\xab\x01", contributor_id="bob"
    )
    doc = b'{"contribution_hash":"ab01","contributor_id":"bob","log_index":7,"score":1.5}'
    assert e.leaf_hash == hashlib.sha256(b"\x00" + doc).digest()
    assert e.leaf_hash is e.leaf_hash  # computed once, then cached


def test_integer_score_hashes_like_the_float() -> None:
    assert entry(1, 2).score == 2.0
    assert isinstance(entry(1, 2).score, float)
    assert entry(1, 2).leaf_hash == entry(1, 2.0).leaf_hash


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_score_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        entry(1, bad)


def test_cached_leaf_hash_does_not_affect_equality() -> None:
    a, b = entry(1, 3.0), entry(1, 3.0)
    _ = a.leaf_hash
    assert a == b
    assert hash(a) == hash(b)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Leaderboard(0)


def test_orders_by_score_descending() -> None:
    board = Leaderboard(10)
    for i, score in enumerate([1.0, 5.0, -2.0, 3.0]):
        assert board.offer(entry(i, score))
    assert ranked(board) == [(1, 5.0), (3, 3.0), (0, 1.0), (2, -2.0)]
    assert len(board) == 4
    assert board.capacity == 10


def test_ties_broken_by_earlier_arrival() -> None:
    board = Leaderboard(10)
    for i in (4, 2, 9, 0):
        board.offer(entry(i, 1.0))
    board.offer(entry(5, 2.0))
    assert [e.log_index for e in board.entries] == [5, 0, 2, 4, 9]


def test_full_board_evicts_last_and_refuses_lower_or_equal() -> None:
    board = Leaderboard(3)
    for i, score in enumerate([3.0, 2.0, 1.0]):
        assert board.offer(entry(i, score))
    assert not board.offer(entry(3, 0.5))  # below the last
    assert not board.offer(entry(4, 1.0))  # tie with the last, later arrival
    assert ranked(board) == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert board.offer(entry(5, 2.5))
    assert ranked(board) == [(0, 3.0), (5, 2.5), (1, 2.0)]
    assert len(board) == 3
    assert board.offer(entry(6, 9.0))
    assert ranked(board) == [(6, 9.0), (0, 3.0), (5, 2.5)]


def test_would_enter_agrees_with_offer() -> None:
    board = Leaderboard(2)
    assert board.would_enter(-100.0, 50)
    board.offer(entry(0, 1.0))
    board.offer(entry(1, 2.0))
    assert not board.would_enter(1.0, 2)
    assert not board.would_enter(0.0, 2)
    assert board.would_enter(1.5, 2)
    assert board.offer(entry(2, 1.5))


def test_duplicate_key_is_refused() -> None:
    board = Leaderboard(5)
    assert board.offer(entry(1, 1.0))
    assert not board.offer(entry(1, 1.0))
    assert len(board) == 1


def test_entries_is_a_read_only_snapshot() -> None:
    board = Leaderboard(5)
    board.offer(entry(0, 1.0))
    snapshot = board.entries
    board.offer(entry(1, 2.0))
    assert [e.log_index for e in snapshot] == [0]
    assert [e.log_index for e in board.entries] == [1, 0]
    with pytest.raises((TypeError, AttributeError)):
        snapshot.append(entry(9, 9.0))  # type: ignore[attr-defined]


def test_empty_root() -> None:
    assert Leaderboard(3).root() == EMPTY_ROOT


def test_root_matches_definition() -> None:
    board = Leaderboard(5)
    for i, score in enumerate([0.1, 7.0, 3.25, -1.0, 1e16, 2.0]):
        board.offer(entry(i, score, who=f"wh\u00f6-{i}"))
    assert board.root() == expected_root(list(board.entries))


def test_root_changes_iff_ranking_changes() -> None:
    board = Leaderboard(3)
    roots = [board.root()]
    for i, score in enumerate([1.0, 2.0, 3.0]):
        assert board.offer(entry(i, score))
        roots.append(board.root())
    assert len(set(roots)) == len(roots)
    before = board.root()
    assert not board.offer(entry(10, 0.0))
    assert not board.offer(entry(11, 1.0))
    assert board.root() == before
    assert board.offer(entry(12, 1.5))
    assert board.root() != before
    assert board.root() == expected_root(list(board.entries))


def test_copy_is_independent() -> None:
    board = Leaderboard(3)
    board.offer(entry(0, 1.0))
    root = board.root()
    clone = board.copy()
    clone.offer(entry(1, 2.0))
    assert ranked(board) == [(0, 1.0)]
    assert board.root() == root
    assert clone.root() != root
    assert len(clone) == 2


def test_from_entries_equals_incremental_offers() -> None:
    items = [entry(i, float((i * 37) % 11)) for i in range(40)]
    incremental = Leaderboard(7)
    for e in items:
        incremental.offer(e)
    built = Leaderboard.from_entries(7, reversed(items))
    assert built.entries == incremental.entries
    assert built.root() == incremental.root()


# Scores drawn from a small set so ties are common.
offers = st.lists(
    st.tuples(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 1e9]), st.sampled_from("abc")),
    max_size=60,
)


@given(capacity=st.integers(1, 12), items=offers, order=st.randoms(use_true_random=False))
def test_matches_naive_sorted_model(
    capacity: int, items: list[tuple[float, str]], order: object
) -> None:
    entries = [entry(i, score, who) for i, (score, who) in enumerate(items)]
    board = Leaderboard(capacity)
    model: list[LeaderboardEntry] = []
    for e in entries:
        model_before = list(model)
        model = sorted([*model, e], key=lambda x: (-x.score, x.log_index))[:capacity]
        accepted = board.offer(e)
        assert accepted == (e in model)
        assert list(board.entries) == model
        assert (board.root() == expected_root(model_before)) == (model == model_before)
    assert board.root() == expected_root(model)
    shuffled = list(entries)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    rebuilt = Leaderboard.from_entries(capacity, shuffled)
    assert list(rebuilt.entries) == model
    assert rebuilt.root() == board.root()
