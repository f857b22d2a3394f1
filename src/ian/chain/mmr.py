"""Merkle Mountain Range: the append-only log of a goal (ARCHITECTURE §8).

Definitions (interoperable; all hashes are SHA-256, 32 bytes):

- leaf hash ``= sha256(0x00 ‖ data)``; node hash ``= sha256(0x01 ‖ left ‖ right)``.
- An MMR of ``n`` leaves is a list of perfect binary trees ("mountains"), one per set bit of
  ``n``, highest first; their roots are the *peaks*, left to right (leftmost = highest).
- root = bag the peaks right to left: ``acc = peaks[-1]``; for each earlier peak ``p`` from right
  to left ``acc = sha256(0x01 ‖ p ‖ acc)``. The root of the empty MMR is 32 zero bytes.
- Positions are 0-based post-order node positions: leaf 0 at 0, leaf 1 at 1, their parent at 2,
  leaf 2 at 3, ... An MMR of ``n`` leaves has ``2n - popcount(n)`` nodes.

Inclusion proof of leaf ``i`` in an MMR of ``size`` leaves: ``path`` holds the sibling hashes
from the leaf up to (excluding) its mountain's peak, bottom-up; ``peaks`` holds the *other*
peaks, left to right, i.e. every peak except the one of the leaf's mountain. The verifier
recomputes the leaf's peak from the path (bit ``k`` of the leaf's index within its mountain says
whether the level-``k`` sibling is on the left), inserts it at its mountain's index among the
other peaks, bags all peaks and compares with the root. Mountain shapes follow from ``size``
alone, so ``leaf_index`` and ``size`` fix the expected path and peak counts exactly. The root
does not commit to ``size``: verifiers must check ``size`` against the leaf count anchored with
the root (``verify_inclusion(..., size=log_size)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MMR",
    "InclusionProof",
    "bag_peaks",
    "inclusion_proof",
    "leaf_hash",
    "leaf_position",
    "node_count",
    "node_hash",
    "peak_positions",
    "proof_positions",
    "root_of_leaf_hashes",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = bytes(HASH_SIZE)
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Return ``sha256(0x00 ‖ data)``."""
    return sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``sha256(0x01 ‖ left ‖ right)``."""
    return sha256(_NODE + left + right).digest()


def bag_peaks(peaks: Sequence[bytes]) -> bytes:
    """Return the root of peaks given left to right; ``EMPTY_ROOT`` for no peaks."""
    if not peaks:
        return EMPTY_ROOT
    acc = peaks[-1]
    for i in range(len(peaks) - 2, -1, -1):
        acc = sha256(_NODE + peaks[i] + acc).digest()
    return acc


def node_count(leaves: int) -> int:
    """Return the number of MMR nodes holding ``leaves`` leaves (``2n - popcount(n)``)."""
    if leaves < 0:
        raise ValueError(f"leaf count must be >= 0, got {leaves}")
    return 2 * leaves - leaves.bit_count()


def leaf_position(leaf_index: int) -> int:
    """Return the node position of leaf ``leaf_index`` (the node count before it was added)."""
    return node_count(leaf_index)


def appended_by(pos: int) -> tuple[int, int]:
    """``(leaf_index, offset)``: node ``pos`` was added by appending leaf ``leaf_index``, as the
    ``offset``-th node of that append (0 = the leaf itself, then the parents it completed)."""
    if pos < 0:
        raise ValueError(f"position must be >= 0, got {pos}")
    lo, hi = 0, pos  # largest i with node_count(i) <= pos; node_count(i) >= i
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if 2 * mid - mid.bit_count() <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo, pos - (2 * lo - lo.bit_count())


def _mountains(leaves: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(height, first_leaf, first_position)`` of each mountain, left to right."""
    first_leaf = 0
    first_pos = 0
    for height in range(leaves.bit_length() - 1, -1, -1):
        if leaves >> height & 1:
            yield height, first_leaf, first_pos
            first_leaf += 1 << height
            first_pos += (2 << height) - 1


