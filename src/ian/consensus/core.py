"""The sans-I/O consensus core: Raft with pre-vote, CheckQuorum, learners and certificates.

:meth:`ConsensusCore.step` takes one :mod:`event <ian.consensus.events>` and returns the actions
the driver must perform, in order (see the durability contract in :mod:`ian.consensus.events`).
The core owns no socket, thread, clock or randomness: time arrives in :class:`Tick` events and
the randomized election timeout is drawn from the ``rng`` the caller injects, so a run is a pure
function of its inputs.

Rules (Raft, Ongaro & Ousterhout 2014, Figure 2, plus the IAN additions):

- ``current_term`` and ``voted_for`` are durable before any vote or request leaves the node;
  a vote is granted at most once per term, only to a candidate whose log is at least as up to
  date (last term, then last height), and never while a leader is known to be alive (lease).
- An authority that hears no leader for its election timeout runs a pre-vote for ``term + 1``
  without changing its term, and a real election only if a majority would grant it.
- Votes are signed; a majority of them is the leader's election certificate, carried by every
  AppendBlocks and by the leader's first block of its term. A node accepts a leader only with a
  certificate that verifies (or, for an authority whose log cannot tell the set that elected it,
  from an authenticated node that is or was an authority in its log: plain Raft). A stranger
  is never followed and never votes or gets a vote.
- Acks are signed; a majority of acks for a block of the leader's current term is its commit
  certificate. Earlier-term blocks commit only through a later certificate (Raft §5.4.2).
- A node's commit height only ever advances, always to a block it holds with a certificate it
  verified; blocks at or below it are never truncated. Two valid certificates for different
  blocks at one height stop the node (:class:`ForkDetected`).
- Learners (non-authorities) never vote and hold only certified blocks.
- One authority change at a time: in force as soon as appended, the next waits for its commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Literal, Protocol

from ian.consensus.certificates import (
    majority,
    verify_commit_certificate,
    verify_election_certificate,
)
from ian.consensus.errors import CertificateError
from ian.consensus.events import (
    Accepted,
    Action,
    Answer,
    AppendLog,
    Apply,
    Commit,
    DurableState,
    Event,
    ForkDetected,
    ForkEvidence,
    Persisted,
    PersistHardState,
    Propose,
    ProposeChange,
    Received,
    Redirect,
    Rejected,
    Restart,
    Role,
    RoleChanged,
    Send,
    StoreCertificate,
    Tick,
    TruncateLog,
    Unavailable,
)
from ian.consensus.log import BlockLog
from ian.consensus.types import (
    Ack,
    AppendBlocks,
    AppendResponse,
    AuthorityChange,
    AuthoritySet,
    Block,
    BlockKind,
    CertifiedBlocks,
    CommitCertificate,
    ElectionCertificate,
    Signer,
    Verifier,
    Vote,
    VoteRequest,
    VoteResponse,
    genesis_hash,
)

__all__ = ["ConsensusCore", "ConsensusParams", "RandomSource"]


class RandomSource(Protocol):
    """Where election timeouts come from (a seeded ``random.Random`` in the simulator)."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


class ConsensusParams:
    """Timing (seconds of the driver's clock) and batch limits, the same on every node."""

    __slots__ = (
        "election_timeout_max",
        "election_timeout_min",
        "heartbeat_interval",
        "max_blocks_per_message",
        "max_message_bytes",
        "memory_bytes",
    )

    def __init__(
        self,
        *,
        election_timeout_min: float = 1.0,
        election_timeout_max: float = 2.0,
        heartbeat_interval: float = 0.2,
        max_blocks_per_message: int = 32,
        max_message_bytes: int = 1 << 62,
        memory_bytes: int = 16 << 20,
    ) -> None:
        if not 0 < heartbeat_interval < election_timeout_min <= election_timeout_max:
            raise ValueError("need 0 < heartbeat_interval < election_timeout_min <= max")
        self.election_timeout_min = election_timeout_min
        self.election_timeout_max = election_timeout_max
        self.heartbeat_interval = heartbeat_interval
        self.max_blocks_per_message = max_blocks_per_message
        #: payload bytes one message carries at most (one block is always sent, whatever size)
        self.max_message_bytes = max_message_bytes
        #: roughly the most bytes of blocks held in memory beyond those not yet applied or
        #: durable; older blocks are read back from the state's cold log (:mod:`.log`)
        self.memory_bytes = memory_bytes


