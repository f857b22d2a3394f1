"""Unit tests of the consensus core, driven by hand through :class:`Cluster`."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.ian.consensus.cluster import AFTER_TIMEOUT, CHAIN, PARAMS, Cluster, Wire, small_memory

from ian.consensus import (
    Accepted,
    Action,
    AppendBlocks,
    AppendLog,
    AppendResponse,
    Apply,
    AuthorityChange,
    Block,
    BlockKind,
    CertifiedBlocks,
    Commit,
    ConsensusCore,
    DurableState,
    ForkDetected,
    PersistHardState,
    Propose,
    ProposeChange,
    Received,
    Redirect,
    Rejected,
    Restart,
    Role,
    Send,
    StoreCertificate,
    Tick,
    TruncateLog,
    Unavailable,
    VoteRequest,
    VoteResponse,
    genesis_hash,
    verify_commit_certificate,
    verify_election_certificate,
)
from ian.identity import Identity


def answers(actions: list[object]) -> list[object]:
    return [a.outcome for a in actions if hasattr(a, "outcome")]


def cut(cluster: Cluster, *names: str):  # type: ignore[no-untyped-def]
    """A partition: messages to or from ``names`` are lost."""
    ids = {cluster.id(n) for n in names}

    def drop(wire: Wire) -> bool:
        return wire.to in names or wire.sender in ids

    return drop


# --- elections ---


def test_single_authority_leads_and_commits_alone() -> None:
    c = Cluster(1)
    c.elect("a0")
    core = c.cores["a0"]
    assert (core.role, core.term, core.leader_id) == (Role.LEADER, 1, c.id("a0"))
    out = c.step("a0", Propose("r1", b"hello"))
    assert [type(a) for a in out][:1] == [AppendLog]
    [accepted] = answers(out)
    assert isinstance(accepted, Accepted) and accepted.height == 2
    commit = next(a for a in out if isinstance(a, Commit))
    verify_commit_certificate(commit.certificate, core.block(2), c.genesis, CHAIN)
    assert [b.payload for b in c.applied["a0"]] == [b"", b"hello"]


def test_election_certificate_in_first_block_proves_the_leader() -> None:
    c = Cluster(3)
    c.elect("a1")
    assert [c.cores[n].leader_id for n in ("a0", "a1", "a2")] == [c.id("a1")] * 3
    first = c.cores["a0"].block(1)
    assert first.kind is BlockKind.LEADER_START and first.election is not None
    verify_election_certificate(first.election, c.genesis, CHAIN)
    assert first.election.candidate == c.id("a1") and first.election.term == 1
    assert c.cores["a1"].commit_height == 1  # the leader's first block commits
    c.heartbeat("a1")
    assert c.cores["a0"].commit_height == 1


def test_pre_vote_does_not_bump_terms() -> None:
    c = Cluster(3)
    c.elect("a0")
    # a2 is cut off; its election timer fires again and again: it never raises its term.
    for _ in range(5):
        c.tick("a2", AFTER_TIMEOUT)
        c.deliver(cut(c, "a2"))
    assert c.cores["a2"].role is Role.PRE_CANDIDATE
    assert c.cores["a2"].term == 1
    assert c.disks["a2"].term == 1
    # Reconnected, its pre-vote finds a live leader (lease): still nobody's term moves.
    c.tick("a2", AFTER_TIMEOUT)
    c.deliver()
    assert [c.cores[n].term for n in ("a0", "a1", "a2")] == [1, 1, 1]
    assert c.cores["a0"].role is Role.LEADER


def led_with_one_block(payload: bytes = b"x") -> Cluster:
    """Three authorities, a0 leading, one block committed and heard of by all."""
    c = Cluster(3)
    c.elect("a0")
    c.step("a0", Propose("r1", payload))
    c.deliver()
    c.heartbeat("a0")
    return c


@pytest.mark.parametrize("first", ["a1", "a2"])
def test_two_pre_candidates_at_once_do_not_split_the_vote(first: str) -> None:
    """The leader dies and both survivors' timers fire before either hears from the other:
    each grants the other's pre-vote, and without a rule both would go on to vote for
    themselves in term 2 (a split: nobody leads until a timer fires again). The one whose
    node id sorts first goes on; the other stands aside and votes for it."""
    c = led_with_one_block()
    second = "a2" if first == "a1" else "a1"
    c.tick(first, AFTER_TIMEOUT)
    c.tick(second, AFTER_TIMEOUT)
    assert c.cores["a1"].role is c.cores["a2"].role is Role.PRE_CANDIDATE
    c.deliver(cut(c, "a0"))
    winner = min(("a1", "a2"), key=c.id)
    loser = "a2" if winner == "a1" else "a1"
    assert c.cores[winner].role is Role.LEADER
    assert c.cores[winner].term == 2  # one round: no split vote and no second election
    assert c.cores[loser].role is Role.FOLLOWER and c.cores[loser].term == 2
    assert c.disks[loser].voted_for == c.id(winner)


def test_a_pre_candidate_stands_aside_only_for_an_equal_or_better_log() -> None:
    c = led_with_one_block()
    c.tick("a1", AFTER_TIMEOUT)
    assert c.cores["a1"].role is Role.PRE_CANDIDATE
    # A pre-candidate whose log is behind (an empty one) gets no pre-vote: a1 goes on, even
    # when that node's id sorts first.
    behind = VoteRequest(True, CHAIN, 2, c.id("a2"), 0, 0)
    c.step("a1", Received(c.id("a2"), behind))
    assert c.cores["a1"].role is Role.PRE_CANDIDATE
    # One whose log is better (a later height in the same term) wins it, whatever its id.
    ahead = VoteRequest(True, CHAIN, 2, c.id("a2"), 1, 5)
    c.step("a1", Received(c.id("a2"), ahead))
    assert c.cores["a1"].role is Role.FOLLOWER


def test_a_pre_candidate_does_not_stand_aside_twice_in_a_row() -> None:
    """A log position in a pre-vote request is only claimed: an authority that claimed a better
    log at every round would keep the others from ever standing. After standing aside once, the
    next round goes on whatever is claimed; the one after may stand aside again."""
    c = led_with_one_block()
    ahead = VoteRequest(True, CHAIN, 2, c.id("a2"), 1, 5)
    roles = []
    for _ in range(3):
        c.tick("a1", AFTER_TIMEOUT)
        assert c.cores["a1"].role is Role.PRE_CANDIDATE
        c.step("a1", Received(c.id("a2"), ahead))
        roles.append(c.cores["a1"].role)
    assert roles == [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.FOLLOWER]


def test_vote_is_granted_once_per_term_and_durable_before_it_leaves() -> None:
    c = Cluster(3)
    req = VoteRequest(False, CHAIN, 1, c.id("a0"), 0, 0)
    out = c.step("a1", Received(c.id("a0"), req))
    kinds = [type(a) for a in out]
    assert kinds.index(PersistHardState) < kinds.index(Send)
    granted = next(a.message for a in out if isinstance(a, Send))
    assert isinstance(granted, VoteResponse) and granted.vote is not None
    assert (c.disks["a1"].term, c.disks["a1"].voted_for) == (1, c.id("a0"))
    other = VoteRequest(False, CHAIN, 1, c.id("a2"), 0, 0)
    out = c.step("a1", Received(c.id("a2"), other))
    refused = next(a.message for a in out if isinstance(a, Send))
    assert isinstance(refused, VoteResponse) and refused.vote is None
    # After a restart from disk it still remembers the vote.
    c.step("a1", Restart(c.disks["a1"], 0.0))
    out = c.step("a1", Received(c.id("a2"), other))
    assert next(a.message for a in out if isinstance(a, Send)).vote is None


def test_vote_refused_to_a_candidate_with_an_older_log() -> None:
    c = Cluster(3)
    c.elect("a0")
    c.step("a0", Propose("r1", b"x"))
    c.deliver()
    assert c.cores["a1"].last_height == 2
    c.tick("a1", AFTER_TIMEOUT)  # no leader heard for long: not in lease any more
    stale = VoteRequest(False, CHAIN, 5, c.id("a2"), 1, 1)
    out = c.step("a1", Received(c.id("a2"), stale))
    reply = next(a.message for a in out if isinstance(a, Send))
    assert reply.vote is None and c.cores["a1"].term == 5
    newer = VoteRequest(False, CHAIN, 5, c.id("a0"), 1, 2)
    out = c.step("a1", Received(c.id("a0"), newer))
    assert next(a.message for a in out if isinstance(a, Send)).vote is not None


def test_check_quorum_makes_a_cut_off_leader_step_down() -> None:
    c = Cluster(3)
    c.elect("a0")
    for _ in range(12):
        c.tick("a0", 0.2)
        c.deliver(lambda w: True)  # nothing gets through
    core = c.cores["a0"]
    assert core.role is Role.FOLLOWER and core.leader_id is None and core.term == 1
    assert answers(c.step("a0", Propose("r", b"x"))) == [Unavailable(PARAMS.election_timeout_max)]


def test_followers_redirect_to_the_proven_leader() -> None:
    c = Cluster(3, 1)
    c.elect("a0")
    c.heartbeat("a0")
    assert answers(c.step("a1", Propose("r", b"x"))) == [Redirect(c.id("a0"))]
    assert answers(c.step("l0", Propose("r", b"x"))) == [Redirect(c.id("a0"))]


# --- replication ---


def test_leader_backs_up_and_the_follower_truncates_an_uncommitted_suffix() -> None:
    c = Cluster(3)
    c.elect("a0")
    # a0 appends two blocks nobody else sees, then a1 is elected without it.
    c.step("a0", Propose("lost1", b"lost1"))
    c.step("a0", Propose("lost2", b"lost2"))
    c.wire.clear()
    c.tick("a2", PARAMS.election_timeout_min)  # a2's lease on a0 runs out
    c.elect("a1", cut(c, "a0"))
    c.step("a1", Propose("kept", b"kept"))
    c.deliver(cut(c, "a0"))
    assert c.cores["a0"].last_height == 3 and c.cores["a0"].commit_height == 1
    out = c.tick("a1", 0.2) + c.deliver()
    truncations = [a for a in out if isinstance(a, TruncateLog)]
    assert truncations and all(t.from_height > 1 for t in truncations)
    a0, a1 = c.cores["a0"], c.cores["a1"]
    assert a0.role is Role.FOLLOWER and a0.term == 2
    assert [a0.block(h).hash for h in range(1, 4)] == [a1.block(h).hash for h in range(1, 4)]
    assert b"lost1" not in [b.payload for b in c.disks["a0"].log]


def test_commit_by_counting_only_in_the_leaders_current_term() -> None:
    c = Cluster(3)
    c.elect("a0")
    c.step("a0", Propose("old", b"old"))  # height 2, term 1: reaches a1, its ack is lost
    c.deliver(lambda w: w.to == "a2" or w.to == "a0")
    assert c.cores["a1"].last_height == 2 and c.cores["a0"].commit_height == 1
    c.wire.clear()
    # a1 wins term 2 (a2 votes: a1's log is longer); its start block at 3 is of term 2.
    c.tick("a1", AFTER_TIMEOUT)
    c.tick("a2", AFTER_TIMEOUT)
    c.wire.clear()
    c.elect("a1", lambda w: w.to == "a0" or (isinstance(w.message, AppendBlocks)))
    a1 = c.cores["a1"]
    assert a1.role is Role.LEADER and a1.term == 2 and a1.block(2).term == 1
    c.wire.clear()
    # a2 acks the term-1 block at height 2: a majority holds it, still not committed (§5.4.2).
    old = a1.block(2)
    out = c.step("a2", Received(c.id("a1"), _append(c, a1, prev=1, upto=2)))
    assert c.cores["a2"].last_height == 2
    forged = AppendResponse(2, True, 2, (c.ack("a2", old, term=2),))
    out = c.step("a1", Received(c.id("a2"), forged))
    assert a1.commit_height == 1 and not [a for a in out if isinstance(a, Commit)]
    # Once a2 acks the term-2 block, both commit (the old one indirectly).
    out = c.step(
        "a1", Received(c.id("a2"), AppendResponse(2, True, 3, (c.ack("a2", a1.block(3)),)))
    )
    assert a1.commit_height == 3
    assert [a.block.height for a in out if isinstance(a, Apply)] == [2, 3]


def _append(c: Cluster, leader: ConsensusCore, *, prev: int, upto: int) -> AppendBlocks:
    blocks = tuple(leader.block(h) for h in range(prev + 1, upto + 1))
    election = leader.block(3).election
    assert election is not None
    return AppendBlocks(
        leader.term, leader.node_id, prev, leader.block(prev).hash, blocks, election, None
    )


def test_durable_log_before_the_ack_leaves() -> None:
    c = Cluster(3)
    c.elect("a0")
    c.step("a0", Propose("r", b"x"))
    wire = next(w for w in c.wire if w.to == "a1")
    out = c.step("a1", Received(wire.sender, wire.message))
    kinds = [type(a) for a in out]
    assert kinds.index(AppendLog) < kinds.index(Send)
    reply = next(a.message for a in out if isinstance(a, Send))
    assert isinstance(reply, AppendResponse) and [a.height for a in reply.acks] == [2]


def test_restart_recovers_commit_from_certificates_and_resumes_applying() -> None:
    c = Cluster(3)
    c.elect("a0")
    for i in range(3):
        c.step("a0", Propose(f"r{i}", b"%d" % i))
        c.deliver()
    c.heartbeat("a0")
    disk = c.disks["a1"]
    assert c.cores["a1"].commit_height == 4
    state = DurableState(disk.term, disk.voted_for, list(disk.log), dict(disk.certificates), 2)
    out = c.step("a1", Restart(state, 100.0))
    core = c.cores["a1"]
    assert core.commit_height == 4 and core.leader_id is None and core.term == 1
    assert [a.block.height for a in out if isinstance(a, Apply)] == [3, 4]


def test_a_clock_jumping_backwards_neither_fires_nor_stalls_timers() -> None:
    c = Cluster(3)
    core = c.cores["a0"]
    c.step("a0", Tick(0.5))
    c.step("a0", Tick(-5000.0))  # jumps back: counts as no time passing
    c.step("a0", Tick(-5000.0 + 0.4))
    assert core.role is Role.FOLLOWER  # 0.9 s elapsed: below any election timeout
    out = c.step("a0", Tick(-5000.0 + AFTER_TIMEOUT))  # and time flows again from there
    assert core.role is Role.PRE_CANDIDATE
    assert any(isinstance(a, Send) and isinstance(a.message, VoteRequest) for a in out)


# --- learners ---


def test_learners_never_vote_and_hold_only_committed_blocks() -> None:
    c = Cluster(3, 2)
    out = c.step("l0", Received(c.id("a0"), VoteRequest(False, CHAIN, 1, c.id("a0"), 0, 0)))
    assert out == []
    c.elect("a0")
    for i in range(5):
        c.step("a0", Propose(f"r{i}", b"%d" % i))
        c.deliver()
        for name in ("l0", "l1"):
            core = c.cores[name]
            assert core.role is Role.LEARNER
            assert core.last_height == core.commit_height  # never an uncommitted block
    c.heartbeat("a0")
    assert c.cores["l1"].commit_height == 6
    assert [b.hash for b in c.applied["l1"]] == [b.hash for b in c.applied["a0"]]


def test_learner_refuses_blocks_without_a_valid_certificate() -> None:
    c = Cluster(3, 1)
    c.elect("a0")
    c.heartbeat("a0")
    a0, l0 = c.cores["a0"], c.cores["l0"]
    election = a0.block(1).election
    assert election is not None
    block = Block.build(
        CHAIN,
        height=2,
        term=1,
        parent_hash=a0.block(1).hash,
        kind=BlockKind.DATA,
        payload=b"forged",
    )
    minority = c.certify(block, ["a1"])
    forged_sig = c.certify(block, ["a0", "a1"])
    forged_sig = replace(
        forged_sig, acks=(forged_sig.acks[0], replace(forged_sig.acks[1], signature=b"\0" * 64))
    )
    for cert in (minority, forged_sig):
        msg = CertifiedBlocks(1, c.id("a0"), (block,), cert, election)
        out = c.step("l0", Received(c.id("a0"), msg))
        assert not [a for a in out if isinstance(a, AppendLog | Apply)]
    assert l0.last_height == 1
    good = CertifiedBlocks(1, c.id("a0"), (block,), c.certify(block, ["a0", "a2"]), election)
    out = c.step("l0", Received(c.id("a0"), good))
    assert [a.block.payload for a in out if isinstance(a, Apply)] == [b"forged"]
    # The certificate is durable before the block: a crash never leaves an unprovable block.
    kinds = [type(a) for a in out]
    assert kinds.index(StoreCertificate) < kinds.index(AppendLog)


# --- membership ---


def test_authority_changes_apply_at_once_one_at_a_time() -> None:
    c = Cluster(3)
    c.elect("a0")
    a0 = c.cores["a0"]
    newcomer = Identity.generate()
    add = AuthorityChange("add", newcomer.node_id, newcomer.public_key)
    out = c.step("a0", ProposeChange("c1", add))
    assert newcomer.node_id in a0.authorities()  # in force as soon as appended
    assert answers(out) == []
    second = AuthorityChange("remove", c.id("a2"))
    assert answers(c.step("a0", ProposeChange("c2", second))) == [
        Unavailable(PARAMS.heartbeat_interval)
    ]
    out = c.deliver(lambda w: w.to not in ("a0", "a1", "a2"))
    assert a0.commit_height == 2  # 3 of the 4 authorities acked the change
    assert any(isinstance(o, Accepted) for o in answers(out))
    assert answers(c.step("a0", ProposeChange("c4", AuthorityChange("remove", "nobody")))) == [
        Rejected("nobody is not an authority")
    ]
    assert answers(c.step("a0", ProposeChange("c3", second))) == []  # now it may go
    assert c.id("a2") not in a0.authorities()


def test_a_learner_added_as_authority_acks_at_once() -> None:
    c = Cluster(3, 1)
    c.elect("a0")
    c.heartbeat("a0")
    l0 = c.cores["l0"]
    assert l0.role is Role.LEARNER and l0.commit_height == 1
    add = AuthorityChange("add", c.id("l0"), c.identities["l0"].public_key)
    c.step("a0", ProposeChange("c", add))
    # 4 authorities now: a0, a1 and the newcomer make the majority without a2.
    out = c.deliver(lambda w: w.to == "a2")
    assert l0.role is Role.FOLLOWER and c.id("l0") in l0.authorities()
    assert any(isinstance(o, Accepted) for o in answers(out))
    assert c.cores["a0"].commit_height == 2


def test_leader_cannot_remove_itself() -> None:
    c = Cluster(3)
    c.elect("a0")
    [outcome] = answers(c.step("a0", ProposeChange("c", AuthorityChange("remove", c.id("a0")))))
    assert isinstance(outcome, Rejected)


def test_removed_authority_stops_running_and_learns_from_certified_blocks() -> None:
    c = Cluster(3)
    c.elect("a0")
    c.step("a0", ProposeChange("c", AuthorityChange("remove", c.id("a2"))))
    c.deliver()
    c.heartbeat("a0")
    a2 = c.cores["a2"]
    assert a2.role is Role.LEARNER and c.id("a2") not in a2.authorities()
    out = c.tick("a2", AFTER_TIMEOUT)
    assert not [a for a in out if isinstance(a, Send)]  # runs no election
    assert a2.role is Role.LEARNER
    c.step("a0", Propose("r", b"after"))
    c.deliver()
    c.heartbeat("a0")
    assert a2.commit_height == 3 and a2.block(3).payload == b"after"


# --- Byzantine inputs ---


def test_a_stranger_cannot_claim_leadership_or_raise_terms() -> None:
    c = Cluster(3)
    c.elect("a0")
    stranger = Identity.generate().node_id
    forged_election = replace(c.election(7, "a1", ["a1", "a2"]), candidate=stranger)
    block = Block.build(
        CHAIN, height=2, term=7, parent_hash=c.cores["a1"].block(1).hash, kind=BlockKind.DATA
    )
    claim = AppendBlocks(7, stranger, 1, block.parent_hash, (block,), forged_election, None)
    for name in ("a1", "a2"):
        assert c.step(name, Received(stranger, claim)) == []
        req = VoteRequest(False, CHAIN, 50, stranger, 99, 99)
        assert c.step(name, Received(stranger, req)) == []
    assert [c.cores[n].term for n in ("a0", "a1", "a2")] == [1, 1, 1]
    assert c.cores["a1"].leader_id == c.id("a0")


def test_forged_or_replayed_votes_do_not_elect() -> None:
    c = Cluster(3)
    c.tick("a0", AFTER_TIMEOUT)
    c.wire.clear()  # a0 is pre-candidate for term 1; nobody answers
    forged = replace(c.vote("a1", 1, "a0", (0, 0)), kind="pre_vote", signature=b"\1" * 64)
    c.step("a0", Received(c.id("a1"), VoteResponse(True, 0, forged)))
    assert c.cores["a0"].role is Role.PRE_CANDIDATE
    # A real vote from an old term, replayed, counts for nothing either.
    c.step("a0", Received("anyone", VoteResponse(True, 0, c.vote("a1", 1, "a0", (0, 0)))))
    assert c.cores["a0"].role is Role.PRE_CANDIDATE and c.cores["a0"].term == 0


# --- fork evidence ---


def test_two_certificates_at_one_height_are_fork_evidence_and_stop_applying() -> None:
    c = Cluster(3, 1)
    c.elect("a0")
    c.step("a0", Propose("r", b"ours"))
    c.deliver()
    c.heartbeat("a0")
    l0, a0 = c.cores["l0"], c.cores["a0"]
    assert l0.commit_height == 2
    ours = a0.block(2)
    theirs = Block.build(
        CHAIN, height=2, term=1, parent_hash=ours.parent_hash, kind=BlockKind.DATA, payload=b"b"
    )
    election = a0.block(1).election
    assert election is not None
    msg = CertifiedBlocks(1, c.id("a0"), (theirs,), c.certify(theirs, ["a1", "a2"]), election)
    out = c.step("l0", Received(c.id("a0"), msg))
    [fork] = [a for a in out if isinstance(a, ForkDetected)]
    assert fork.evidence.height == 2
    assert (fork.evidence.our_block.hash, fork.evidence.their_block.hash) == (
        ours.hash,
        theirs.hash,
    )
    assert l0.forked and l0.block(2).hash == ours.hash  # keeps its own, removes nothing
    c.step("a0", Propose("r2", b"later"))
    c.deliver()
    c.heartbeat("a0")
    assert l0.commit_height == 2 and [b.height for b in c.applied["l0"]] == [1, 2]


def test_an_authority_reports_a_certified_conflict_with_its_committed_block() -> None:
    c = led_with_one_block(b"ours")
    a0, a1 = c.cores["a0"], c.cores["a1"]
    assert a1.commit_height == 2
    ours = a1.block(2)
    theirs = Block.build(
        CHAIN, height=2, term=1, parent_hash=ours.parent_hash, kind=BlockKind.DATA, payload=b"b"
    )
    election = a0.block(1).election
    assert election is not None
    uncertified = AppendBlocks(1, c.id("a0"), 1, ours.parent_hash, (theirs,), election, None)
    out = c.step("a1", Received(c.id("a0"), uncertified))
    assert out == [] and not a1.forked and a1.block(2) == ours  # refused, nothing removed
    cert = c.certify(theirs, ["a0", "a2"])
    proof = AppendBlocks(1, c.id("a0"), 1, ours.parent_hash, (theirs,), election, cert)
    out = c.step("a1", Received(c.id("a0"), proof))
    [fork] = [a for a in out if isinstance(a, ForkDetected)]
    assert fork.evidence.theirs == cert and fork.evidence.our_block == ours
    assert a1.forked and a1.block(2) == ours
    assert answers(c.step("a1", Propose("r2", b"x"))) == [Unavailable(PARAMS.election_timeout_max)]


def test_genesis_hash_is_per_chain() -> None:
    assert genesis_hash(CHAIN) != genesis_hash("other")


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_every_cluster_size_elects_and_commits(n: int) -> None:
    c = Cluster(n)
    c.elect("a0")
    out = c.step("a0", Propose("r", b"x"))
    out += c.deliver()
    assert [o for o in answers(out) if isinstance(o, Accepted)]
    assert all(core.term == 1 for core in c.cores.values())


def test_an_older_answer_does_not_resend_blocks_already_on_their_way() -> None:
    """Two proposals in a row: a1's answer to the first commits it, and the news goes out
    without the second block, which is in the message a1 has not answered yet; a lost message
    is recovered from a1's refusal; both commit."""
    c = Cluster(3)
    c.elect("a0")
    c.step("a0", Propose("r1", b"x"))
    c.step("a0", Propose("r2", b"y"))
    to_a1 = [w for w in c.wire if w.to == "a1"]
    assert [[b.payload for b in w.message.blocks] for w in to_a1] == [[b"x"], [b"y"]]
    c.wire = [w for w in c.wire if w.to != "a1"]
    first_answer = next(
        a.message
        for a in c.step("a1", Received(to_a1[0].sender, to_a1[0].message))
        if isinstance(a, Send)
    )
    c.wire = [w for w in c.wire if w.sender != c.id("a1")]
    out = c.step("a0", Received(c.id("a1"), first_answer))  # commits x: tells everyone
    [commit_news] = [a.message for a in out if isinstance(a, Send) and a.to == c.id("a1")]
    assert isinstance(commit_news, AppendBlocks) and commit_news.blocks == ()
    c.step("a1", Received(to_a1[1].sender, to_a1[1].message))
    c.deliver()
    assert [b.payload for b in c.applied["a1"]][-2:] == [b"x", b"y"]
    # A message lost on the way: a1 refuses the next one (its prev is beyond a1's log), and
    # the leader sends from the gap.
    c.step("a0", Propose("r3", b"z"))
    c.wire = [w for w in c.wire if w.to != "a1"]
    c.step("a0", Propose("r4", b"w"))
    c.deliver()
    c.heartbeat("a0")
    assert [b.payload for b in c.applied["a1"]][-2:] == [b"z", b"w"]
    assert c.cores["a0"].commit_height == c.cores["a0"].last_height


