"""Deterministic simulation of the consensus core (FoundationDB / TigerBeetle VOPR style).

One seeded :class:`random.Random` drives everything: N authorities and M learners, message
delay, loss, duplication and reordering, partitions, crashes that lose whatever was not yet
durable, disk latency, clock jumps, membership changes and a Byzantine non-member that forges,
replays and claims leadership. After every step the :class:`InvariantChecker` checks Raft's five
properties (election safety, leader append-only, log matching, leader completeness, state-machine
safety) and IAN's own: no node removes a committed block, a learner holds only committed
blocks, every commit carries a certificate that verifies, the Byzantine peer never becomes
anyone's leader, never raises a term, never gets a block appended. When the faults stop, a
leader must appear within a bound and every client-acknowledged proposal must reach every node's
committed log.

A run is a pure function of its :class:`SimConfig`; a failure prints the command that replays it::

    python -m ian.consensus.simulator --seed 1234 --steps 5000 --authorities 5 --learners 2
    python -m ian.consensus.simulator --soak --seeds 200      # the table + one JSON line
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import hmac
import json
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ian.consensus.certificates import majority, verify_commit_certificate
from ian.consensus.core import ConsensusCore, ConsensusParams
from ian.consensus.errors import CertificateError, InvariantViolation
from ian.consensus.events import (
    Accepted,
    Action,
    Answer,
    AppendLog,
    Apply,
    Commit,
    Durable,
    DurableState,
    Event,
    ForkDetected,
    Persisted,
    PersistHardState,
    Propose,
    ProposeChange,
    Received,
    Redirect,
    Restart,
    Role,
    RoleChanged,
    Send,
    StoreCertificate,
    Tick,
    TruncateLog,
    Unavailable,
)
from ian.consensus.log import BLOCK_OVERHEAD, ListColdLog
from ian.consensus.types import (
    Ack,
    AppendBlocks,
    AppendResponse,
    AuthorityChange,
    Block,
    BlockKind,
    CertifiedBlocks,
    CommitCertificate,
    ElectionCertificate,
    Message,
    Vote,
    VoteRequest,
    VoteResponse,
    genesis_hash,
)
from ian.identity import Identity, verify_signature

__all__ = [
    "InvariantViolation",
    "KeyedSigner",
    "SimConfig",
    "SimResult",
    "Simulation",
    "keyed_verifier",
    "main",
    "run",
]

CHAIN_ID = hashlib.sha256(b"ian-simulated-chain").hexdigest()
BYZANTINE = "byzantine"
PARAMS = ConsensusParams(
    election_timeout_min=1.0,
    election_timeout_max=2.0,
    heartbeat_interval=0.2,
    memory_bytes=6 * BLOCK_OVERHEAD,  # a few blocks: lagging peers are served from "disk"
)
RESTART_KEEP = 2
"""Blocks below the applied mark a restarted node holds in memory (the rest stay on disk)."""
LIVENESS_BOUND = 10 * PARAMS.election_timeout_max
"""A leader followed by a majority must exist this long (simulated s) after the last fault."""
SETTLE_LIMIT = 60.0
"""Simulated seconds after the faults stop within which everything must converge."""


# --- signatures: a fast keyed stand-in for Ed25519 (the core cannot tell the difference) ---

_KEYED_SECRETS: dict[bytes, bytes] = {}


@dataclass(frozen=True)
class KeyedSigner:
    """HMAC-SHA256 under a per-node secret; the "public key" is the secret's hash. Only
    :func:`keyed_verifier` (which plays the role of the math) can check it, and without the
    secret nobody can produce a signature it accepts: forgery is as impossible as with Ed25519.
    """

    node_id: str
    secret: bytes

    @property
    def public_key(self) -> bytes:
        return hashlib.sha256(b"pk:" + self.secret).digest()

    def sign(self, data: bytes) -> bytes:
        _KEYED_SECRETS[self.public_key] = self.secret
        return hmac.new(self.secret, data, hashlib.sha256).digest()


def keyed_verifier(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Verifier for :class:`KeyedSigner` signatures; never raises."""
    secret = _KEYED_SECRETS.get(public_key)
    if secret is None:
        return False
    return hmac.compare_digest(hmac.new(secret, data, hashlib.sha256).digest(), signature)


