"""Inputs to and outputs of :meth:`ian.consensus.core.ConsensusCore.step`.

Events come in; actions come out as a list the driver executes **in order**. The ordering is the
durability contract: every :class:`Durable` action (hard state, log truncation, log append,
certificate) must be on stable storage (fsynced) before the driver performs any action that
follows it in the same list. Sends that depend on a vote or an append therefore never leave the
node before the vote or the block is durable; a crash between the two loses both, which is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ian.consensus.log import ColdLog, ListColdLog, window_base
from ian.consensus.types import (
    AuthorityChange,
    Block,
    CommitCertificate,
    Message,
)

__all__ = [
    "Accepted",
    "Action",
    "Answer",
    "AppendLog",
    "Apply",
    "Commit",
    "Durable",
    "DurableState",
    "Event",
    "ForkDetected",
    "ForkEvidence",
    "Outcome",
    "PersistHardState",
    "Persisted",
    "Propose",
    "ProposeChange",
    "Received",
    "Redirect",
    "Rejected",
    "Restart",
    "Role",
    "RoleChanged",
    "Send",
    "StoreCertificate",
    "Tick",
    "TruncateLog",
    "Unavailable",
]


class Role(StrEnum):
    """What a node is doing now. Authorities are followers, (pre-)candidates or the leader."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


@dataclass
class DurableState:
    """What survives a crash: everything the driver made durable through :class:`Durable`
    actions, plus ``applied_height`` (the driver's own record of the blocks it has applied)."""

    term: int = 0
    voted_for: str | None = None
    #: the blocks at heights ``base + 1 ..``; those at or below ``base`` are read from ``cold``
    log: list[Block] = field(default_factory=list)
    #: commit certificates by height (at least those at heights >= ``base``)
    certificates: dict[int, CommitCertificate] = field(default_factory=dict)
    applied_height: int = 0
    base: int = 0
    cold: ColdLog | None = None
    #: the authority-change blocks at heights <= ``base`` (those above are in ``log``)
    changes: list[Block] = field(default_factory=list)

    @property
    def height(self) -> int:
        """The height of the last block in the log."""
        return self.base + len(self.log)

    def windowed(self, keep: int) -> DurableState:
        """What a start-up loads from this state, held whole (the simulator's and the tests'
        disks): the blocks from ``keep`` below the applied mark (:func:`.log.window_base`), the
        authority changes below them, and the whole state, read live, as the cold log."""
        if self.base:
            raise ValueError("only a state held whole can be windowed")
        base = window_base(self.applied_height, max(self.certificates, default=0), keep)
        return DurableState(
            self.term,
            self.voted_for,
            self.log[base:],
            {h: c for h, c in self.certificates.items() if h >= base},
            self.applied_height,
            base,
            ListColdLog(self.log, self.certificates),
            [b for b in self.log[:base] if b.change is not None],
        )

    def block(self, height: int) -> Block:
        """The block at ``height`` (1-based), from memory or from ``cold``."""
        if height > self.base:
            return self.log[height - 1 - self.base]
        if self.cold is None or height < 1:
            raise IndexError(f"no block at height {height}")
        return self.cold.blocks(height, height)[0]


# --- events ---


@dataclass(frozen=True)
class Tick:
    """The driver's clock reads ``now`` seconds (any origin; may jump either way)."""

    now: float


@dataclass(frozen=True)
class Received:
    """``message`` arrived from ``sender``, a node id the transport authenticated."""

    sender: str
    message: Message


@dataclass(frozen=True)
class Propose:
    """A client asks to append ``payload``; answered once with :class:`Answer`."""

    request_id: str
    payload: bytes


@dataclass(frozen=True)
class ProposeChange:
    """An operator asks to add or remove one authority; answered once with :class:`Answer`."""

    request_id: str
    change: AuthorityChange


@dataclass(frozen=True)
class Persisted:
    """The log is durable up to ``height`` whose block has ``block_hash`` (after AppendLog)."""

    height: int
    block_hash: bytes


@dataclass(frozen=True)
class Restart:
    """The node came back from a crash with ``state`` read from disk; all else is forgotten."""

    state: DurableState
    now: float


Event = Tick | Received | Propose | ProposeChange | Persisted | Restart


# --- actions ---


@dataclass(frozen=True)
class Send:
    """Send ``message`` to ``to`` (best effort: it may be lost, late or duplicated)."""

    to: str
    message: Message


class Durable:
    """Marker: the driver must make this durable before performing any later action."""


@dataclass(frozen=True)
class PersistHardState(Durable):
    """Store ``current_term`` and ``voted_for``."""

    term: int
    voted_for: str | None


@dataclass(frozen=True)
class TruncateLog(Durable):
    """Remove the log's blocks from ``from_height`` on. Never at or below the commit height."""

    from_height: int


@dataclass(frozen=True)
class AppendLog(Durable):
    """Append ``blocks`` (consecutive, extending the log) atomically: all or none survive a
    crash. Then feed :class:`Persisted` for the last of them."""

    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class StoreCertificate(Durable):
    """Store ``certificate`` with the block it certifies."""

    certificate: CommitCertificate


@dataclass(frozen=True)
class Commit:
    """Blocks up to ``height`` are committed; ``certificate`` certifies the block at ``height``."""

    height: int
    certificate: CommitCertificate


@dataclass(frozen=True)
class Apply:
    """Apply ``block`` (committed) to the visible state; emitted once per height, in order."""

    block: Block


@dataclass(frozen=True)
class Accepted:
    """The proposal is committed at ``height`` in block ``block_hash``."""

    height: int
    block_hash: bytes


@dataclass(frozen=True)
class Redirect:
    """This node does not lead; ``leader`` (proved by an election certificate) does."""

    leader: str


@dataclass(frozen=True)
class Unavailable:
    """No leader here now, or leadership was lost before commit: the outcome is unknown
    (the proposal may still commit). Retry after ``retry_after`` seconds."""

    retry_after: float


@dataclass(frozen=True)
class Rejected:
    """The request can never succeed as given (e.g. removing an unknown authority)."""

    reason: str


Outcome = Accepted | Redirect | Unavailable | Rejected


@dataclass(frozen=True)
class Answer:
    """The one answer to the client request ``request_id``."""

    request_id: str
    outcome: Outcome


@dataclass(frozen=True)
class ForkEvidence:
    """Two valid commit certificates for different blocks at ``height``.

    ``ours`` certifies ``our_block`` or a descendant of it in our log; ``theirs`` certifies
    ``their_block``. Keep both: they prove that a majority of authorities signed two histories.
    """

    height: int
    our_block: Block
    ours: CommitCertificate
    their_block: Block
    theirs: CommitCertificate


@dataclass(frozen=True)
class ForkDetected:
    """The node stops committing and applying: alert an operator with ``evidence``."""

    evidence: ForkEvidence


@dataclass(frozen=True)
class RoleChanged:
    """Role, term or known leader changed (for status and metrics)."""

    role: Role
    term: int
    leader: str | None


Action = (
    Send
    | PersistHardState
    | TruncateLog
    | AppendLog
    | StoreCertificate
    | Commit
    | Apply
    | Answer
    | ForkDetected
    | RoleChanged
)