class ConsensusCore:
    """One node's consensus state machine. Feed it events with :meth:`step`."""

    def __init__(
        self,
        *,
        chain_id: str,
        genesis_authorities: AuthoritySet,
        signer: Signer,
        verifier: Verifier,
        rng: RandomSource,
        params: ConsensusParams | None = None,
        learners: Iterable[str] = (),
        state: DurableState | None = None,
        now: float = 0.0,
    ) -> None:
        self.chain_id = chain_id
        self.node_id = signer.node_id
        self.params = params or ConsensusParams()
        self._genesis_authorities = dict(genesis_authorities)
        self._signer = signer
        self._verifier = verifier
        self._rng = rng
        self._learners = frozenset(learners) - {self.node_id}
        self._restore(state or DurableState(), now)

    # ------------------------------------------------------------------ read-only view

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def leader_id(self) -> str | None:
        """The leader of ``term`` as proved by an election certificate, if known."""
        return self._leader

    @property
    def commit_height(self) -> int:
        return self._commit

    @property
    def last_height(self) -> int:
        return len(self._log)

    @property
    def memory_base(self) -> int:
        """Blocks at or below this height are not held in memory (read back when needed)."""
        return self._log.base

    @property
    def memory_bytes(self) -> int:
        """Roughly what the blocks held in memory take (bounded by ``params.memory_bytes``
        plus those not yet applied or durable)."""
        return self._log.memory_bytes

    @property
    def forked(self) -> bool:
        return self._forked

    @property
    def applied_height(self) -> int:
        """The highest block handed out in an :class:`Apply`."""
        return self._applied

    @property
    def learners(self) -> frozenset[str]:
        return self._learners

    def match_heights(self) -> dict[str, int]:
        """A leader's view of how far each peer's log matches its own (empty otherwise)."""
        return dict(self._match) if self._role is Role.LEADER else {}

    def set_learners(self, learners: Iterable[str]) -> None:
        """The non-authorities a leader keeps supplied with certified blocks (a node's
        connected followers change over time). Not an event: it moves no state a peer sees
        until the next heartbeat, and the simulator's learners are fixed."""
        self._learners = frozenset(learners) - {self.node_id}
        if self._role is Role.LEADER:
            self._sync_peers()

    def block(self, height: int) -> Block:
        """The block at ``height`` (1-based) in this node's log."""
        return self._log[height - 1]

    def authorities(self) -> dict[str, bytes]:
        """The authority set in force at the end of this node's log."""
        return dict(self._authorities_at(len(self._log)))

    def authorities_at(self, height: int) -> dict[str, bytes]:
        """The authority set in force at ``height`` (changes at heights <= it applied)."""
        return dict(self._authorities_at(height))

    # ------------------------------------------------------------------ entry point

    def step(self, event: Event) -> list[Action]:
        """Process one event; return the actions to perform, in order."""
        out: list[Action] = []
        if isinstance(event, Restart):
            self._restore(event.state, event.now)
            self._apply_committed(out)
            out.append(RoleChanged(self._role, self._term, self._leader))
            return out
        if self._forked:
            if isinstance(event, Propose | ProposeChange):
                out.append(Answer(event.request_id, Unavailable(self._retry_after())))
            return out
        before = (self._role, self._term, self._leader)
        if isinstance(event, Tick):
            self._on_tick(event.now, out)
        elif isinstance(event, Received):
            self._on_message(event.sender, event, out)
        elif isinstance(event, Propose):
            self._on_propose(event.request_id, event.payload, None, out)
        elif isinstance(event, ProposeChange):
            self._on_propose(event.request_id, b"", event.change, out)
        elif isinstance(event, Persisted):
            self._on_persisted(event, out)
        if self._applied < self._commit:
            self._apply_committed(out)  # a backlog bigger than one step's share (see there)
        if (self._role, self._term, self._leader) != before:
            out.append(RoleChanged(self._role, self._term, self._leader))
        return out

    # ------------------------------------------------------------------ state

    def _restore(self, state: DurableState, now: float) -> None:
        self._term = state.term
        self._voted_for = state.voted_for
        self._log = BlockLog(state.base, list(state.log), state.certificates, state.cold)
        self._rebuild_configs(state.changes)
        self._commit = state.base  # blocks below a state's base are committed (see .log)
        for height, cert in state.certificates.items():
            if (
                state.base < height <= len(self._log)
                and self._log[height - 1].hash == cert.block_hash
            ):
                self._commit = max(self._commit, height)
        self._applied = min(state.applied_height, self._commit)
        self._durable = len(self._log)
        self._forked = False
        self._leader: str | None = None
        self._election: ElectionCertificate | None = None
        self._clock = 0.0
        self._last_now = now
        self._leader_contact: float | None = None
        self._votes: dict[str, Vote] = {}
        self._candidacy = (0, 0)
        self._stood_aside = False  # the last pre-vote round ended by standing aside (_yield_to)
        self._may_stand_aside = True  # this round may (not twice in a row)
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._learner_mode: set[str] = set()
        #: certified blocks sent to a peer and not answered yet: (last height, when sent)
        self._in_flight: dict[str, tuple[int, float]] = {}
        #: where the last AppendBlocks sent to each authority ended (see _on_append_response)
        self._sent_end: dict[str, int] = {}
        self._active: set[str] = set()
        self._acks: dict[int, dict[str, Ack]] = {}
        self._ack_cache: dict[tuple[int, int], Ack] = {}
        self._verified: set[CommitCertificate] = set()  # checked already: skip the signatures
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._heartbeat_due = 0.0
        self._quorum_check_due = 0.0
        self._role = Role.FOLLOWER if self._is_authority() else Role.LEARNER
        self._reset_election_timer()

    def _rebuild_configs(self, older_changes: list[Block]) -> None:
        """The authority sets along the log: ``older_changes`` are the change blocks below the
        in-memory part."""
        self._configs: list[tuple[int, dict[str, bytes]]] = [(0, self._genesis_authorities)]
        for block in [*older_changes, *self._log.recent()]:
            self._note_config(block)

    def _note_config(self, block: Block) -> None:
        if block.change is not None:
            self._configs.append((block.height, block.change.apply(self._configs[-1][1])))

    def _authorities_at(self, height: int) -> dict[str, bytes]:
        for at, members in reversed(self._configs):
            if at <= height:
                return members
        return self._genesis_authorities

    def _known_authorities(self) -> set[str]:
        """Every node that is or was an authority along this log (genesis included)."""
        return {nid for _, members in self._configs for nid in members}

    def _is_authority(self) -> bool:
        return self.node_id in self._authorities_at(len(self._log))

    def _hash_at(self, height: int) -> bytes:
        return genesis_hash(self.chain_id) if height == 0 else self._log[height - 1].hash

    def _last_term(self) -> int:
        return self._log[-1].term if self._log else 0

    def _retry_after(self) -> float:
        return self.params.election_timeout_max

    def _reset_election_timer(self) -> None:
        p = self.params
        spread = p.election_timeout_max - p.election_timeout_min
        self._election_due = self._clock + p.election_timeout_min + spread * self._rng.random()

    def _in_lease(self) -> bool:
        """A leader is known alive: refuse to help anyone unseat it (CheckQuorum's lease)."""
        if self._role is Role.LEADER:
            return True
        return (
            self._leader is not None
            and self._leader_contact is not None
            and self._clock - self._leader_contact < self.params.election_timeout_min
        )

    def _log_is_up_to_date(self, last_term: int, last_height: int) -> bool:
        """Raft §5.4.1: the candidate's log ends in a later term, or as long in the same term."""
        return (last_term, last_height) >= (self._last_term(), len(self._log))

    def _may_grant_vote(self, request: VoteRequest) -> bool:
        """Raft's vote rule: once per term, only to an up-to-date candidate."""
        return self._voted_for in (None, request.candidate) and self._log_is_up_to_date(
            request.last_term, request.last_height
        )

    def _become_follower(self, term: int, leader: str | None, out: list[Action]) -> None:
        if term > self._term:
            self._term = term
            self._voted_for = None
            out.append(PersistHardState(self._term, self._voted_for))
        if self._role is Role.LEADER:
            self._fail_pending(out)
        self._role = Role.FOLLOWER if self._is_authority() else Role.LEARNER
        if leader != self._leader:
            self._election = None
        self._leader = leader
        self._votes = {}

    def _fail_pending(self, out: list[Action]) -> None:
        for request_id in sorted(self._pending):
            out.append(Answer(request_id, Unavailable(self._retry_after())))
        self._pending.clear()

    # ------------------------------------------------------------------ time

    def _on_tick(self, now: float, out: list[Action]) -> None:
        # A clock that jumps backwards counts as no time passing; forwards, as time passing.
        self._clock += max(0.0, now - self._last_now)
        self._last_now = now
        if self._role is Role.LEADER:
            if self._clock >= self._quorum_check_due:
                if not self._check_quorum():
                    self._become_follower(self._term, None, out)
                    self._reset_election_timer()
                    return
                self._active = {self.node_id}
                self._quorum_check_due = self._clock + self.params.election_timeout_min
            if self._clock >= self._heartbeat_due:
                self._broadcast(out)
        elif self._role is not Role.LEARNER and self._clock >= self._election_due:
            self._start_pre_vote(out)

    def _check_quorum(self) -> bool:
        members = self._authorities_at(len(self._log))
        return len(self._active & members.keys()) >= majority(len(members))

    # ------------------------------------------------------------------ elections

    def _start_pre_vote(self, out: list[Action]) -> None:
        self._role = Role.PRE_CANDIDATE
        self._leader = None
        self._election = None
        self._candidacy = (self._last_term(), len(self._log))
        self._votes = {}
        self._may_stand_aside = not self._stood_aside
        self._stood_aside = False
        self._reset_election_timer()
        self._record_vote(self._own_vote("pre_vote", self._term + 1), out)
        if self._role is Role.PRE_CANDIDATE:
            self._request_votes(pre_vote=True, term=self._term + 1, out=out)

    def _start_election(self, out: list[Action]) -> None:
        self._term += 1
        self._voted_for = self.node_id
        self._role = Role.CANDIDATE
        self._votes = {}
        self._reset_election_timer()
        out.append(PersistHardState(self._term, self._voted_for))
        self._record_vote(self._own_vote("vote", self._term), out)
        if self._role is Role.CANDIDATE:
            self._request_votes(pre_vote=False, term=self._term, out=out)

    def _own_vote(self, kind: Literal["vote", "pre_vote"], term: int) -> Vote:
        last_term, last_height = self._candidacy
        return self._signed_vote(kind, term, self.node_id, last_term, last_height)

    def _signed_vote(
        self,
        kind: Literal["vote", "pre_vote"],
        term: int,
        candidate: str,
        last_term: int,
        last_height: int,
    ) -> Vote:
        """This node's signed (pre-)vote; the caller has made any durable change first."""
        draft = Vote(kind, self.chain_id, term, candidate, last_term, last_height, self.node_id)
        return replace(draft, signature=self._signer.sign(draft.signed_bytes()))

    def _request_votes(self, *, pre_vote: bool, term: int, out: list[Action]) -> None:
        last_term, last_height = self._candidacy
        request = VoteRequest(pre_vote, self.chain_id, term, self.node_id, last_term, last_height)
        for peer in sorted(self._authorities_at(len(self._log))):
            if peer != self.node_id:
                out.append(Send(peer, request))

    def _record_vote(self, vote: Vote, out: list[Action]) -> None:
        self._votes[vote.voter] = vote
        members = self._authorities_at(len(self._log))
        if len(self._votes.keys() & members.keys()) < majority(len(members)):
            return
        if self._role is Role.PRE_CANDIDATE:
            self._start_election(out)
        elif self._role is Role.CANDIDATE:
            self._become_leader(out)

    def _on_vote_request(self, sender: str, req: VoteRequest, out: list[Action]) -> None:
        # Like Raft (thesis §4.1), votes do not consult only the latest configuration: a node
        # just added or removed may be needed to elect a leader. But only nodes that are or were
        # authorities in this log vote or get votes; a stranger never does.
        known = self._known_authorities()
        if (
            sender != req.candidate
            or req.chain_id != self.chain_id
            or sender not in known
            or self.node_id not in known
        ):
            return
        if req.term < self._term:
            out.append(Send(sender, VoteResponse(req.pre_vote, self._term, None)))
            return
        if req.term > self._term and self._in_lease():
            return  # a live leader exists: do not let a disconnected node unseat it
        if req.pre_vote:
            grant = req.term > self._term and self._log_is_up_to_date(
                req.last_term, req.last_height
            )
            vote = self._signed_vote_for(req) if grant else None
            out.append(Send(sender, VoteResponse(True, self._term, vote)))
            if grant and self._role is Role.PRE_CANDIDATE and req.term == self._term + 1:
                self._yield_to(req)
            return
        if req.term > self._term:
            self._become_follower(req.term, None, out)
        vote = None
        if self._may_grant_vote(req):
            if self._voted_for != req.candidate:
                self._voted_for = req.candidate
                out.append(PersistHardState(self._term, self._voted_for))
            self._reset_election_timer()
            vote = self._signed_vote_for(req)
        out.append(Send(sender, VoteResponse(False, self._term, vote)))

    def _yield_to(self, req: VoteRequest) -> None:
        """Another pre-candidate for the same term asked for this one's pre-vote: two that go
        on together split the vote (each votes for itself), and nobody leads until a timer
        fires again (1-2 s more: 3 of 200 leader kills on loopback split it, up to 3.2 s). The one
        with the better log, else the one whose node id sorts first, goes on; this one stands
        aside, keeping the timer it drew, and votes for it. Liveness only: the winner is
        still elected by a majority's votes. Never twice in a row: a request's log position is
        only claimed, and an authority that claimed a better one at every round would otherwise
        keep this node from ever standing."""
        if not self._may_stand_aside:
            return
        theirs = (req.last_term, req.last_height)
        if theirs > self._candidacy or (theirs == self._candidacy and req.candidate < self.node_id):
            self._role = Role.FOLLOWER
            self._votes = {}
            self._stood_aside = True

    def _signed_vote_for(self, req: VoteRequest) -> Vote:
        kind: Literal["vote", "pre_vote"] = "pre_vote" if req.pre_vote else "vote"
        return self._signed_vote(kind, req.term, req.candidate, req.last_term, req.last_height)

    def _on_vote_response(self, sender: str, resp: VoteResponse, out: list[Action]) -> None:
        members = self._authorities_at(len(self._log))
        if resp.term > self._term and sender in members and resp.vote is None:
            self._become_follower(resp.term, None, out)
            self._reset_election_timer()
            return
        vote = resp.vote
        if vote is None:
            return
        if resp.pre_vote and self._role is Role.PRE_CANDIDATE:
            expected = ("pre_vote", self._term + 1)
        elif not resp.pre_vote and self._role is Role.CANDIDATE:
            expected = ("vote", self._term)
        else:
            return
        last_term, last_height = self._candidacy
        key = members.get(vote.voter)
        if (
            (vote.kind, vote.term) != expected
            or vote.chain_id != self.chain_id
            or vote.candidate != self.node_id
            or (vote.last_term, vote.last_height) != (last_term, last_height)
            or key is None
            or not self._verifier(key, vote.signature, vote.signed_bytes())
        ):
            return  # forged, replayed from another term, or for someone else: worthless
        self._record_vote(vote, out)

    def _become_leader(self, out: list[Action]) -> None:
        last_term, last_height = self._candidacy
        members = self._authorities_at(last_height)
        votes = tuple(sorted((v for v in self._votes.values() if v.voter in members), key=_voter))
        self._election = ElectionCertificate(
            self.chain_id, self._term, self.node_id, last_term, last_height, votes
        )
        self._role = Role.LEADER
        self._leader = self.node_id
        self._votes = {}
        self._next = {}
        self._match = {}
        self._learner_mode = set()
        self._in_flight = {}
        self._sent_end = {}
        self._acks = {}
        self._active = {self.node_id}
        self._quorum_check_due = self._clock + self.params.election_timeout_min
        self._sync_peers()
        # The first block of the term carries the election certificate and, once certified,
        # commits every earlier-term block before it (Raft §5.4.2, §8).
        block = Block.build(
            self.chain_id,
            height=len(self._log) + 1,
            term=self._term,
            parent_hash=self._hash_at(len(self._log)),
            kind=BlockKind.LEADER_START,
            election=self._election,
        )
        self._append_own(block, out)
        self._broadcast(out)

    # ------------------------------------------------------------------ leader

    def _peers(self) -> list[str]:
        members = self._authorities_at(len(self._log))
        return sorted((members.keys() | self._learners) - {self.node_id})

    def _sync_peers(self) -> None:
        peers = self._peers()
        members = self._authorities_at(len(self._log))
        for peer in peers:
            if peer not in self._next:
                # A learner is first sent the newest certified block: it learns the leader
                # at once, and answers with its height if it lacks the parent.
                start = len(self._log) + 1 if peer in members else max(1, self._commit)
                self._next[peer] = start
                self._match[peer] = 0
        for gone in set(self._next) - set(peers):
            del self._next[gone]
            del self._match[gone]
            self._learner_mode.discard(gone)
            self._in_flight.pop(gone, None)
            self._sent_end.pop(gone, None)

    def _append_own(self, block: Block, out: list[Action]) -> None:
        self._log.append(block)
        self._note_config(block)
        out.append(AppendLog((block,)))

    def _on_propose(
        self, request_id: str, payload: bytes, change: AuthorityChange | None, out: list[Action]
    ) -> None:
        if self._role is not Role.LEADER:
            if self._leader is not None and self._leader != self.node_id:
                out.append(Answer(request_id, Redirect(self._leader)))
            else:
                out.append(Answer(request_id, Unavailable(self._retry_after())))
            return
        kind = BlockKind.DATA
        if change is not None:
            reason = self._change_refusal(change)
            if reason == "busy":
                out.append(Answer(request_id, Unavailable(self.params.heartbeat_interval)))
                return
            if reason:
                out.append(Answer(request_id, Rejected(reason)))
                return
            kind = BlockKind.AUTHORITY_CHANGE
        block = Block.build(
            self.chain_id,
            height=len(self._log) + 1,
            term=self._term,
            parent_hash=self._hash_at(len(self._log)),
            kind=kind,
            payload=payload,
            change=change,
        )
        # Sent before the leader's own write is durable (Raft thesis §10.2.1): the followers
        # store it meanwhile; the leader counts its own ack only once Persisted says so.
        self._log.append(block)
        self._note_config(block)
        self._pending[request_id] = (block.height, block.hash)
        if change is not None:
            self._sync_peers()
        self._broadcast(out)
        out.append(AppendLog((block,)))

    def _change_refusal(self, change: AuthorityChange) -> str:
        if any(at > self._commit for at, _ in self._configs):
            return "busy"
        members = self._authorities_at(len(self._log))
        if change.op == "add" and change.node_id in members:
            return f"{change.node_id} is already an authority"
        if change.op == "add" and len(change.public_key) != 32:
            return "an added authority needs its 32-byte public key"
        if change.op == "remove" and change.node_id not in members:
            return f"{change.node_id} is not an authority"
        if change.op == "remove" and change.node_id == self.node_id:
            return "the leader cannot remove itself; remove it from another leader"
        return ""

    def _broadcast(self, out: list[Action]) -> None:
        self._heartbeat_due = self._clock + self.params.heartbeat_interval
        for peer in self._peers():
            self._send_to_peer(peer, out)

    def _send_to_peer(self, peer: str, out: list[Action]) -> None:
        assert self._election is not None
        members = self._authorities_at(len(self._log))
        if peer in members and self._next[peer] > self._commit:
            # An authority that lacks no committed block gets AppendBlocks, even one that was
            # catching up on certified blocks (so a joining authority sees its own addition).
            self._learner_mode.discard(peer)
        if peer in members and peer not in self._learner_mode:
            # Blocks already sent go unsent: messages to a peer arrive in order, and one that
            # was lost shows up as a refusal (below its prev), which sends from the gap again.
            first = max(self._next[peer], self._sent_end.get(peer, 0) + 1)
            nxt = min(first, len(self._log) + 1)
            prev = nxt - 1
            blocks = tuple(self._batch(nxt))
            self._sent_end[peer] = prev + len(blocks)
            cert = self._log.certificate(self._commit)
            out.append(
                Send(
                    peer,
                    AppendBlocks(
                        self._term,
                        self.node_id,
                        prev,
                        self._hash_at(prev),
                        blocks,
                        self._election,
                        cert,
                    ),
                )
            )
            return
        nxt = self._next[peer]
        sent = self._in_flight.get(peer)
        if (
            sent is not None
            and sent[0] >= nxt
            and self._clock - sent[1] < self.params.election_timeout_min
        ):
            return  # still taking the last batch: sending it again would only cost both sides
        # The furthest certified height within one message's limits, else the nearest one.
        batch = self._batch(nxt)
        heights = self._log.certified_heights(nxt, min(nxt + len(batch) - 1, self._commit))
        if heights:
            cert = self._log.certificate(heights[-1])
            batch = batch[: heights[-1] - nxt + 1]
        else:
            cert = self._log.lowest_certificate_from(nxt)
            if cert is None or cert.height > self._commit:
                return
            batch = self._log[nxt - 1 : cert.height]
        assert cert is not None
        self._in_flight[peer] = (cert.height, self._clock)
        out.append(
            Send(
                peer,
                CertifiedBlocks(self._term, self.node_id, tuple(batch), cert, self._election),
            )
        )

    def _batch(self, first: int) -> list[Block]:
        """The blocks a message starting at ``first`` carries: at most
        ``max_blocks_per_message`` blocks and ``max_message_bytes`` of payload (at least one)."""
        p = self.params
        return self._log.batch(first, p.max_blocks_per_message, p.max_message_bytes)

    def _on_append_response(self, sender: str, resp: AppendResponse, out: list[Action]) -> None:
        members = self._authorities_at(len(self._log))
        if resp.term > self._term and sender in members:
            self._become_follower(resp.term, None, out)
            self._reset_election_timer()
            return
        if self._role is not Role.LEADER or resp.term != self._term or sender not in self._next:
            return
        self._active.add(sender)
        if resp.learner:
            sent = self._in_flight.get(sender)
            if sent is None or resp.match_height >= sent[0]:
                # Answered: the next batch may go at once. An answer below what is on its way
                # (a refusal, or a learner asking again and again for old blocks, each read
                # back from disk) waits for the in-flight timeout like a lost one.
                self._in_flight.pop(sender, None)
            self._learner_mode.add(sender)
            self._match[sender] = min(resp.match_height, self._commit)
            self._next[sender] = self._match[sender] + 1
            if sender in members and self._match[sender] >= self._commit:
                # A new authority caught up on certified blocks: now send it the uncommitted
                # blocks, including the change that makes it one.
                self._learner_mode.discard(sender)
            if self._next[sender] <= self._commit:
                self._send_to_peer(sender, out)
            return
        self._learner_mode.discard(sender)
        if not resp.success:
            self._next[sender] = max(1, min(self._next[sender] - 1, resp.match_height + 1))
            self._sent_end.pop(sender, None)  # what was on its way did not all arrive
            self._send_to_peer(sender, out)
            return
        match = min(resp.match_height, len(self._log))
        self._match[sender] = max(self._match[sender], match)
        self._next[sender] = max(self._next[sender], match + 1)
        for ack in resp.acks:
            self._record_ack(sender, ack)
        self._advance_leader_commit(out)
        # More only if some block was never sent: an answer to an older message arriving while
        # newer blocks are on their way must not send them again (and have them answered again).
        unsent = max(self._next[sender], self._sent_end.get(sender, 0) + 1)
        if self._role is Role.LEADER and unsent <= len(self._log):
            self._send_to_peer(sender, out)

    def _record_ack(self, sender: str, ack: Ack) -> None:
        h = ack.height
        if (
            ack.signer != sender
            or ack.chain_id != self.chain_id
            or ack.term != self._term
            or not self._commit < h <= len(self._log)
            or self._log[h - 1].hash != ack.block_hash
            or self._log[h - 1].term != self._term
        ):
            return
        key = self._authorities_at(h).get(sender)
        if key is None or not self._verifier(key, ack.signature, ack.signed_bytes()):
            return
        self._acks.setdefault(h, {})[sender] = ack

    def _advance_leader_commit(self, out: list[Action]) -> None:
        for h in range(len(self._log), self._commit, -1):
            block = self._log[h - 1]
            if block.term != self._term:
                break  # earlier-term blocks commit only under a current-term block (§5.4.2)
            members = self._authorities_at(h)
            acks = {s: a for s, a in self._acks.get(h, {}).items() if s in members}
            if h <= self._durable and self.node_id in members:
                acks[self.node_id] = self._ack_for(self._term, h)
            if len(acks) >= majority(len(members)):
                cert = CommitCertificate(
                    self.chain_id,
                    self._term,
                    h,
                    block.hash,
                    tuple(acks[s] for s in sorted(acks)),
                )
                self._verified.add(cert)
                self._commit_to(cert, out)
                return

    # ------------------------------------------------------------------ commit and apply

    def _commit_to(
        self, cert: CommitCertificate, out: list[Action], *, stored: bool = False
    ) -> None:
        """Commit up to ``cert.height``: store the certificate (unless ``stored``), then
        announce, apply and answer."""
        self._log.add_certificate(cert)
        self._commit = cert.height
        if not stored:
            out.append(StoreCertificate(cert))
        out.append(Commit(cert.height, cert))
        for h in [h for h in self._acks if h <= cert.height]:
            del self._acks[h]
        self._apply_committed(out)
        if self._role is Role.LEADER:
            if self.node_id not in self._authorities_at(len(self._log)):
                self._become_follower(self._term, None, out)
            else:
                self._sync_peers()
                # Tell everyone now, not at the next heartbeat: authorities apply as soon as
                # they learn the commit, learners get the newly certified blocks.
                self._broadcast(out)

    def _apply_committed(self, out: list[Action]) -> None:
        """Apply committed blocks in order, then answer the proposals among them. At most
        ``params.memory_bytes`` of payload a step (at least one block): a long backlog — a
        store restored from an older backup applies again from far back, read from disk —
        never sits in memory at once, and every later step (ticks included) goes on with it.
        A proposal is answered once its block is applied, so its client finds it in the
        store."""
        if self._applied < self._commit:
            blocks = self._log.batch(
                self._applied + 1, self._commit - self._applied, self.params.memory_bytes
            )
            out.extend(Apply(block) for block in blocks)
            self._applied += len(blocks)
        if self._pending:
            for request_id, (height, block_hash) in sorted(self._pending.items()):
                if height <= self._applied:
                    del self._pending[request_id]
                    if self._log[height - 1].hash == block_hash:
                        out.append(Answer(request_id, Accepted(height, block_hash)))
                    else:
                        out.append(Answer(request_id, Unavailable(self._retry_after())))
        self._shrink()

    def _shrink(self) -> None:
        """Let old blocks go from memory: only applied, durable ones (see :mod:`.log`)."""
        self._log.shrink(min(self._applied, self._durable), self.params.memory_bytes)

    def _cert_is_valid(self, cert: CommitCertificate, block: Block) -> bool:
        """``cert`` certifies ``block`` under the authority set of our log at its height."""
        if cert in self._verified and block.hash == cert.block_hash:
            return True
        try:
            verify_commit_certificate(
                cert,
                block,
                self._authorities_at(block.height),
                self.chain_id,
                verifier=self._verifier,
            )
        except CertificateError:
            return False
        if len(self._verified) > 1024:
            self._verified.clear()
        self._verified.add(cert)
        return True

    def _check_fork(self, cert: CommitCertificate, their_block: Block, out: list[Action]) -> bool:
        """If ``cert`` validly certifies ``their_block`` where we committed another block:
        stop (``forked``) and report both. True when it did."""
        h = cert.height
        if h > self._commit or self._log[h - 1].hash == cert.block_hash:
            return False
        try:
            verify_commit_certificate(
                cert, their_block, self._authorities_at(h), self.chain_id, verifier=self._verifier
            )
        except CertificateError:
            return False
        ours = self._log.lowest_certificate_from(h)
        assert ours is not None  # h <= commit: the certificate at the commit height covers it
        self._forked = True
        out.append(ForkDetected(ForkEvidence(h, self._log[h - 1], ours, their_block, cert)))
        return True

    def _on_persisted(self, event: Persisted, out: list[Action]) -> None:
        h = event.height
        if 0 < h <= len(self._log) and self._log[h - 1].hash == event.block_hash:
            self._durable = max(self._durable, h)
            if self._role is Role.LEADER:
                self._advance_leader_commit(out)

    # ------------------------------------------------------------------ followers

    def _on_message(self, sender: str, event: Received, out: list[Action]) -> None:
        msg = event.message
        if sender == self.node_id:
            return
        if isinstance(msg, VoteRequest):
            self._on_vote_request(sender, msg, out)
        elif isinstance(msg, VoteResponse):
            self._on_vote_response(sender, msg, out)
        elif isinstance(msg, AppendBlocks):
            self._on_append_blocks(sender, msg, out)
        elif isinstance(msg, AppendResponse):
            self._on_append_response(sender, msg, out)
        elif isinstance(msg, CertifiedBlocks):
            self._on_certified_blocks(sender, msg, out)

    def _leader_is_proved(self, sender: str, term: int, cert: ElectionCertificate) -> bool:
        """``cert`` proves ``sender`` leads ``term`` (see the module docstring)."""
        if cert.term != term or cert.candidate != sender or cert.chain_id != self.chain_id:
            return False
        if self._election is not None and self._election == cert:
            return True
        at = min(cert.last_height, len(self._log))
        try:
            verify_election_certificate(
                cert, self._authorities_at(at), self.chain_id, verifier=self._verifier
            )
        except CertificateError:
            # Our log may be too short, or end in an uncommitted authority change the leader's
            # log does not have, to know the set that elected it. An authority then does what
            # Raft does and follows an authenticated node that is or was an authority; a
            # learner follows only what it can check.
            known = self._known_authorities()
            return self.node_id in known and sender in known
        return True

    def _valid_chain(self, first_parent: bytes, blocks: tuple[Block, ...], start: int) -> bool:
        parent = first_parent
        for offset, block in enumerate(blocks):
            if (
                block.height != start + offset
                or block.parent_hash != parent
                or block.hash != block.computed_hash(self.chain_id)
                or (block.kind is BlockKind.AUTHORITY_CHANGE) != (block.change is not None)
            ):
                return False
            parent = block.hash
        return True

    def _on_append_blocks(self, sender: str, msg: AppendBlocks, out: list[Action]) -> None:
        if msg.leader != sender:
            return
        if msg.term < self._term:
            out.append(Send(sender, AppendResponse(self._term, False, self._commit)))
            return
        if self._role is Role.LEADER and msg.term == self._term:
            return  # cannot happen with honest authorities (election safety)
        if not self._leader_is_proved(sender, msg.term, msg.election):
            return
        joining = any(
            b.change is not None and b.change.op == "add" and b.change.node_id == self.node_id
            for b in msg.blocks
        )
        if not self._is_authority() and not joining:
            self._note_leader(msg.term, sender, msg.election)
            out.append(Send(sender, AppendResponse(msg.term, False, self._commit, learner=True)))
            return
        if msg.term > self._term or self._role is not Role.FOLLOWER or self._leader != sender:
            self._become_follower(msg.term, sender, out)
        self._election = msg.election
        self._leader_contact = self._clock
        self._reset_election_timer()
        prev = msg.prev_height
        if prev > len(self._log):
            out.append(Send(sender, AppendResponse(self._term, False, len(self._log))))
            return
        if self._hash_at(prev) != msg.prev_hash:
            out.append(Send(sender, AppendResponse(self._term, False, max(self._commit, prev - 1))))
            return
        if not self._valid_chain(msg.prev_hash, msg.blocks, prev + 1) or any(
            b.term > msg.term for b in msg.blocks
        ):
            return
        new: list[Block] = []
        truncate_from = 0
        for block in msg.blocks:
            h = block.height
            if not new and h <= len(self._log):
                if self._log[h - 1].hash == block.hash:
                    continue
                if h <= self._commit:
                    # Would remove a committed block: never. With a certificate for theirs at
                    # this very height it is proof of a fork.
                    cert = msg.commit
                    if cert is not None and (cert.height, cert.block_hash) == (h, block.hash):
                        self._check_fork(cert, block, out)
                    return
                truncate_from = h
                self._truncate(h)
            new.append(block)
        if truncate_from:
            out.append(TruncateLog(truncate_from))
        if new:
            for block in new:
                self._log.append(block)
                self._note_config(block)
            out.append(AppendLog(tuple(new)))
        match = prev + len(msg.blocks)
        acks = [self._ack_for(msg.term, b.height) for b in msg.blocks if b.term == msg.term]
        if match and self._log[match - 1].term == msg.term and not msg.blocks:
            acks.append(self._ack_for(msg.term, match))
        cert = msg.commit
        if (
            cert is not None
            and self._commit < cert.height <= match
            and self._cert_is_valid(cert, self._log[cert.height - 1])
        ):
            self._commit_to(cert, out)
        out.append(Send(sender, AppendResponse(self._term, True, match, tuple(acks))))
        if not self._is_authority():
            self._become_learner()
        elif self._role is Role.LEARNER:
            self._role = Role.FOLLOWER  # the blocks made us an authority (joining)

    def _truncate(self, from_height: int) -> None:
        self._log.truncate(from_height)
        self._durable = min(self._durable, from_height - 1)
        self._configs = [(at, m) for at, m in self._configs if at < from_height]

    def _become_learner(self) -> None:
        """Removed from the authorities (by a block in our log): stop voting. The uncommitted
        suffix stays until certified blocks confirm or replace it."""
        self._role = Role.LEARNER

    def _ack_for(self, term: int, height: int) -> Ack:
        """This node's signed ack of its block at ``height`` for the leader of ``term``.

        Only called once that block is durable, or with the ack placed after its AppendLog.
        """
        block = self._log[height - 1]
        cached = self._ack_cache.get((term, height))
        if cached is not None and cached.block_hash == block.hash:
            return cached
        draft = Ack(self.chain_id, term, height, block.hash, self.node_id)
        ack = replace(draft, signature=self._signer.sign(draft.signed_bytes()))
        if len(self._ack_cache) > 4096:
            self._ack_cache.clear()
        self._ack_cache[(term, height)] = ack
        return ack

    def _note_leader(self, term: int, leader: str, election: ElectionCertificate) -> None:
        """A learner's view of who leads (for redirects); it keeps no durable term."""
        if term >= self._term:
            if term > self._term:
                self._voted_for = None  # in memory only: a learner's term is not a vote
            self._term = term
            self._leader = leader
            self._election = election
            self._leader_contact = self._clock

    def _on_certified_blocks(self, sender: str, msg: CertifiedBlocks, out: list[Action]) -> None:
        """Certified blocks are self-authenticating: any node but a leader takes them. They may
        replace an uncommitted suffix (e.g. left from when this node was an authority, or a
        removed authority's log that never saw its removal); a committed block, never.
        Learners also learn the leader from them (for redirects)."""
        if self._role is Role.LEADER or msg.leader != sender or not msg.blocks:
            return
        if not self._is_authority() and self._leader_is_proved(sender, msg.term, msg.election):
            self._note_leader(msg.term, sender, msg.election)
        first = msg.blocks[0].height
        if first < 1 or first > len(self._log) + 1:
            out.append(Send(sender, AppendResponse(msg.term, False, len(self._log), learner=True)))
            return
        if msg.blocks[0].parent_hash != self._hash_at(first - 1):
            if first - 1 > self._commit:  # our uncommitted block there: go back to certainty
                reply = AppendResponse(msg.term, False, self._commit, learner=True)
                out.append(Send(sender, reply))
            return
        # The parent is ours, so the certificate also covers our blocks below ``first``.
        cert = msg.commit
        last = msg.blocks[-1]
        if (
            not self._valid_chain(self._hash_at(first - 1), msg.blocks, first)
            or (cert.height, cert.block_hash) != (last.height, last.hash)
            or not self._cert_valid_along(cert, first, msg.blocks)
        ):
            return
        for block in msg.blocks:
            h = block.height
            if h <= self._commit and self._log[h - 1].hash != block.hash:
                # Our committed block and theirs share a parent but differ: both certified.
                self._forked = True
                ours = self._log.lowest_certificate_from(h)
                assert ours is not None  # as in _check_fork
                out.append(ForkDetected(ForkEvidence(h, self._log[h - 1], ours, block, cert)))
                return
        new: list[Block] = []
        for block in msg.blocks:
            h = block.height
            if not new and h <= len(self._log):
                if self._log[h - 1].hash == block.hash:
                    continue
                self._truncate(h)  # h > commit height: an uncommitted suffix
                out.append(TruncateLog(h))
            new.append(block)
        # The certificate is durable before the blocks it covers, so a restarted learner
        # never finds a block on disk it cannot prove committed.
        commits = cert.height > self._commit
        if commits:
            out.append(StoreCertificate(cert))
        if new:
            for block in new:
                self._log.append(block)
                self._note_config(block)
            out.append(AppendLog(tuple(new)))
        if commits:
            self._commit_to(cert, out, stored=True)
        out.append(Send(sender, AppendResponse(msg.term, True, self._commit, learner=True)))
        if self._role is Role.LEARNER and self._is_authority():
            self._role = Role.FOLLOWER
            self._leader = None
            self._reset_election_timer()
        elif self._role is not Role.LEARNER and not self._is_authority():
            self._become_learner()

    def _cert_valid_along(
        self, cert: CommitCertificate, first: int, blocks: tuple[Block, ...]
    ) -> bool:
        """``cert`` is valid under the authority set of *its* chain: ours below ``first``, then
        ``blocks``."""
        members = self._authorities_at(first - 1)
        for block in blocks:
            if block.change is not None and block.height <= cert.height:
                members = block.change.apply(members)
        try:
            verify_commit_certificate(
                cert, blocks[-1], members, self.chain_id, verifier=self._verifier
            )
        except CertificateError:
            return False
        return True


def _voter(vote: Vote) -> str:
    return vote.voter