# --- memory: old blocks are read back from disk ---


SMALL_MEMORY = small_memory(PARAMS, blocks=8, block_bytes=1000)


def test_old_blocks_leave_memory_and_lagging_peers_get_them_from_disk() -> None:
    """With a budget of a few blocks, the leader keeps only recent ones in memory; an
    authority and a learner that missed 30 blocks get them all, read back from disk, in
    bounded messages."""
    params = SMALL_MEMORY
    c = Cluster(3, 1, params=params, cold=True)
    c.elect("a0")
    away = ("a2", "l0")
    payloads = [bytes([i]) * 1000 for i in range(30)]
    for i, payload in enumerate(payloads):
        c.step("a0", Propose(f"r{i}", payload))
        c.deliver(cut(c, *away))
    leader = c.cores["a0"]
    assert leader.commit_height == 31
    assert leader.memory_base >= 20  # most blocks are on disk only
    sizes: list[int] = []
    for _ in range(10):
        c.tick("a0", params.heartbeat_interval)
        sizes += [
            len(w.message.blocks)
            for w in c.wire
            if isinstance(w.message, AppendBlocks | CertifiedBlocks)
        ]
        c.deliver()
    for name in away:
        data = [b.payload for b in c.applied[name] if b.kind is BlockKind.DATA]
        assert data == payloads, name
        assert c.cores[name].memory_base > 0
    assert max(sizes) == 8  # catching up, and never more than a message's limit

    # A restart holds only the blocks near its applied mark; the rest stays on disk.
    c.step("a1", Restart(c.disks["a1"].windowed(keep=2), 100.0))
    base = c.disks["a1"].applied_height - 2
    core = c.cores["a1"]
    assert core.memory_base == base == 29 and core.commit_height == 31
    assert core.block(1) == c.disks["a1"].log[0]
    c.step("a0", Propose("late", b"late"))
    c.deliver()
    c.heartbeat("a0")
    assert c.applied["a1"][-1].payload == b"late" and core.commit_height == 32


