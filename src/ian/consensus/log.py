"""The consensus log as the core holds it: recent blocks in memory, older ones on disk.

A node of a chain with several authorities appends a block every few milliseconds under load,
and every block carries its contributions. Holding the whole log would cost memory in proportion
to the chain (~0.8 KiB a contribution); so the core keeps the blocks above a *base* height in
memory and reads those at or below it, with their certificates, through a :class:`ColdLog`
(the node's ``consensus.db``) — only when a lagging peer needs them or a fork is proved.

The base only moves up, and only over blocks that are committed, applied and durable: nothing
the core may still truncate, apply or be asked to make durable is ever out of memory. The
authority changes of the whole log are kept apart (they are few and every height's authority
set depends on them).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from typing import Protocol, overload

from ian.consensus.types import Block, CommitCertificate

__all__ = ["BLOCK_OVERHEAD", "BlockLog", "ColdLog", "ListColdLog", "window_base"]


class ColdLog(Protocol):
    """Read access to the durable blocks and certificates at or below the core's base height.
    Only ever asked for heights the node made durable; a read failure raises (the node's
    :class:`~ian.errors.StoreError`) and stops the driver, like any failed write."""

    def blocks(self, first: int, last: int, max_bytes: int | None = None) -> list[Block]:
        """The blocks at heights ``first..last``, in order (all of them exist); with
        ``max_bytes``, only as many as keep their payloads within it (always the first)."""
        ...

    def certificate(self, height: int) -> CommitCertificate | None:
        """The stored certificate at ``height``, if any."""
        ...

    def certified_heights(self, low: int, high: int) -> list[int]:
        """The heights in ``low..high`` that have a stored certificate, ascending."""
        ...


class ListColdLog:
    """A cold log over a list of blocks (height ``k`` at index ``k - 1``) and a dict of
    certificates, read live: the simulator's and the tests' stand-in for ``consensus.db``.
    Asked for a block it lacks, it raises :class:`IndexError`."""

    def __init__(self, blocks: list[Block], certificates: dict[int, CommitCertificate]) -> None:
        self._blocks = blocks
        self._certificates = certificates

    def blocks(self, first: int, last: int, max_bytes: int | None = None) -> list[Block]:
        out: list[Block] = []
        size = 0
        for block in self._blocks[first - 1 : last]:
            size += len(block.payload)
            if max_bytes is not None and size > max_bytes and out:
                break
            out.append(block)
        if not out or out[0].height != first:
            raise IndexError(f"the cold log lacks block {first}")
        return out

    def certificate(self, height: int) -> CommitCertificate | None:
        return self._certificates.get(height)

    def certified_heights(self, low: int, high: int) -> list[int]:
        return sorted(h for h in self._certificates if low <= h <= high)


def window_base(applied: int, certified: int, keep: int) -> int:
    """The base height a restarted node starts from: ``keep`` blocks below both its applied
    mark and its highest certificate (so everything it may apply or re-certify is in memory)."""
    return max(0, min(applied, certified) - keep)


class BlockLog:
    """The log (heights ``1..len``) indexed like a list from 0; blocks at heights <= ``base``
    come from ``cold``. Also the commit certificates, by height. Not iterable: walking the
    whole log would read it all from disk; :meth:`recent` walks the in-memory part.

    The certificates' heights are also kept sorted, so a range of them is found by bisection:
    a leader asks for one with every message to a peer, and a long-running one holds thousands.
    """

    __slots__ = ("_cert_heights", "_certs", "_cold", "_recent", "base", "memory_bytes")

    def __init__(
        self,
        base: int,
        recent: list[Block],
        certificates: dict[int, CommitCertificate],
        cold: ColdLog | None,
    ) -> None:
        if base and cold is None:
            raise ValueError("blocks below the base height need a cold log to read them from")
        self.base = base
        self._recent = recent
        #: what the in-memory blocks cost, roughly: payloads plus BLOCK_OVERHEAD each
        self.memory_bytes = sum(_cost(b) for b in recent)
        self._certs = {h: c for h, c in certificates.items() if h >= base}
        self._cert_heights = sorted(self._certs)  # the keys of _certs, ascending
        self._cold = cold

    def __len__(self) -> int:
        return self.base + len(self._recent)

    def __iter__(self) -> Iterator[Block]:
        raise TypeError("the log is not iterable: use recent() or a slice")

    @overload
    def __getitem__(self, index: int) -> Block: ...

    @overload
    def __getitem__(self, index: slice) -> list[Block]: ...

    def __getitem__(self, index: int | slice) -> Block | list[Block]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("log slices have no step")
            return self._range(start + 1, stop)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"no block at height {index + 1}")
        if index >= self.base:
            return self._recent[index - self.base]
        return self._cold_blocks(index + 1, index + 1)[0]

    def _range(self, first: int, last: int) -> list[Block]:
        if first > last:
            return []
        if first > self.base:
            return self._recent[first - 1 - self.base : last - self.base]
        cold = self._cold_blocks(first, min(last, self.base))
        return cold + self._recent[: max(0, last - self.base)]

    def _cold_blocks(self, first: int, last: int) -> list[Block]:
        assert self._cold is not None  # base > 0 implies a cold log (see __init__)
        return self._cold.blocks(first, last)

    def batch(self, first: int, max_blocks: int, max_bytes: int) -> list[Block]:
        """Blocks from ``first`` on: at most ``max_blocks`` of them and ``max_bytes`` of
        payload, but at least one if there is one (what one message carries)."""
        last = min(len(self), first + max_blocks - 1)
        if last < first:
            return []
        out: list[Block] = []
        if first <= self.base:
            assert self._cold is not None
            out = self._cold.blocks(first, min(last, self.base), max_bytes)
            if out[-1].height < self.base or last <= self.base:
                return out  # the bytes ran out, or nothing more was asked for
        size = sum(len(b.payload) for b in out)
        for block in self._recent[max(first, self.base + 1) - 1 - self.base : last - self.base]:
            size += len(block.payload)
            if size > max_bytes and out:
                break
            out.append(block)
        return out

    def append(self, block: Block) -> None:
        self._recent.append(block)
        self.memory_bytes += _cost(block)

    def truncate(self, from_height: int) -> None:
        """Drop the blocks at ``from_height`` and above (never below the base: those are
        committed, and the core never truncates a committed block)."""
        if from_height <= self.base:
            raise ValueError(f"cannot truncate at {from_height}: the base height is {self.base}")
        at = from_height - 1 - self.base
        self.memory_bytes -= sum(_cost(b) for b in self._recent[at:])
        del self._recent[at:]

    def recent(self) -> list[Block]:
        """The blocks held in memory (heights ``base + 1 ..``), oldest first."""
        return self._recent

    def shrink(self, limit: int, budget: int) -> None:
        """Keep the in-memory blocks within ``budget`` bytes: when over it, move the base up
        until they take half of it, never above ``limit`` (the caller's guarantee: blocks up
        to there are durable and will not change). Halving makes the work per block O(1)."""
        if self._cold is None or self.memory_bytes <= budget:
            return
        n = 0
        while self.base + n < limit and self.memory_bytes > budget // 2:
            self.memory_bytes -= _cost(self._recent[n])
            n += 1
        if n:
            del self._recent[:n]
            self.base += n
            below = bisect_left(self._cert_heights, self.base)
            for h in self._cert_heights[:below]:
                del self._certs[h]
            del self._cert_heights[:below]

    # ------------------------------------------------------------------ certificates

    def add_certificate(self, cert: CommitCertificate) -> None:
        h = cert.height
        if h not in self._certs:
            heights = self._cert_heights
            if not heights or h > heights[-1]:
                heights.append(h)  # the usual case: certificates come in height order
            else:
                insort(heights, h)
        self._certs[h] = cert

    def certificate(self, height: int) -> CommitCertificate | None:
        if height >= self.base:
            return self._certs.get(height)
        assert self._cold is not None
        return self._cold.certificate(height)

    def certified_heights(self, low: int, high: int) -> list[int]:
        """Heights in ``low..high`` with a certificate, ascending."""
        out: list[int] = []
        if low < self.base:
            assert self._cold is not None
            out = self._cold.certified_heights(low, min(high, self.base - 1))
        heights = self._cert_heights
        out.extend(heights[bisect_left(heights, max(low, self.base)) : bisect_right(heights, high)])
        return out

    def lowest_certificate_from(self, height: int) -> CommitCertificate | None:
        """The certificate with the lowest height >= ``height`` (it covers that block)."""
        if height < self.base:
            assert self._cold is not None
            heights = self._cold.certified_heights(height, self.base - 1)
            if heights:
                return self._cold.certificate(heights[0])
        heights = self._cert_heights
        at = bisect_left(heights, height)
        return self._certs[heights[at]] if at < len(heights) else None


BLOCK_OVERHEAD = 512
"""Bytes counted for a block besides its payload (the objects, hashes and certificate)."""


def _cost(block: Block) -> int:
    return len(block.payload) + BLOCK_OVERHEAD