@dataclass(frozen=True)
class _Ed25519Signer:
    node_id: str
    identity: Identity

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data)


# --- configuration and result ---


@dataclass(frozen=True)
class SimConfig:
    """Everything a run depends on. ``steps`` counts simulated events while faults happen."""

    seed: int
    steps: int = 3000
    authorities: int = 3
    learners: int = 1
    byzantine: bool = True
    membership: bool = False
    ed25519: bool = False

    def replay_command(self) -> str:
        """The one command that replays this run."""
        cmd = (
            f"python -m ian.consensus.simulator --seed {self.seed} --steps {self.steps} "
            f"--authorities {self.authorities} --learners {self.learners}"
        )
        if not self.byzantine:
            cmd += " --no-byzantine"
        if self.membership:
            cmd += " --membership"
        if self.ed25519:
            cmd += " --ed25519"
        return cmd


@dataclass
class SimResult:
    """What a run did. ``violation`` is None when every invariant held."""

    seed: int
    authorities: int
    learners: int
    steps: int = 0
    sim_seconds: float = 0.0
    faults: int = 0
    elections: int = 0
    crashes: int = 0
    commit_height: int = 0
    acknowledged: int = 0
    byzantine_messages: int = 0
    leader_after_heal_s: float | None = None
    violation: str | None = None
    replay: str = ""


CoreFactory = Callable[..., ConsensusCore]


# --- the nodes ---


@dataclass
class _Node:
    node_id: str
    signer: Any
    core: ConsensusCore
    disk: DurableState = field(default_factory=DurableState)
    alive: bool = True
    epoch: int = 0
    queue: deque[Action] = field(default_factory=deque)
    disk_busy: bool = False
    clock_offset: float = 0.0
    # What the checker mirrors from the actions the core emitted (its in-memory log).
    mirror: list[Block] = field(default_factory=list)
    commit_seen: int = 0
    applied_seen: int = 0


@dataclass(order=True)
class _Scheduled:
    at: float
    seq: int
    kind: str = field(compare=False)
    data: Any = field(compare=False)


