"""The consensus log as the core holds it: recent blocks in memory, the rest read back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ian.consensus.cluster import CHAIN

from ian.consensus import Block, BlockKind, CommitCertificate, genesis_hash
from ian.consensus.log import BLOCK_OVERHEAD, BlockLog, ListColdLog, window_base


def chain(n: int, size: int = 100) -> list[Block]:
    out: list[Block] = []
    parent = genesis_hash(CHAIN)
    for h in range(1, n + 1):
        block = Block.build(
            CHAIN, height=h, term=1, parent_hash=parent, kind=BlockKind.DATA, payload=bytes(size)
        )
        out.append(block)
        parent = block.hash
    return out


def cert(block: Block) -> CommitCertificate:
    return CommitCertificate(CHAIN, block.term, block.height, block.hash, ())


class CountingCold(ListColdLog):
    def __init__(self, blocks: list[Block], certs: dict[int, CommitCertificate]) -> None:
        super().__init__(blocks, certs)
        self.reads: list[tuple[int, int]] = []

    def blocks(self, first: int, last: int, max_bytes: int | None = None) -> list[Block]:
        self.reads.append((first, last))
        return super().blocks(first, last, max_bytes)


def split(blocks: list[Block], base: int, certs: dict[int, CommitCertificate] | None = None):
    certs = {} if certs is None else certs
    cold = CountingCold(blocks, certs)
    return BlockLog(base, blocks[base:], certs, cold), cold


def test_indexing_and_slices_read_through_to_the_cold_part() -> None:
    blocks = chain(10)
    log, cold = split(blocks, 4)
    assert len(log) == 10
    assert log[-1] == blocks[9] and log[4] == blocks[4]
    assert cold.reads == []  # in memory
    assert log[0] == blocks[0] and cold.reads == [(1, 1)]
    assert log[2:7] == blocks[2:7]  # across the base: one read for the cold part
    assert cold.reads[-1] == (3, 4)
    assert log[1:3] == blocks[1:3] and log[6:20] == blocks[6:]
    with pytest.raises(IndexError):
        log[10]
    with pytest.raises(TypeError):
        iter(log)


def test_a_batch_is_bounded_in_blocks_and_bytes_on_both_sides_of_the_base() -> None:
    blocks = chain(10, size=100)
    log, _ = split(blocks, 4)
    assert log.batch(1, 3, 10_000) == blocks[0:3]  # all below the base
    assert log.batch(3, 4, 10_000) == blocks[2:6]  # across it
    assert log.batch(6, 32, 10_000) == blocks[5:]  # above it
    assert log.batch(1, 32, 250) == blocks[0:2]  # bytes run out below the base
    assert log.batch(4, 32, 250) == blocks[3:5]  # bytes run out across it
    assert log.batch(2, 32, 10) == blocks[1:2]  # always one
    assert log.batch(11, 32, 10_000) == []


def test_shrinking_keeps_the_budget_and_never_passes_the_limit() -> None:
    blocks = chain(40, size=BLOCK_OVERHEAD)  # each costs 2 * BLOCK_OVERHEAD
    certs = {b.height: cert(b) for b in blocks}
    log = BlockLog(0, [], certs, ListColdLog(blocks, certs))
    for b in blocks:
        log.append(b)
    budget = 20 * BLOCK_OVERHEAD  # 10 blocks
    log.shrink(limit=5, budget=budget)
    assert log.base == 5  # over the budget, but not past the limit
    log.shrink(limit=40, budget=budget)
    assert log.base == 35 and log.memory_bytes <= budget // 2
    assert log.memory_bytes == 5 * 2 * BLOCK_OVERHEAD
    log.shrink(limit=40, budget=budget)
    assert log.base == 35  # within the budget: nothing to do
    assert log[0] == blocks[0] and log[-1] == blocks[-1]
    # certificates below the base come from the cold log, the rest from memory
    assert log.certificate(3) == certs[3] and log.certificate(36) == certs[36]
    assert log.certified_heights(33, 37) == [33, 34, 35, 36, 37]
    assert log.lowest_certificate_from(30) == certs[30]
    with pytest.raises(ValueError, match="base height"):
        log.truncate(35)
    log.truncate(38)
    assert len(log) == 37 and log.memory_bytes == 2 * 2 * BLOCK_OVERHEAD


def test_without_a_cold_log_nothing_leaves_memory() -> None:
    blocks = chain(5)
    log = BlockLog(0, list(blocks), {}, None)
    log.shrink(limit=5, budget=0)
    assert log.base == 0 and log.recent() == blocks
    with pytest.raises(ValueError, match="cold log"):
        BlockLog(2, blocks[2:], {}, None)


def test_a_restart_keeps_blocks_below_both_the_applied_mark_and_the_certificates() -> None:
    assert window_base(applied=100, certified=90, keep=10) == 80
    assert window_base(applied=50, certified=90, keep=10) == 40
    assert window_base(applied=5, certified=90, keep=10) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 30), max_size=40),
    st.integers(0, 30),
    st.integers(0, 32),
    st.integers(0, 32),
)
def test_certificate_lookups_agree_with_a_scan_whatever_the_order_they_came_in(
    added: list[int], limit: int, low: int, high: int
) -> None:
    """Certificates can arrive out of height order and twice; the sorted index the lookups
    bisect must answer what a scan of every certificate held would."""
    blocks = chain(30, size=BLOCK_OVERHEAD)
    held = {b.height: cert(b) for b in blocks[:3]}  # given at start-up
    log = BlockLog(
        0, list(blocks), held, ListColdLog(blocks, {h: cert(blocks[h - 1]) for h in range(1, 31)})
    )
    for h in added:
        log.add_certificate(cert(blocks[h - 1]))
        held[h] = cert(blocks[h - 1])
    log.shrink(limit=limit, budget=10 * 2 * BLOCK_OVERHEAD)
    in_memory = sorted(h for h in held if h >= log.base)
    assert log.certified_heights(max(low, log.base), high) == [
        h for h in in_memory if low <= h <= high
    ]
    above = [h for h in in_memory if h >= max(low, log.base)]
    expected = held[above[0]] if above else None
    assert log.lowest_certificate_from(max(low, log.base)) == expected
