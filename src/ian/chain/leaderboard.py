"""A goal's top-K leaderboard and its root (ARCHITECTURE §8).

Ranking: score descending, ties broken by earlier arrival (lower ``log_index`` first).
``log_index`` is the entry's index in the goal's log, so it is unique per goal; offering an
entry whose rank key (score, log_index) is already held is refused.

Root: the MMR root (``ian.chain.mmr``) of the entries' leaf hashes in rank order, where an entry's
leaf hash is ``mmr.leaf_hash(canonical_json({"contribution_hash": <hex>, "contributor_id": ...,
"log_index": ..., "score": <float>}))`` (``hashing.canonical_json``). The empty leaderboard
has root ``mmr.EMPTY_ROOT``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ian.chain.hashing import canonical_json
from ian.chain.mmr import leaf_hash, root_of_leaf_hashes

__all__ = ["Leaderboard", "LeaderboardEntry"]

_RankKey = tuple[float, int]


@dataclass(frozen=True, slots=True)
class LeaderboardEntry:
    """One ranked contribution. ``score`` is stored as a finite float (ints are converted)."""

    log_index: int
    score: float
    contribution_hash: bytes
    contributor_id: str
    # Computed on first use, then kept: refused offers never pay for it and roots reuse it.
    _leaf_hash: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        score = float(self.score)
        if not math.isfinite(score):
            raise ValueError(f"leaderboard score must be finite, got {score!r}")
        # int vs float changes the canonical JSON, hence the leaf hash: pin it to float.
        object.__setattr__(self, "score", score)

    @property
    def rank_key(self) -> _RankKey:
        """Sort key: ascending order is rank order."""
        return (-self.score, self.log_index)

    @property
    def leaf_hash(self) -> bytes:
        """The entry's MMR leaf hash (see module docstring), computed once."""
        h = self._leaf_hash
        if h is None:
            h = leaf_hash(
                canonical_json(
                    {
                        "contribution_hash": self.contribution_hash.hex(),
                        "contributor_id": self.contributor_id,
                        "log_index": self.log_index,
                        "score": self.score,
                    }
                )
            )
            object.__setattr__(self, "_leaf_hash", h)
        return h


class Leaderboard:
    """The top ``capacity`` entries in rank order, with a lazily recomputed root.

    ``offer`` costs O(1) when refused and O(log K + K) (one list insert) when accepted; the root
    is recomputed only by ``root()`` and only if the ranking changed since the last call.
    """

    __slots__ = ("_capacity", "_entries", "_keys", "_root", "_view")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"leaderboard capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._entries: list[LeaderboardEntry] = []
        self._keys: list[_RankKey] = []  # parallel to _entries, ascending
        self._root: bytes | None = None
        self._view: tuple[LeaderboardEntry, ...] | None = ()

    @classmethod
    def from_entries(cls, capacity: int, entries: Iterable[LeaderboardEntry]) -> Leaderboard:
        """Build from entries in any order; equal to offering them one by one in that order."""
        board = cls(capacity)
        # A stable sort keeps input order among equal keys, so the first offered one wins.
        for entry in sorted(entries, key=lambda e: (-e.score, e.log_index)):
            if len(board._entries) == capacity:
                break
            board.offer(entry)
        return board

    @property
    def capacity(self) -> int:
        """Maximum number of entries held."""
        return self._capacity

    @property
    def entries(self) -> Sequence[LeaderboardEntry]:
        """The entries in rank order (an immutable snapshot)."""
        view = self._view
        if view is None:
            view = self._view = tuple(self._entries)
        return view

    def __len__(self) -> int:
        return len(self._entries)

    def would_enter(self, score: float, log_index: int) -> bool:
        """Return whether an entry with this score and log index would be accepted, in O(1)
        when full (lets a caller skip building the entry). Ignores exact-key duplicates."""
        keys = self._keys
        return len(keys) < self._capacity or (-score, log_index) < keys[-1]

    def offer(self, entry: LeaderboardEntry) -> bool:
        """Insert ``entry`` if it ranks in the top ``capacity``; return True iff it entered.

        When full, the entry must rank strictly above the last one, which is then evicted.
        """
        key = (-entry.score, entry.log_index)
        keys = self._keys
        full = len(keys) >= self._capacity
        if full and key >= keys[-1]:
            return False
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return False
        keys.insert(i, key)
        self._entries.insert(i, entry)
        if full:
            keys.pop()
            self._entries.pop()
        self._root = None
        self._view = None
        return True

    def root(self) -> bytes:
        """Return the MMR root of the leaf hashes in rank order (cached until the next change)."""
        root = self._root
        if root is None:
            root = self._root = root_of_leaf_hashes([e.leaf_hash for e in self._entries])
        return root

    def copy(self) -> Leaderboard:
        """Return an independent copy (entries are immutable and shared)."""
        other = Leaderboard(self._capacity)
        other._entries = list(self._entries)
        other._keys = list(self._keys)
        other._root = self._root
        other._view = self._view
        return other

    def __repr__(self) -> str:
        return f"Leaderboard(capacity={self._capacity}, size={len(self._entries)})"
