"""Token buckets: per contributor and per client address on the API, per peer on P2P.

Pure: time is passed in (seconds, monotonic). :class:`BucketTable` bounds its memory by evicting
the least recently used key, so a flood of distinct keys cannot grow it without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # capacity
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; returns 0.0 on success, else seconds until it would succeed."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (cost - self.tokens) / self.rate


class BucketTable:
    """Buckets by key with shared parameters; at most ``max_keys`` are remembered."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def configure(self, rate: float, burst: float) -> None:
        """Change the limits for every key (a running node's rate limits can be raised live)."""
        self.rate = rate
        self.burst = burst
        for b in self._buckets.values():
            b.rate = rate
            b.burst = burst
            b.tokens = min(b.tokens, burst)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)

    def __len__(self) -> int:
        return len(self._buckets)