def peak_positions(leaves: int) -> list[int]:
    """Return the node positions of the peaks of an MMR of ``leaves`` leaves, left to right."""
    if leaves < 0:
        raise ValueError(f"leaf count must be >= 0, got {leaves}")
    return [pos + (2 << height) - 2 for height, _, pos in _mountains(leaves)]


def _locate(leaf_index: int, size: int) -> tuple[int, int, int, int]:
    """Return ``(mountain_index, height, index_in_mountain, first_position)`` of a leaf."""
    if size < 1:
        raise ValueError(f"an MMR proof needs size >= 1, got {size}")
    if not 0 <= leaf_index < size:
        raise IndexError(f"leaf index {leaf_index} outside an MMR of {size} leaves")
    for mountain, (height, first_leaf, first_pos) in enumerate(_mountains(size)):
        if leaf_index < first_leaf + (1 << height):
            return mountain, height, leaf_index - first_leaf, first_pos
    raise AssertionError("unreachable: the mountains cover every leaf")  # pragma: no cover


def proof_positions(leaf_index: int, size: int) -> tuple[list[int], list[int]]:
    """Return ``(path_positions, other_peak_positions)`` for a proof (see module docstring).

    ``path_positions`` run bottom-up from the leaf's sibling; ``other_peak_positions`` run left
    to right. Raises ``ValueError`` if ``size < 1`` and ``IndexError`` if the leaf is outside.
    """
    mountain, height, local, offset = _locate(leaf_index, size)
    top_down: list[int] = []
    for level in range(height, 0, -1):
        child_nodes = (1 << level) - 1  # nodes in each child subtree
        left_root = offset + child_nodes - 1
        if local >> (level - 1) & 1:
            top_down.append(left_root)
            offset += child_nodes
        else:
            top_down.append(left_root + child_nodes)
    top_down.reverse()
    peaks = peak_positions(size)
    del peaks[mountain]
    return top_down, peaks


@dataclass(frozen=True)
class InclusionProof:
    """Proof that a leaf is at ``leaf_index`` in the MMR of ``size`` leaves.

    ``path``: sibling hashes from the leaf up to its peak (bottom-up, ``height`` entries).
    ``peaks``: the other peaks (all but the leaf's own), left to right.
    """

    leaf_index: int
    size: int
    path: tuple[bytes, ...]
    peaks: tuple[bytes, ...]


def inclusion_proof(leaf_index: int, size: int, get_node: Callable[[int], bytes]) -> InclusionProof:
    """Build the proof of ``leaf_index`` in the MMR of ``size`` leaves.

    ``get_node(position)`` returns the hash stored at an MMR node position (any position below
    ``node_count(size)``). Raises ``ValueError`` if ``size < 1``, ``IndexError`` if the leaf is
    outside.
    """
    path_positions, other_peak_positions = proof_positions(leaf_index, size)
    return InclusionProof(
        leaf_index=leaf_index,
        size=size,
        path=tuple(get_node(p) for p in path_positions),
        peaks=tuple(get_node(p) for p in other_peak_positions),
    )


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def verify_inclusion(
    root: bytes, leaf_hash: bytes, proof: InclusionProof, *, size: int | None = None
) -> bool:
    """Return True iff ``proof`` shows ``leaf_hash`` at ``proof.leaf_index`` under ``root``.

    The root does not commit to the leaf count (a 5-leaf root is also a valid 6-leaf "root"
    when the last peak is read as a 2-leaf mountain), so ``proof.size`` and hence the index
    are only authenticated if the caller passes the trusted ``size`` that came with the root
    (e.g. ``log_size`` of an anchored commit); then ``proof.size`` must equal it.

    Never raises: a malformed proof (wrong types, counts, lengths, index) is just False.
    """
    if not (_is_hash(root) and _is_hash(leaf_hash) and isinstance(proof, InclusionProof)):
        return False
    # Typed as object: a proof decoded from the wire may hold anything, checked below.
    index = proof.leaf_index
    path: object = proof.path
    peaks: object = proof.peaks
    if type(index) is not int or type(proof.size) is not int:
        return False
    if size is not None and proof.size != size:
        return False
    size = proof.size
    if not (isinstance(path, tuple | list) and isinstance(peaks, tuple | list)):
        return False
    if size < 1 or not 0 <= index < size:
        return False
    mountain, height, local, _ = _locate(index, size)
    if len(path) != height or len(peaks) != size.bit_count() - 1:
        return False
    if not (all(_is_hash(h) for h in path) and all(_is_hash(h) for h in peaks)):
        return False
    acc = leaf_hash
    for level, sibling in enumerate(path):
        if local >> level & 1:
            acc = sha256(_NODE + sibling + acc).digest()
        else:
            acc = sha256(_NODE + acc + sibling).digest()
    all_peaks = [*peaks[:mountain], acc, *peaks[mountain:]]
    return bag_peaks(all_peaks) == root


