"""A hand-driven cluster of consensus cores for unit tests: messages wait in a list until the
test delivers (or drops) them, durable actions go to an in-memory disk, time moves only when
the test ticks a node."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ian.chain.hashing import sha256
from ian.consensus import (
    Ack,
    Action,
    AppendLog,
    Apply,
    Block,
    CommitCertificate,
    ConsensusCore,
    ConsensusParams,
    DurableState,
    ElectionCertificate,
    Event,
    IdentitySigner,
    Message,
    Persisted,
    PersistHardState,
    Received,
    Send,
    StoreCertificate,
    Tick,
    TruncateLog,
    Vote,
)
from ian.consensus.log import BLOCK_OVERHEAD, ListColdLog
from ian.identity import Identity, verify_signature

CHAIN = sha256(b"unit-test-chain").hex()
PARAMS = ConsensusParams(election_timeout_min=1.0, election_timeout_max=2.0, heartbeat_interval=0.2)
AFTER_TIMEOUT = 2.5  # seconds: past any election timeout drawn from PARAMS


def small_memory(params: ConsensusParams, blocks: int, block_bytes: int) -> ConsensusParams:
    """``params`` with room in memory for ``blocks`` blocks of ``block_bytes`` (older ones are
    read back from disk), and at most 8 blocks a message."""
    return ConsensusParams(
        election_timeout_min=params.election_timeout_min,
        election_timeout_max=params.election_timeout_max,
        heartbeat_interval=params.heartbeat_interval,
        max_blocks_per_message=8,
        memory_bytes=blocks * (BLOCK_OVERHEAD + block_bytes),
    )


@dataclass
class Wire:
    sender: str
    to: str
    message: Message


@dataclass
class Cluster:
    """``authorities`` named a0.., ``learners`` named l0..; all cores share ``CHAIN``."""

    n_authorities: int
    n_learners: int = 0
    core_class: type[ConsensusCore] = ConsensusCore
    identities: dict[str, Identity] = field(default_factory=dict)
    cores: dict[str, ConsensusCore] = field(default_factory=dict)
    disks: dict[str, DurableState] = field(default_factory=dict)
    wire: list[Wire] = field(default_factory=list)
    applied: dict[str, list[Block]] = field(default_factory=dict)
    clocks: dict[str, float] = field(default_factory=dict)
    params: ConsensusParams = PARAMS
    #: each core reads old blocks back from its disk (so its ``params.memory_bytes`` holds)
    cold: bool = False

    def __post_init__(self) -> None:
        names = [f"a{i}" for i in range(self.n_authorities)]
        names += [f"l{i}" for i in range(self.n_learners)]
        for name in names:
            self.identities[name] = Identity.generate()
        self.genesis = {
            self.identities[n].node_id: self.identities[n].public_key
            for n in names
            if n.startswith("a")
        }
        self.names = {self.identities[n].node_id: n for n in names}
        for name in names:
            self.disks[name] = DurableState()
            self.cores[name] = self.make_core(name, DurableState(cold=self.cold_log(name)))
            self.applied[name] = []
            self.clocks[name] = 0.0

    def make_core(self, name: str, state: DurableState | None = None) -> ConsensusCore:
        return self.core_class(
            chain_id=CHAIN,
            genesis_authorities=self.genesis,
            signer=IdentitySigner(self.identities[name]),
            verifier=verify_signature,
            rng=random.Random(name),
            params=self.params,
            learners=[i.node_id for i in self.identities.values()],
            state=state,
        )

    def cold_log(self, name: str) -> ListColdLog | None:
        disk = self.disks[name]
        return ListColdLog(disk.log, disk.certificates) if self.cold else None

    def id(self, name: str) -> str:
        return self.identities[name].node_id

    def name(self, node_id: str) -> str:
        return self.names[node_id]

    # --- driving ---

    def step(self, name: str, event: Event) -> list[Action]:
        """Step one core and perform its actions as a driver would (durable first, in order)."""
        out = self.cores[name].step(event)
        persisted: list[Persisted] = []
        disk = self.disks[name]
        for action in out:
            if isinstance(action, PersistHardState):
                disk.term, disk.voted_for = action.term, action.voted_for
            elif isinstance(action, TruncateLog):
                del disk.log[action.from_height - 1 :]
            elif isinstance(action, AppendLog):
                disk.log.extend(action.blocks)
                last = action.blocks[-1]
                persisted.append(Persisted(last.height, last.hash))
            elif isinstance(action, StoreCertificate):
                disk.certificates[action.certificate.height] = action.certificate
            elif isinstance(action, Apply):
                disk.applied_height = action.block.height
                self.applied[name].append(action.block)
            elif isinstance(action, Send) and action.to in self.names:
                self.wire.append(Wire(self.id(name), self.name(action.to), action.message))
        more: list[Action] = []
        for event in persisted:  # after this step's actions, as the node's driver does
            more += self.step(name, event)
        return out + more

    def tick(self, name: str, advance: float) -> list[Action]:
        self.clocks[name] += advance
        return self.step(name, Tick(self.clocks[name]))

    def deliver(
        self, drop: Callable[[Wire], bool] = lambda w: False, limit: int = 10_000
    ) -> list[Action]:
        """Deliver every message (and the answers they cause) except those ``drop`` refuses."""
        out: list[Action] = []
        for _ in range(limit):
            if not self.wire:
                return out
            wire = self.wire.pop(0)
            if not drop(wire):
                out += self.step(wire.to, Received(wire.sender, wire.message))
        raise AssertionError("messages never stopped")

    def elect(self, name: str, drop: Callable[[Wire], bool] = lambda w: False) -> None:
        self.tick(name, AFTER_TIMEOUT)
        self.deliver(drop)

    def heartbeat(self, name: str, drop: Callable[[Wire], bool] = lambda w: False) -> None:
        self.tick(name, PARAMS.heartbeat_interval)
        self.deliver(drop)

    # --- forging statements with the authorities' real keys ---

    def vote(self, voter: str, term: int, candidate: str, last: tuple[int, int]) -> Vote:
        draft = Vote("vote", CHAIN, term, self.id(candidate), last[0], last[1], self.id(voter))
        return _signed_vote(draft, self.identities[voter].sign(draft.signed_bytes()))

    def election(self, term: int, candidate: str, voters: list[str]) -> ElectionCertificate:
        votes = tuple(self.vote(v, term, candidate, (0, 0)) for v in voters)
        return ElectionCertificate(CHAIN, term, self.id(candidate), 0, 0, votes)

    def ack(self, signer: str, block: Block, term: int | None = None) -> Ack:
        draft = Ack(
            CHAIN, block.term if term is None else term, block.height, block.hash, self.id(signer)
        )
        sig = self.identities[signer].sign(draft.signed_bytes())
        return Ack(draft.chain_id, draft.term, draft.height, draft.block_hash, draft.signer, sig)

    def certify(self, block: Block, signers: list[str]) -> CommitCertificate:
        acks = tuple(self.ack(s, block) for s in signers)
        return CommitCertificate(CHAIN, block.term, block.height, block.hash, acks)


def _signed_vote(draft: Vote, signature: bytes) -> Vote:
    return Vote(
        draft.kind,
        draft.chain_id,
        draft.term,
        draft.candidate,
        draft.last_term,
        draft.last_height,
        draft.voter,
        signature,
    )
