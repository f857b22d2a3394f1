from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ian.chain.mmr import (
    EMPTY_ROOT,
    MMR,
    InclusionProof,
    bag_peaks,
    inclusion_proof,
    leaf_hash,
    leaf_position,
    node_count,
    node_hash,
    peak_positions,
    proof_positions,
    root_of_leaf_hashes,
    verify_inclusion,
)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _data(i: int) -> bytes:
    return f"leaf-{i}".encode()


def naive_root(leaf_hashes: list[bytes]) -> bytes:
    """Independent model: perfect trees over the binary decomposition of n, bagged per §8."""

    def perfect(hs: list[bytes]) -> bytes:
        if len(hs) == 1:
            return hs[0]
        half = len(hs) // 2
        return _h(b"\x01" + perfect(hs[:half]) + perfect(hs[half:]))

    peaks = []
    start = 0
    for bit in reversed(range(len(leaf_hashes).bit_length())):
        width = 1 << bit
        if len(leaf_hashes) & width:
            peaks.append(perfect(leaf_hashes[start : start + width]))
            start += width
    if not peaks:
        return bytes(32)
    acc = peaks[-1]
    for p in reversed(peaks[:-1]):
        acc = _h(b"\x01" + p + acc)
    return acc


def build(n: int) -> tuple[MMR, list[bytes]]:
    """An MMR of n leaves plus its full node list (index = position), as a store would hold."""
    mmr = MMR()
    nodes: list[bytes] = []
    for i in range(n):
        assert len(nodes) == mmr.node_count
        nodes.extend(mmr.append(_data(i)))
    return mmr, nodes


# Built once: the MMR of 300 leaves contains every smaller one as a prefix of its nodes.
BIG, BIG_NODES = build(300)


# --- known answers written from the definition ---------------------------------------------


def test_empty_root_is_zero() -> None:
    assert MMR().root() == EMPTY_ROOT == bytes(32)
    assert root_of_leaf_hashes([]) == EMPTY_ROOT
    assert bag_peaks([]) == EMPTY_ROOT


def test_leaf_and_node_hash_domain_separation() -> None:
    assert leaf_hash(b"a") == _h(b"\x00a")
    assert node_hash(b"L" * 32, b"R" * 32) == _h(b"\x01" + b"L" * 32 + b"R" * 32)


def test_known_roots_for_one_two_three_leaves() -> None:
    l0, l1, l2 = (_h(b"\x00" + d) for d in (b"a", b"b", b"c"))
    mmr = MMR()
    mmr.append(b"a")
    assert mmr.root() == l0
    mmr.append(b"b")
    p01 = _h(b"\x01" + l0 + l1)
    assert mmr.root() == p01
    mmr.append(b"c")
    assert mmr.peaks == [p01, l2]
    assert mmr.root() == _h(b"\x01" + p01 + l2)


def test_known_root_for_seven_leaves_bags_right_to_left() -> None:
    ls = [_h(b"\x00" + bytes([i])) for i in range(7)]
    n = lambda a, b: _h(b"\x01" + a + b)  # noqa: E731
    p4 = n(n(ls[0], ls[1]), n(ls[2], ls[3]))
    p2 = n(ls[4], ls[5])
    p1 = ls[6]
    assert root_of_leaf_hashes(ls) == n(p4, n(p2, p1))


def test_known_positions() -> None:
    assert [leaf_position(i) for i in range(8)] == [0, 1, 3, 4, 7, 8, 10, 11]
    assert [node_count(n) for n in range(8)] == [0, 1, 3, 4, 7, 8, 10, 11]
    assert peak_positions(7) == [6, 9, 10]
    assert peak_positions(8) == [14]
    assert proof_positions(0, 7) == ([1, 5], [9, 10])
    assert proof_positions(5, 7) == ([7], [6, 10])
    assert proof_positions(6, 7) == ([], [6, 9])


# --- structure -----------------------------------------------------------------------------


def test_roots_match_naive_model_for_every_size() -> None:
    leaves = [leaf_hash(_data(i)) for i in range(300)]
    mmr = MMR()
    for n in range(1, 301):
        mmr.append(_data(n - 1))
        expected = naive_root(leaves[:n])
        assert mmr.root() == expected
        assert root_of_leaf_hashes(leaves[:n]) == expected
        assert bag_peaks([BIG_NODES[p] for p in peak_positions(n)]) == expected