def test_a_restart_knows_the_authority_changes_below_its_window() -> None:
    c = Cluster(3, params=SMALL_MEMORY, cold=True)
    c.elect("a0")
    c.step("a0", ProposeChange("c1", AuthorityChange("remove", c.id("a2"))))
    c.deliver()
    for i in range(12):
        c.step("a0", Propose(f"r{i}", bytes(1000)))
        c.deliver()
    c.heartbeat("a0")
    disk = c.disks["a1"]
    change_height = next(b.height for b in disk.log if b.change is not None)
    state = c.disks["a1"].windowed(keep=2)
    assert state.base > change_height and state.changes
    c.step("a1", Restart(state, 100.0))
    core = c.cores["a1"]
    assert set(core.authorities()) == {c.id("a0"), c.id("a1")}
    assert c.id("a2") in core.authorities_at(change_height - 1)


def test_applying_again_from_below_the_window_reads_the_blocks_back() -> None:
    """A store restored from an older backup: the node lowers the applied mark below what its
    start-up loaded, and every block from there is applied again, read back from disk, a
    memory budget's worth a step (the ticks go on with it), in order."""
    c = Cluster(3, params=SMALL_MEMORY, cold=True)
    c.elect("a0")
    for i in range(30):
        c.step("a0", Propose(f"r{i}", bytes([i]) * 1000))
        c.deliver()
    c.heartbeat("a0")
    state = c.disks["a1"].windowed(keep=2)
    assert state.base > 3
    out = c.step("a1", Restart(replace(state, applied_height=3), 100.0))
    steps = [[a.block for a in out if isinstance(a, Apply)]]
    while c.cores["a1"].applied_height < 31:
        out = c.tick("a1", 0.05)
        steps.append([a.block for a in out if isinstance(a, Apply)])
    assert [b for step in steps for b in step] == c.disks["a1"].log[3:31]
    assert len(steps) >= 3
    assert all(sum(len(b.payload) for b in step) <= SMALL_MEMORY.memory_bytes for step in steps)