class Simulation:
    """One seeded run. :meth:`run` returns a :class:`SimResult` or raises
    :class:`InvariantViolation` (whose message ends with the replay command)."""

    def __init__(self, config: SimConfig, core_factory: CoreFactory = ConsensusCore) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.now = 0.0
        self._seq = 0
        self._heap: list[_Scheduled] = []
        self.result = SimResult(config.seed, config.authorities, config.learners)
        self.result.replay = config.replay_command()
        self.authority_ids = [f"a{i}" for i in range(config.authorities)]
        self.learner_ids = [f"l{i}" for i in range(config.learners)]
        signers: dict[str, Any] = {}
        for nid in self.authority_ids + self.learner_ids:
            if config.ed25519:
                signers[nid] = _Ed25519Signer(nid, Identity.generate())
            else:
                signers[nid] = KeyedSigner(nid, self.rng.randbytes(32))
        self.verifier = verify_signature if config.ed25519 else keyed_verifier
        self.genesis = {nid: signers[nid].public_key for nid in self.authority_ids}
        self.public_keys = {nid: s.public_key for nid, s in signers.items()}
        self.nodes: dict[str, _Node] = {}
        everyone = self.authority_ids + self.learner_ids
        for nid in everyone:
            disk = DurableState()
            core = core_factory(
                chain_id=CHAIN_ID,
                genesis_authorities=self.genesis,
                signer=signers[nid],
                verifier=self.verifier,
                rng=random.Random(self.rng.getrandbits(64)),
                params=PARAMS,
                learners=everyone,
                now=0.0,
                state=DurableState(cold=ListColdLog(disk.log, disk.certificates)),
            )
            self.nodes[nid] = _Node(nid, signers[nid], core, disk)
        self.checker = InvariantChecker(self)
        # Network and fault state.
        self.partition: dict[str, int] | None = None
        self.loss = 0.0
        self.duplication = 0.0
        self.faulting = True
        self.heal_time: float | None = None
        # Clients.
        self._next_request = 0
        self.acknowledged: dict[str, tuple[int, bytes]] = {}
        self._requests: dict[str, tuple[bytes | AuthorityChange, int]] = {}
        # The Byzantine peer's captured traffic.
        self.captured: deque[Message] = deque(maxlen=300)

    # ------------------------------------------------------------------ scheduling

    def _at(self, delay: float, kind: str, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Scheduled(self.now + delay, self._seq, kind, data))

    def run(self) -> SimResult:
        """Run ``steps`` events with faults, then heal and settle; check after every step."""
        for nid in self.nodes:
            self._at(self.rng.uniform(0, 0.1), "tick", (nid, 0))
        self._at(0.05, "client", None)
        self._at(0.3, "fault", None)
        if self.config.byzantine:
            self._at(0.1, "byzantine", None)
        try:
            while self.result.steps < self.config.steps:
                self._one_step()
            self._heal()
            settle_until = self.now + SETTLE_LIMIT
            while self.now < settle_until:
                self._one_step()
                if self.result.steps % 50 == 0 and self.checker.converged():
                    break
            self.checker.check_final()
        except InvariantViolation as exc:
            self.result.violation = exc.message
            raise InvariantViolation(
                f"{exc.message} (seed {self.config.seed}, step {self.result.steps}, "
                f"t={self.now:.3f}s)",
                fix=f"replay: {self.config.replay_command()}",
            ) from None
        finally:
            self.result.sim_seconds = round(self.now, 3)
            self.result.acknowledged = len(self.acknowledged)
            self.result.commit_height = max(n.core.commit_height for n in self.nodes.values())
        return self.result

    def _one_step(self) -> None:
        item = heapq.heappop(self._heap)
        self.now = max(self.now, item.at)
        self.result.steps += 1
        handler = getattr(self, f"_on_{item.kind}")
        handler(item.data)
        self.checker.after_step()

    # ------------------------------------------------------------------ driving a node

    def step_node(self, node: _Node, event: Event) -> None:
        out = node.core.step(event)
        self.checker.on_emitted(node, out)
        node.queue.extend(out)
        self._pump(node)

    def _pump(self, node: _Node) -> None:
        while node.queue and not node.disk_busy and node.alive:
            action = node.queue[0]
            if isinstance(action, Durable) and self.rng.random() < 0.3:
                node.disk_busy = True
                self._at(self.rng.uniform(0.0005, 0.02), "disk", (node.node_id, node.epoch))
                return
            node.queue.popleft()
            self._execute(node, action)

    def _on_disk(self, data: tuple[str, int]) -> None:
        nid, epoch = data
        node = self.nodes[nid]
        if epoch != node.epoch or not node.alive:
            return
        node.disk_busy = False
        action = node.queue.popleft()
        self._execute(node, action)
        self._pump(node)

    def _execute(self, node: _Node, action: Action) -> None:
        disk = node.disk
        if isinstance(action, Send):
            self._send(node.node_id, action.to, action.message)
        elif isinstance(action, PersistHardState):
            disk.term, disk.voted_for = action.term, action.voted_for
        elif isinstance(action, TruncateLog):
            del disk.log[action.from_height - 1 :]
        elif isinstance(action, AppendLog):
            if action.blocks[0].height != len(disk.log) + 1:
                raise InvariantViolation(f"{node.node_id}: AppendLog leaves a gap on disk")
            disk.log.extend(action.blocks)
            last = action.blocks[-1]
            out = node.core.step(Persisted(last.height, last.hash))
            self.checker.on_emitted(node, out)
            node.queue.extend(out)
        elif isinstance(action, StoreCertificate):
            disk.certificates[action.certificate.height] = action.certificate
        elif isinstance(action, Apply):
            disk.applied_height = action.block.height
        elif isinstance(action, Answer):
            self._on_answer(node, action)

    # ------------------------------------------------------------------ events

    def _local_now(self, node: _Node) -> float:
        return self.now + node.clock_offset

    def _on_tick(self, data: tuple[str, int]) -> None:
        nid, epoch = data
        node = self.nodes[nid]
        if epoch != node.epoch or not node.alive:
            return
        self.step_node(node, Tick(self._local_now(node)))
        self._at(self.rng.uniform(0.04, 0.06), "tick", (nid, epoch))

    def _send(self, sender: str, to: str, message: Message) -> None:
        if to not in self.nodes:
            return
        if self.config.byzantine and self.rng.random() < 0.2:
            self.captured.append(message)
        if self.faulting and self.rng.random() < self.loss:
            return
        copies = 2 if self.faulting and self.rng.random() < self.duplication else 1
        for _ in range(copies):
            delay = self.rng.uniform(0.001, 0.03)
            if self.faulting and self.rng.random() < 0.05:
                delay += self.rng.uniform(0.0, 0.5)  # a late message: reordering
            self._at(delay, "deliver", (sender, to, message))

    def _on_deliver(self, data: tuple[str, str, Message]) -> None:
        sender, to, message = data
        node = self.nodes[to]
        if not node.alive:
            return
        if (
            self.partition is not None
            and sender in self.partition
            and self.partition[sender] != self.partition[to]
        ):
            return
        self.step_node(node, Received(sender, message))

    # ------------------------------------------------------------------ clients

    def _on_client(self, _data: None) -> None:
        if self.faulting:
            self._next_request += 1
            request_id = f"r{self._next_request}"
            payload = f"payload-{self.config.seed}-{self._next_request}".encode()
            self._requests[request_id] = (payload, 0)
            self._submit(request_id, self.rng.choice(list(self.nodes)))
            if self.config.membership and self.rng.random() < 0.03:
                self._propose_membership_change()
        self._at(self.rng.uniform(0.02, 0.2), "client", None)

    def _submit(self, request_id: str, nid: str) -> None:
        node = self.nodes[nid]
        if not node.alive:
            return
        what, _hops = self._requests[request_id]
        if isinstance(what, AuthorityChange):
            self.step_node(node, ProposeChange(request_id, what))
        else:
            self.step_node(node, Propose(request_id, what))

    def _on_answer(self, node: _Node, answer: Answer) -> None:
        outcome = answer.outcome
        request = self._requests.get(answer.request_id)
        if request is None:
            return
        what, hops = request
        if isinstance(outcome, Accepted):
            block = node.mirror[outcome.height - 1] if outcome.height <= len(node.mirror) else None
            if block is None or block.hash != outcome.block_hash:
                raise InvariantViolation(f"{node.node_id}: accepted a block it does not hold")
            if isinstance(what, bytes) and block.payload != what:
                raise InvariantViolation(f"{node.node_id}: accepted the wrong payload")
            self.acknowledged[answer.request_id] = (outcome.height, outcome.block_hash)
            del self._requests[answer.request_id]
        elif isinstance(outcome, Redirect) and hops < 3 and self.faulting:
            self._requests[answer.request_id] = (what, hops + 1)
            if outcome.leader == BYZANTINE:
                raise InvariantViolation(f"{node.node_id}: redirected a client to the Byzantine")
            self._submit(answer.request_id, outcome.leader)
        elif isinstance(outcome, Unavailable):
            del self._requests[answer.request_id]
        else:
            del self._requests[answer.request_id]

    def _propose_membership_change(self) -> None:
        leader = self.checker.current_leader()
        if leader is None:
            return
        members = leader.core.authorities()
        removed = [nid for nid in self.authority_ids if nid not in members]
        if removed:
            nid = self.rng.choice(removed)
            change = AuthorityChange("add", nid, self.public_keys[nid])
        elif len(members) >= 3:
            nid = self.rng.choice(sorted(set(members) - {leader.node_id}))
            change = AuthorityChange("remove", nid)
        else:
            return
        self._next_request += 1
        request_id = f"c{self._next_request}"
        self._requests[request_id] = (change, 0)
        self._submit(request_id, leader.node_id)

    # ------------------------------------------------------------------ faults

    def _on_fault(self, _data: None) -> None:
        if not self.faulting:
            return
        self.result.faults += 1
        rng = self.rng
        kind = rng.choice(
            ["partition", "heal", "crash", "crash", "restart", "clock", "loss", "duplicate"]
        )
        ids = list(self.nodes)
        if kind == "partition":
            self.partition = {nid: rng.randrange(2) for nid in ids}
        elif kind == "heal":
            self.partition = None
        elif kind == "crash":
            victims = [n for n in self.nodes.values() if n.alive]
            if victims:
                self._crash(rng.choice(victims))
        elif kind == "restart":
            dead = [n for n in self.nodes.values() if not n.alive]
            if dead:
                self._restart(rng.choice(dead))
        elif kind == "clock":
            node = self.nodes[rng.choice(ids)]
            node.clock_offset += rng.uniform(-5.0, 5.0)
        elif kind == "loss":
            self.loss = rng.choice([0.0, 0.05, 0.2, 0.5])
        else:
            self.duplication = rng.choice([0.0, 0.1, 0.3])
        self._at(rng.uniform(0.2, 1.5), "fault", None)

    def _crash(self, node: _Node) -> None:
        """The process dies: volatile state and not-yet-durable actions are gone."""
        node.alive = False
        node.epoch += 1
        node.queue.clear()
        node.disk_busy = False
        self.result.crashes += 1

    def _restart(self, node: _Node) -> None:
        node.alive = True
        node.epoch += 1
        disk = node.disk
        state = disk.windowed(RESTART_KEEP)
        node.mirror = list(disk.log)
        node.applied_seen = min(disk.applied_height, node.applied_seen)
        node.commit_seen = 0
        self.step_node(node, Restart(state, self._local_now(node)))
        node.commit_seen = node.core.commit_height
        node.applied_seen = max(node.applied_seen, node.core.applied_height)
        self._at(self.rng.uniform(0.0, 0.05), "tick", (node.node_id, node.epoch))

    def _heal(self) -> None:
        """The last fault: reconnect everything and restart every crashed node."""
        self.faulting = False
        self.partition = None
        self.loss = self.duplication = 0.0
        for node in self.nodes.values():
            if not node.alive:
                self._restart(node)
        self.heal_time = self.now

    # ------------------------------------------------------------------ the Byzantine peer

    def _on_byzantine(self, _data: None) -> None:
        self.result.byzantine_messages += 1
        rng = self.rng
        target = rng.choice(list(self.nodes))
        top_term = max(n.core.term for n in self.nodes.values())
        forged_sig = rng.randbytes(32)
        victim = rng.choice(self.authority_ids)
        choice = rng.randrange(7)
        message: Message
        if choice == 0 and self.captured:
            message = rng.choice(list(self.captured))  # replay anything, any term
            if isinstance(message, AppendBlocks | CertifiedBlocks) and rng.random() < 0.5:
                message = replace(message, leader=BYZANTINE)  # ... and claim it as its own
        elif choice == 1:
            # Claim leadership of a far-future term with forged votes and a forged block.
            term = top_term + rng.choice([1, 2, 1000, 10**9])
            votes = tuple(
                Vote("vote", CHAIN_ID, term, BYZANTINE, term - 1, 10**6, v, rng.randbytes(32))
                for v in self.authority_ids
            )
            cert = ElectionCertificate(CHAIN_ID, term, BYZANTINE, term - 1, 10**6, votes)
            # A block whose hash is forged (it does not hash to what it claims).
            parent = rng.randbytes(32)
            forged = rng.randbytes(32)
            block = Block(10**6, term, parent, BlockKind.DATA, b"byz", None, None, forged)
            message = AppendBlocks(
                term, BYZANTINE, 10**6 - 1, block.parent_hash, (block,), cert, None
            )
        elif choice == 2:
            # Forged or replayed leadership claims in another's name.
            leader = self.checker.current_leader()
            if leader is not None and leader.core.commit_height:
                h = leader.core.commit_height
                real = leader.core.block(h)
                fake = Block.build(
                    CHAIN_ID,
                    height=h + 1,
                    term=leader.core.term,
                    parent_hash=real.hash,
                    kind=BlockKind.DATA,
                    payload=b"byz-forged",
                )
                acks = tuple(
                    Ack(CHAIN_ID, fake.term, fake.height, fake.hash, a, rng.randbytes(32))
                    for a in self.authority_ids
                )
                if real.term == fake.term and h in leader.disk.certificates and rng.random() < 0.5:
                    # Genuine acks, replayed from the real block at h onto the forged one.
                    acks = leader.disk.certificates[h].acks
                cert2 = CommitCertificate(CHAIN_ID, fake.term, fake.height, fake.hash, acks)
                message = CertifiedBlocks(
                    fake.term,
                    BYZANTINE,
                    (fake,),
                    cert2,
                    ElectionCertificate(CHAIN_ID, fake.term, BYZANTINE, 0, 0, ()),
                )
            else:
                return self._again()
        elif choice == 3:
            message = VoteRequest(
                rng.random() < 0.5, CHAIN_ID, top_term + rng.randint(1, 50), BYZANTINE, 10**9, 10**9
            )
        elif choice == 4:
            vote = Vote("vote", CHAIN_ID, top_term, victim, 0, 0, BYZANTINE, forged_sig)
            message = VoteResponse(False, top_term, vote)
            target = victim
        elif choice == 5:
            ack = Ack(CHAIN_ID, top_term, 1, rng.randbytes(32), BYZANTINE, forged_sig)
            message = AppendResponse(top_term + rng.choice([0, 1, 10**6]), True, 10**9, (ack,))
        else:
            message = AppendResponse(top_term + 10**6, False, 0)
        self._deliver_from_byzantine(target, message)
        self._again()

    def _again(self) -> None:
        self._at(self.rng.uniform(0.05, 0.3), "byzantine", None)

    def _deliver_from_byzantine(self, to: str, message: Message) -> None:
        # The Byzantine holds a valid TLS identity of its own: its messages arrive as its own.
        self._at(self.rng.uniform(0.001, 0.03), "deliver", (BYZANTINE, to, message))