def test_append_returns_nodes_at_consecutive_positions() -> None:
    mmr = MMR()
    for i in range(300):
        before = mmr.node_count
        added = mmr.append(_data(i))
        assert before == leaf_position(i) == node_count(i)
        assert added[0] == leaf_hash(_data(i))
        assert mmr.node_count == before + len(added) == node_count(i + 1)
        assert added == BIG_NODES[before : before + len(added)]
        # The last node added is always the new rightmost peak.
        assert mmr.peaks[-1] == added[-1]
        assert peak_positions(i + 1)[-1] == before + len(added) - 1


def test_append_leaf_hash_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        MMR().append_leaf_hash(b"short")


def test_from_peaks_round_trips() -> None:
    mmr = MMR()
    for i in range(40):
        clone = MMR.from_peaks(mmr.size, mmr.peaks)
        assert clone == mmr
        assert clone.root() == mmr.root()
        assert clone.node_count == mmr.node_count
        assert clone.append(b"next") == mmr.copy().append(b"next")
        mmr.append(_data(i))


@pytest.mark.parametrize(("leaves", "count"), [(0, 1), (1, 0), (3, 1), (7, 2), (-1, 0)])
def test_from_peaks_validates_peak_count(leaves: int, count: int) -> None:
    with pytest.raises(ValueError):
        MMR.from_peaks(leaves, [bytes(32)] * count)


def test_from_peaks_validates_hash_length() -> None:
    with pytest.raises(ValueError):
        MMR.from_peaks(1, [b"x"])


def test_copy_is_independent_and_root_cache_invalidates() -> None:
    mmr, _ = build(5)
    root = mmr.root()
    clone = mmr.copy()
    clone.append(b"more")
    assert mmr.root() == root
    assert clone.root() != root
    assert clone.root() == naive_root(
        [leaf_hash(_data(i)) for i in range(5)] + [leaf_hash(b"more")]
    )


# --- proofs --------------------------------------------------------------------------------


def test_proofs_verify_for_every_size_and_leaf() -> None:
    for size in range(1, 301):
        nodes = BIG_NODES[: node_count(size)]
        root = root_of_leaf_hashes([nodes[leaf_position(i)] for i in range(size)])
        for index in range(size):
            proof = inclusion_proof(index, size, nodes.__getitem__)
            leaf = nodes[leaf_position(index)]
            assert verify_inclusion(root, leaf, proof), (size, index)
            assert len(proof.peaks) == size.bit_count() - 1


def test_proof_never_reads_beyond_its_size() -> None:
    for size in (1, 6, 13, 64, 100):
        limit = node_count(size)

        def get(pos: int, limit: int = limit) -> bytes:
            assert 0 <= pos < limit
            return BIG_NODES[pos]

        for index in range(size):
            inclusion_proof(index, size, get)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (3, 3), (-1, 3), (5, 2)])
def test_proof_of_absent_leaf_raises(index: int, size: int) -> None:
    with pytest.raises((IndexError, ValueError)):
        proof_positions(index, size)
    with pytest.raises((IndexError, ValueError)):
        inclusion_proof(index, size, BIG_NODES.__getitem__)


def _proof_case(size: int, index: int) -> tuple[bytes, bytes, InclusionProof]:
    nodes = BIG_NODES[: node_count(size)]
    root = bag_peaks([nodes[p] for p in peak_positions(size)])
    return root, nodes[leaf_position(index)], inclusion_proof(index, size, nodes.__getitem__)


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


proof_cases = st.integers(1, 300).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(0, size - 1))
)


@given(case=proof_cases, which=st.integers(0, 1000), bit=st.integers(0, 255))
def test_flipping_a_bit_in_the_proof_fails(case: tuple[int, int], which: int, bit: int) -> None:
    root, leaf, proof = _proof_case(*case)
    elements = [*proof.path, *proof.peaks]
    if not elements:  # size 1: nothing to tamper with but the leaf and the root
        assert not verify_inclusion(root, _flip(leaf, bit), proof)
        assert not verify_inclusion(_flip(root, bit), leaf, proof)
        return
    k = which % len(elements)
    elements[k] = _flip(elements[k], bit)
    split = len(proof.path)
    tampered = replace(proof, path=tuple(elements[:split]), peaks=tuple(elements[split:]))
    assert verify_inclusion(root, leaf, proof)
    assert not verify_inclusion(root, leaf, tampered)


@given(case=proof_cases, other=st.integers(0, 299))
def test_other_leaf_index_fails(case: tuple[int, int], other: int) -> None:
    root, leaf, proof = _proof_case(*case)
    if other == proof.leaf_index:
        other += 1
    assert not verify_inclusion(root, leaf, replace(proof, leaf_index=other))


