"""Blocks: the sequencer's signed, ordered batches of accepted contributions.

A block header is hashed as canonical JSON (hex for bytes)::

    {"entries_hash", "goals": {goal_id: {"leaderboard_root", "leaderboard_size",
     "log_root", "log_size"}}, "height", "parent_hash", "sequencer", "sequencer_key",
     "timestamp_ms"}

``entries_hash`` = sha256 of the entries' contribution hashes concatenated in block order;
``goals`` holds the roots after the block for every goal the block touched. The block hash is
sha256 of that document, and the sequencer signs the 32-byte block hash with its Ed25519
identity; ``sequencer_key`` is that public key (raw, hex) and ``sequencer`` its node id.
Height 1 is the first block; its parent is 32 zero bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ian.chain.contributions import Contribution
from ian.chain.hashing import canonical_json

GENESIS_HASH = bytes(32)


@dataclass(frozen=True, slots=True)
class GoalRoots:
    log_size: int
    log_root: bytes
    leaderboard_size: int
    leaderboard_root: bytes

    def to_doc(self) -> dict[str, Any]:
        return {
            "leaderboard_root": self.leaderboard_root.hex(),
            "leaderboard_size": self.leaderboard_size,
            "log_root": self.log_root.hex(),
            "log_size": self.log_size,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> GoalRoots:
        return cls(
            log_size=int(doc["log_size"]),
            log_root=bytes.fromhex(doc["log_root"]),
            leaderboard_size=int(doc["leaderboard_size"]),
            leaderboard_root=bytes.fromhex(doc["leaderboard_root"]),
        )


@dataclass(frozen=True, slots=True)
class BlockHeader:
    height: int
    parent_hash: bytes
    timestamp_ms: int
    sequencer: str
    sequencer_key: bytes
    entries_hash: bytes
    goals: dict[str, GoalRoots]

    def to_doc(self) -> dict[str, Any]:
        return {
            "entries_hash": self.entries_hash.hex(),
            "goals": {gid: roots.to_doc() for gid, roots in sorted(self.goals.items())},
            "height": self.height,
            "parent_hash": self.parent_hash.hex(),
            "sequencer": self.sequencer,
            "sequencer_key": self.sequencer_key.hex(),
            "timestamp_ms": self.timestamp_ms,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> BlockHeader:
        return cls(
            height=int(doc["height"]),
            parent_hash=bytes.fromhex(doc["parent_hash"]),
            timestamp_ms=int(doc["timestamp_ms"]),
            sequencer=str(doc["sequencer"]),
            sequencer_key=bytes.fromhex(doc["sequencer_key"]),
            entries_hash=bytes.fromhex(doc["entries_hash"]),
            goals={gid: GoalRoots.from_doc(r) for gid, r in doc["goals"].items()},
        )

    def hash(self) -> bytes:
        return hashlib.sha256(canonical_json(self.to_doc())).digest()


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    hash: bytes
    signature: bytes
    entries: tuple[Contribution, ...]

    @property
    def height(self) -> int:
        return self.header.height


def entries_hash(contribution_hashes: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(contribution_hashes)).digest()


class InvalidBlockError(ValueError):
    """A block that must not be applied; the message says why (scored against its sender)."""


class ParentMismatchError(InvalidBlockError):
    """A well-formed next block whose parent is not our head: evidence that our chain and the
    sender's differ (divergence), not that the sender misbehaved."""


def check_block_signature(block: Block, sequencer: str | None) -> None:
    """The block hash matches its header and is signed by the key in the header, whose node id
    is ``sequencer`` (if given)."""
    from ian.identity import node_id_for, verify_signature

    h = block.header
    if h.hash() != block.hash:
        raise InvalidBlockError(f"block {h.height}: hash does not match its header")
    if node_id_for(h.sequencer_key) != h.sequencer:
        raise InvalidBlockError(f"block {h.height}: sequencer key does not match its node id")
    if sequencer is not None and h.sequencer != sequencer:
        raise InvalidBlockError(
            f"block {h.height}: signed by {h.sequencer[:12]}…, not the sequencer {sequencer[:12]}…"
        )
    if not verify_signature(h.sequencer_key, block.signature, block.hash):
        raise InvalidBlockError(f"block {h.height}: bad signature")