class MMR:
    """An MMR's leaf count and peaks: O(log n) memory; the full node set lives in the store.

    Invariant: ``len(peaks) == popcount(size)``, peaks left to right (highest first).
    """

    __slots__ = ("_leaves", "_peaks", "_root")

    def __init__(self) -> None:
        self._leaves = 0
        self._peaks: list[bytes] = []
        self._root: bytes | None = EMPTY_ROOT

    @classmethod
    def from_peaks(cls, leaves: int, peaks: Sequence[bytes]) -> MMR:
        """Rebuild from a leaf count and its peaks; ``ValueError`` if they do not fit."""
        if leaves < 0:
            raise ValueError(f"leaf count must be >= 0, got {leaves}")
        if len(peaks) != leaves.bit_count():
            raise ValueError(
                f"an MMR of {leaves} leaves has {leaves.bit_count()} peaks, got {len(peaks)}"
            )
        if not all(_is_hash(p) for p in peaks):
            raise ValueError(f"peaks must be {HASH_SIZE}-byte hashes")
        mmr = cls()
        mmr._leaves = leaves
        mmr._peaks = list(peaks)
        mmr._root = None
        return mmr

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._leaves

    @property
    def node_count(self) -> int:
        """Number of nodes (the position the next appended leaf will take)."""
        return 2 * self._leaves - self._leaves.bit_count()

    @property
    def peaks(self) -> list[bytes]:
        """A copy of the peaks, left to right."""
        return list(self._peaks)

    def root(self) -> bytes:
        """Return the bagged root (cached until the next append)."""
        root = self._root
        if root is None:
            root = self._root = bag_peaks(self._peaks)
        return root

    def append_leaf_hash(self, h: bytes) -> list[bytes]:
        """Append a leaf by its hash; return the nodes added, in position order.

        The leaf comes first, then each parent it completed: the caller stores them at positions
        ``node_count_before``, ``node_count_before + 1``, ...
        """
        if len(h) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(h)}")
        added = [h]
        peaks = self._peaks
        n = self._leaves
        # Each trailing 1 bit of n is a mountain of the same height as the new one: merge.
        while n & 1:
            h = sha256(_NODE + peaks.pop() + h).digest()
            added.append(h)
            n >>= 1
        peaks.append(h)
        self._leaves += 1
        self._root = None
        return added

    def append(self, data: bytes) -> list[bytes]:
        """Append ``data`` as a leaf (hashed with ``leaf_hash``); see ``append_leaf_hash``."""
        return self.append_leaf_hash(sha256(_LEAF + data).digest())

    def copy(self) -> MMR:
        """Return an independent copy."""
        other = MMR()
        other._leaves = self._leaves
        other._peaks = list(self._peaks)
        other._root = self._root
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MMR):
            return NotImplemented
        return self._leaves == other._leaves and self._peaks == other._peaks

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"MMR(size={self._leaves}, root={self.root().hex()})"


def root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return the root of the MMR whose leaves have the given hashes, in order."""
    peaks: list[bytes] = []
    for n, h in enumerate(hashes):
        while n & 1:
            h = sha256(_NODE + peaks.pop() + h).digest()
            n >>= 1
        peaks.append(h)
    return bag_peaks(peaks)