class InvariantChecker:
    """Checks the simulation's nodes after every step (see the module docstring)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, bytes] = {}
        self.applied: dict[int, bytes] = {}
        self.entry_hash: dict[tuple[int, int], bytes] = {}
        self.max_candidate_term = 0
        self.leader_snapshot: dict[str, tuple[int, int, bytes]] = {}

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    # --- per emitted action ---

    def on_emitted(self, node: _Node, out: Sequence[Action]) -> None:
        for action in out:
            if isinstance(action, RoleChanged):
                self._on_role(node, action)
        for action in out:
            if isinstance(action, AppendLog):
                for block in action.blocks:
                    self._on_append(node, block)
            elif isinstance(action, TruncateLog):
                self._on_truncate(node, action.from_height)
            elif isinstance(action, Commit):
                self._on_commit(node, action.height, action.certificate)
            elif isinstance(action, Apply):
                self._on_apply(node, action.block)
            elif isinstance(action, PersistHardState) and action.voted_for == node.node_id:
                # Voting for itself is how a candidate starts a term (Raft §5.2).
                self.max_candidate_term = max(self.max_candidate_term, action.term)
            elif isinstance(action, ForkDetected):
                self.fail(f"{node.node_id}: fork evidence at height {action.evidence.height}")

    def _on_append(self, node: _Node, block: Block) -> None:
        mirror = node.mirror
        parent = mirror[-1].hash if mirror else genesis_hash(CHAIN_ID)
        if block.height != len(mirror) + 1 or block.parent_hash != parent:
            self.fail(f"{node.node_id}: appended block {block.height} does not extend its log")
        if block.payload.startswith(b"byz"):
            self.fail(f"{node.node_id}: appended a block forged by the Byzantine peer")
        # Log matching: one (height, term) names one block, whose hash chains its whole prefix.
        known = self.entry_hash.setdefault((block.height, block.term), block.hash)
        if known != block.hash:
            self.fail(f"log matching: two blocks at height {block.height} in term {block.term}")
        mirror.append(block)

    def _on_truncate(self, node: _Node, from_height: int) -> None:
        if node.core.role is Role.LEADER and self.leaders.get(node.core.term) == node.node_id:
            self.fail(f"leader append-only: leader {node.node_id} truncated its log")
        for block in node.mirror[from_height - 1 :]:
            if self.committed.get(block.height) == block.hash:
                self.fail(f"{node.node_id} removed committed block {block.height}")
        del node.mirror[from_height - 1 :]

    def _on_commit(self, node: _Node, height: int, cert: CommitCertificate) -> None:
        if height < node.commit_seen:
            self.fail(f"{node.node_id}: commit height went back {node.commit_seen} -> {height}")
        block = node.mirror[height - 1]
        members = node.core.authorities_at(height)
        try:
            verify_commit_certificate(cert, block, members, CHAIN_ID, verifier=self.sim.verifier)
        except CertificateError as exc:
            self.fail(f"{node.node_id}: committed {height} with a bad certificate: {exc}")
        for h in range(node.commit_seen + 1, height + 1):
            digest = node.mirror[h - 1].hash
            if self.committed.setdefault(h, digest) != digest:
                self.fail(f"state-machine safety: two blocks committed at height {h}")
        node.commit_seen = height

    def _on_apply(self, node: _Node, block: Block) -> None:
        if block.height != node.applied_seen + 1:
            self.fail(f"{node.node_id}: applied {block.height} after {node.applied_seen}")
        if self.applied.setdefault(block.height, block.hash) != block.hash:
            self.fail(f"state-machine safety: two blocks applied at height {block.height}")
        if self.committed.get(block.height) != block.hash:
            self.fail(f"{node.node_id}: applied uncommitted block {block.height}")
        node.applied_seen = block.height

    def _on_role(self, node: _Node, change: RoleChanged) -> None:
        if change.leader == BYZANTINE:
            self.fail(f"{node.node_id} follows the Byzantine peer")
        if change.role is Role.LEADER:
            self.sim.result.elections += 1
            holder = self.leaders.setdefault(change.term, node.node_id)
            if holder != node.node_id:
                self.fail(f"election safety: {holder} and {node.node_id} both lead {change.term}")
            for h, digest in self.committed.items():
                if h > len(node.mirror) or node.mirror[h - 1].hash != digest:
                    self.fail(f"leader completeness: {node.node_id} lacks committed block {h}")

    # --- after every step ---

    def after_step(self) -> None:
        for node in self.sim.nodes.values():
            core = node.core
            if core.term > self.max_candidate_term:
                self.fail(f"{node.node_id} is in term {core.term} that no candidate ran")
            if core.leader_id == BYZANTINE:
                self.fail(f"{node.node_id} follows the Byzantine peer")
            if core.role is Role.LEADER:
                snap = self.leader_snapshot.get(node.node_id)
                mirror = node.mirror
                if snap is not None and snap[0] == core.term:
                    _, length, digest = snap
                    if len(mirror) < length or (length and mirror[length - 1].hash != digest):
                        self.fail(f"leader append-only: {node.node_id} rewrote its log")
                last = mirror[-1].hash if mirror else b""
                self.leader_snapshot[node.node_id] = (core.term, len(mirror), last)
            else:
                self.leader_snapshot.pop(node.node_id, None)
        for nid in self.sim.learner_ids:
            node = self.sim.nodes[nid]
            if len(node.mirror) > node.core.commit_height:
                self.fail(f"learner {nid} holds an uncommitted block")
        sim = self.sim
        if sim.heal_time is not None and sim.result.leader_after_heal_s is None:
            if self.current_leader() is not None:
                sim.result.leader_after_heal_s = round(sim.now - sim.heal_time, 3)
            elif sim.now - sim.heal_time > LIVENESS_BOUND:
                self.fail(f"no leader {LIVENESS_BOUND:.0f}s after the last fault")

    def current_leader(self) -> _Node | None:
        """The live leader a majority of its live authorities follow in its term, if any."""
        for node in self.sim.nodes.values():
            core = node.core
            if not node.alive or core.role is not Role.LEADER:
                continue
            members = core.authorities()
            following = sum(
                1
                for nid in members
                if self.sim.nodes[nid].alive
                and self.sim.nodes[nid].core.term == core.term
                and self.sim.nodes[nid].core.leader_id == node.node_id
            )
            if following >= majority(len(members)):
                return node
        return None

    def converged(self) -> bool:
        """Every node holds every acknowledged block, committed."""
        if self.current_leader() is None:
            return False
        for node in self.sim.nodes.values():
            for height, digest in self.sim.acknowledged.values():
                if (
                    height > node.core.commit_height
                    or height > len(node.mirror)
                    or node.mirror[height - 1].hash != digest
                ):
                    return False
        return True

    def check_final(self) -> None:
        if not self.converged():
            missing = [
                f"{n.node_id}@{n.core.commit_height}"
                for n in self.sim.nodes.values()
                if any(h > n.core.commit_height for h, _ in self.sim.acknowledged.values())
            ]
            self.fail(
                f"not converged {SETTLE_LIMIT:.0f}s after the last fault: "
                f"leader={self.current_leader() is not None}, behind: {', '.join(missing)}"
            )


def run(config: SimConfig, core_factory: CoreFactory = ConsensusCore) -> SimResult:
    """Run one seed; raise :class:`InvariantViolation` (with the replay command) on failure."""
    return Simulation(config, core_factory).run()


# --- command line ---

_TABLE = "{:>6} {:>4} {:>4} {:>7} {:>8} {:>6} {:>6} {:>9} {:>7} {:>7}  {}"


def _soak(args: argparse.Namespace) -> int:
    sizes = [1, 3, 5, 7]
    print(
        _TABLE.format(
            "seed",
            "N",
            "M",
            "steps",
            "sim_s",
            "faults",
            "crash",
            "elections",
            "commit",
            "leader",
            "result",
        )
    )
    started = time.monotonic()
    failures: list[dict[str, Any]] = []
    results: list[SimResult] = []
    for i in range(args.seeds):
        seed = args.seed + i
        config = SimConfig(
            seed=seed,
            steps=args.steps,
            authorities=sizes[i % len(sizes)] if args.authorities is None else args.authorities,
            learners=args.learners,
            byzantine=not args.no_byzantine,
            membership=args.membership or i % 3 == 2,
            ed25519=args.ed25519,
        )
        sim = Simulation(config)
        try:
            result = sim.run()
            status = "ok"
        except InvariantViolation as exc:
            result = sim.result
            status = "FAIL"
            failures.append({"seed": seed, "violation": exc.message, "replay": exc.fix})
        results.append(result)
        leader = "-" if result.leader_after_heal_s is None else f"{result.leader_after_heal_s}"
        print(
            _TABLE.format(
                seed,
                config.authorities,
                config.learners,
                result.steps,
                result.sim_seconds,
                result.faults,
                result.crashes,
                result.elections,
                result.commit_height,
                leader,
                status,
            ),
            flush=True,
        )
    for failure in failures:
        print(f"FAIL seed {failure['seed']}: {failure['violation']}\n  {failure['replay']}")
    summary = {
        "seeds": len(results),
        "failures": len(failures),
        "steps": sum(r.steps for r in results),
        "faults": sum(r.faults for r in results),
        "crashes": sum(r.crashes for r in results),
        "elections": sum(r.elections for r in results),
        "acknowledged": sum(r.acknowledged for r in results),
        "max_leader_after_heal_s": max(
            (r.leader_after_heal_s or 0.0 for r in results), default=0.0
        ),
        "wall_seconds": round(time.monotonic() - started, 2),
        "failed": failures,
    }
    print(json.dumps(summary, sort_keys=True))
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ian.consensus.simulator``: one seed (replay) or ``--soak`` many."""
    parser = argparse.ArgumentParser(prog="python -m ian.consensus.simulator")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--authorities", type=int, default=None, choices=[1, 3, 5, 7])
    parser.add_argument("--learners", type=int, default=1)
    parser.add_argument("--no-byzantine", action="store_true")
    parser.add_argument("--membership", action="store_true")
    parser.add_argument("--ed25519", action="store_true", help="real signatures (slower)")
    parser.add_argument("--soak", action="store_true", help="run --seeds seeds from --seed")
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args(argv)
    if args.soak:
        return _soak(args)
    config = SimConfig(
        seed=args.seed,
        steps=args.steps,
        authorities=3 if args.authorities is None else args.authorities,
        learners=args.learners,
        byzantine=not args.no_byzantine,
        membership=args.membership,
        ed25519=args.ed25519,
    )
    try:
        result = run(config)
    except InvariantViolation as exc:
        print(f"FAIL: {exc.message}\n{exc.fix}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