def test_a_learner_asking_again_for_old_blocks_gets_one_batch_per_timeout() -> None:
    """Each batch for a lagging learner may be read back from disk: a learner answering
    "I have nothing" over and over gets no more than one batch per in-flight timeout, while
    an answer that takes the batch has the next one sent at once."""
    c = Cluster(3, 1, params=SMALL_MEMORY, cold=True)
    c.elect("a0", cut(c, "l0"))
    for i in range(12):
        c.step("a0", Propose(f"r{i}", bytes(1000)))
        c.deliver(cut(c, "l0"))
    term = c.cores["a0"].term

    def answer(match: int) -> Received:
        return Received(c.id("l0"), AppendResponse(term, match > 0, match, learner=True))

    def batches(out: list[Action]) -> list[CertifiedBlocks]:
        return [
            a.message for a in out if isinstance(a, Send) and isinstance(a.message, CertifiedBlocks)
        ]

    def in_flight_timeout() -> list[Action]:
        """Heartbeats for 1 s (the in-flight timeout), the authorities answering."""
        out: list[Action] = []
        for _ in range(5):
            out += c.tick("a0", SMALL_MEMORY.heartbeat_interval)
            out += c.deliver(cut(c, "l0"))
        return out

    # Its first batch was lost (cut off); after the in-flight timeout it goes again.
    [sent] = batches(in_flight_timeout())
    assert [len(batches(c.step("a0", answer(0)))) for _ in range(5)] == [0] * 5
    out = in_flight_timeout() + c.step("a0", answer(0))
    assert len(batches(out)) == 1
    [following] = batches(c.step("a0", answer(sent.commit.height)))
    assert following.blocks[0].height == sent.commit.height + 1
