"""Token buckets by key (``ian.rate_limit``): refill, burst, waits, eviction, live limits, and
buckets the garbage collector does not have to walk."""

from __future__ import annotations

import gc
import math

from ian.rate_limit import BucketTable


def test_a_new_key_has_a_full_bucket_that_refills_at_the_rate() -> None:
    t = BucketTable(rate=2.0, burst=3.0)
    assert [t.take("a", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert t.take("a", 10.0) == 0.5  # empty: one token comes in 1/rate seconds
    assert t.take("a", 10.5) == 0.0  # ... and then it is there
    assert t.take("b", 10.5) == 0.0  # every key has its own bucket


def test_refill_stops_at_the_burst_and_a_cost_above_it_says_how_long() -> None:
    t = BucketTable(rate=1.0, burst=2.0)
    t.take("a", 0.0, cost=2.0)
    assert t.take("a", 100.0, cost=3.0) == 1.0  # held 2 (the burst), not 100
    assert t.take("a", 100.0, cost=2.0) == 0.0


def test_time_going_backwards_adds_nothing() -> None:
    t = BucketTable(rate=1.0, burst=1.0)
    assert t.take("a", 5.0) == 0.0
    assert t.take("a", 4.0) == 1.0


def test_rate_zero_never_refills() -> None:
    t = BucketTable(rate=0.0, burst=1.0)
    assert t.take("a", 0.0) == 0.0
    assert math.isinf(t.take("a", 1e9))


def test_the_least_recently_used_key_is_forgotten_first() -> None:
    t = BucketTable(rate=1.0, burst=1.0, max_keys=2)
    t.take("a", 0.0)
    t.take("b", 0.0)
    t.take("a", 0.0)  # a is used again: b is now the oldest
    t.take("c", 0.0)
    assert len(t) == 2
    assert t.take("a", 0.0) == 1.0  # remembered (empty)
    assert t.take("b", 0.0) == 0.0  # forgotten: a new, full bucket


def test_configure_changes_every_bucket_and_caps_what_they_hold() -> None:
    t = BucketTable(rate=1.0, burst=10.0)
    t.take("a", 0.0)  # holds 9
    t.configure(rate=100.0, burst=2.0)
    assert (t.rate, t.burst) == (100.0, 2.0)
    assert t.take("a", 0.0, cost=3.0) == 0.01  # holds 2 now; 1 more in 1/100 s


def test_buckets_are_not_tracked_by_the_garbage_collector() -> None:
    """A table of many keys gives full collections nothing to walk once a collection has seen
    its buckets (tuples of floats are untracked then)."""
    t = BucketTable(rate=1.0, burst=1.0)
    for i in range(1000):
        t.take(f"contributor-{i}", float(i))
    gc.collect()
    assert not any(gc.is_tracked(bucket) for bucket in t._buckets.values())
