"""Token buckets: per contributor and per client address on the API, per peer on P2P.

Pure: time is passed in (seconds, monotonic). :class:`BucketTable` bounds its memory by evicting
the least recently used key, so a flood of distinct keys cannot grow it without bound.
"""

from __future__ import annotations

from collections import OrderedDict


class BucketTable:
    """Token buckets by key with shared parameters; at most ``max_keys`` are remembered.

    A bucket is a ``(tokens, updated)`` pair of floats: a tuple of floats is an object the
    cyclic garbage collector stops tracking, so a node remembering 100,000 contributors gives
    its full collections nothing more to walk (as bucket objects, they were nearly all a busy
    node's tracked objects once start-up was frozen: ``ian.node.freeze_start_up_objects``).
    """

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate  # tokens per second
        self.burst = burst  # capacity
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def configure(self, rate: float, burst: float) -> None:
        """Change the limits for every key (a running node's rate limits can be raised live)."""
        self.rate = rate
        self.burst = burst
        for key, (tokens, updated) in list(self._buckets.items()):
            if tokens > burst:
                self._buckets[key] = (burst, updated)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket (a new one is full); returns 0.0 on
        success, else the seconds until it would succeed (infinite at rate 0)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            tokens = self.burst
            if buckets and len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            held, updated = bucket
            tokens = min(self.burst, held + max(0.0, now - updated) * self.rate)
        if tokens >= cost:
            buckets[key] = (tokens - cost, now)
            return 0.0
        buckets[key] = (tokens, now)
        if self.rate <= 0:
            return float("inf")
        return (cost - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