@given(case=proof_cases, other=st.integers(-5, 400))
def test_other_size_fails_against_the_trusted_size(case: tuple[int, int], other: int) -> None:
    root, leaf, proof = _proof_case(*case)
    if other == proof.size:
        other += 1
    assert verify_inclusion(root, leaf, proof, size=proof.size)
    assert not verify_inclusion(root, leaf, replace(proof, size=other), size=proof.size)
    assert not verify_inclusion(root, leaf, proof, size=other)


@given(case=proof_cases, other=st.integers(-5, 400))
def test_other_size_fails_when_the_mountains_differ(case: tuple[int, int], other: int) -> None:
    root, leaf, proof = _proof_case(*case)
    if other == proof.size:
        other += 1
    tampered = replace(proof, size=other)
    if 0 <= proof.leaf_index < other:
        path, peaks = proof_positions(proof.leaf_index, other)
        if (len(path), len(peaks)) == (len(proof.path), len(proof.peaks)):
            return  # same proof shape: only a trusted size can tell (see the test below)
    assert not verify_inclusion(root, leaf, tampered)


def test_root_alone_does_not_commit_to_size() -> None:
    # Documented limitation of the §8 root: leaf 4 of 5 reads as leaf 2 of 3 (the 4-leaf peak
    # posing as a 2-leaf one), so verifiers must pin the size that was anchored with the root.
    root, leaf, proof = _proof_case(5, 4)
    forged = replace(proof, leaf_index=2, size=3)
    assert verify_inclusion(root, leaf, forged)
    assert not verify_inclusion(root, leaf, forged, size=5)


@given(case=proof_cases, other=st.integers(0, 299))
def test_wrong_leaf_fails(case: tuple[int, int], other: int) -> None:
    root, _, proof = _proof_case(*case)
    if other == proof.leaf_index:
        other = (other + 1) % 300
    assert not verify_inclusion(root, leaf_hash(_data(other)), proof)
    assert not verify_inclusion(root, leaf_hash(b"never appended"), proof)


@given(case=proof_cases, extra=st.binary(min_size=32, max_size=32))
def test_truncated_or_extended_proof_fails(case: tuple[int, int], extra: bytes) -> None:
    root, leaf, proof = _proof_case(*case)
    assert not verify_inclusion(root, leaf, replace(proof, path=(*proof.path, extra)))
    assert not verify_inclusion(root, leaf, replace(proof, peaks=(*proof.peaks, extra)))
    assert not verify_inclusion(root, leaf, replace(proof, peaks=(extra, *proof.peaks)))
    if proof.path:
        assert not verify_inclusion(root, leaf, replace(proof, path=proof.path[:-1]))
    if proof.peaks:
        assert not verify_inclusion(root, leaf, replace(proof, peaks=proof.peaks[1:]))


def test_proof_for_an_older_size_does_not_verify_against_a_newer_root() -> None:
    root_20, leaf, proof = _proof_case(20, 3)
    root_21, _, _ = _proof_case(21, 3)
    assert verify_inclusion(root_20, leaf, proof)
    assert not verify_inclusion(root_21, leaf, proof)


@given(
    index=st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=2)),
    size=st.one_of(st.integers(), st.none(), st.floats()),
    path=st.one_of(
        st.lists(st.binary(max_size=40), max_size=10).map(tuple),
        st.none(),
        st.lists(st.integers(), max_size=3).map(tuple),
    ),
    peaks=st.one_of(st.lists(st.binary(max_size=40), max_size=10).map(tuple), st.text()),
    root=st.one_of(st.binary(max_size=40), st.none()),
    leaf=st.one_of(st.binary(max_size=40), st.integers()),
)
def test_verify_never_raises_on_garbage(
    index: object, size: object, path: object, peaks: object, root: object, leaf: object
) -> None:
    proof = InclusionProof(leaf_index=index, size=size, path=path, peaks=peaks)  # type: ignore[arg-type]
    assert verify_inclusion(root, leaf, proof) is False  # type: ignore[arg-type]


def test_verify_rejects_non_proof_objects() -> None:
    root, leaf, _ = _proof_case(5, 1)
    assert verify_inclusion(root, leaf, None) is False  # type: ignore[arg-type]


def test_appended_by_inverts_the_positions_each_append_returns() -> None:
    from ian.chain.mmr import appended_by

    m = MMR()
    for i in range(300):
        first = m.node_count
        nodes = m.append_leaf_hash(leaf_hash(i.to_bytes(4, "big")))
        for offset in range(len(nodes)):
            assert appended_by(first + offset) == (i, offset)
