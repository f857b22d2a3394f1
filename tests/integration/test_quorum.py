"""Three authorities and two followers as real `ian node run` processes on loopback (CONSENSUS.md):
contributions are answered after a majority stored them, a killed leader is replaced, nothing
answered ``accepted`` is lost and no log index is given twice."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import threading
import time
from typing import Any

import anyio
import httpx
from tests.support.hostile import HostilePeer, frame
from tests.support.nodes import NodeProcess, contribution, wait_until
from tests.support.quorum import (
    Quorum,
    commit,
    dump,
    log_of,
    node_by_id,
    start_quorum,
    submit,
    wait_leader,
)

from ian.chain.genesis import Genesis
from ian.consensus import (
    AppendBlocks,
    ElectionCertificate,
    IdentitySigner,
    Vote,
    genesis_hash,
)
from ian.consensus.codec import encode
from ian.p2p.transport import TlsCredentials
from ian.storage.datadir import init_data_dir


def wait_same_log(q: Quorum, expected: dict[int, str], timeout: float = 30.0) -> None:
    """Until every live node holds ``expected`` (or more), identically."""

    def same() -> bool:
        logs = [log_of(n) for n in q.live()]
        return all(lg == logs[0] for lg in logs) and expected.items() <= logs[0].items()

    try:
        wait_until(same, timeout=timeout, what="the same log on every live node")
    except BaseException:
        print(dump(q))
        raise


def test_contributions_commit_on_a_majority_and_reach_every_node(ian_nodes, ian) -> None:
    q = start_quorum(ian_nodes, authorities=3, followers=2)
    leader = node_by_id(q.nodes, wait_leader(q.nodes))
    st = leader.status()
    assert st["role"] == "leader" and st["term"] >= 1
    roles = sorted(n.status()["role"] for n in q.nodes)
    assert roles == ["authority", "authority", "follower", "follower", "leader"]
    accepted: dict[int, str] = {}
    # Through every node: the leader sequences, the others forward to it.
    for i, node in enumerate(q.nodes):
        doc = commit(node, contribution(i, tag="quorum"))
        assert doc["accepted"] is True, doc
        accepted[doc["log_index"]] = doc["contribution_hash"]
    assert sorted(accepted) == list(range(len(q.nodes)))
    wait_same_log(q, accepted)
    # Every node agrees on the chain, and the leader's commit certificate covers it.
    views = {n.data_dir.name: n.chain_view() for n in q.nodes}
    assert len({repr(v) for v in views.values()}) == 1, views
    metrics = leader.metrics()
    assert metrics["ian_consensus_term"] == st["term"]
    assert metrics["ian_consensus_role"] == 2  # leader
    assert metrics["ian_commit_height"] >= len(q.nodes)
    assert metrics["ian_consensus_log_memory_bytes"] > 0  # its recent blocks
    # `ian node verify`: every block in each store is certified by a majority (while running).
    for n in (q.authorities[1], q.followers[1]):
        checked = ian("node", "verify", "--data-dir", str(n.data_dir), "--json")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        doc = json.loads(checked.stdout)
        assert doc["ok"] and doc["certificates"]["chain_blocks"] == views[n.data_dir.name]["height"]
        assert doc["certificates"]["certificates"] >= 1
    # A certificate whose ack signature was tampered with is caught.
    follower = q.followers[1]
    assert follower.terminate() == 0
    db = sqlite3.connect(follower.data_dir / "consensus.db")
    height, text = db.execute(
        "SELECT height, doc FROM certificates ORDER BY height DESC"
    ).fetchone()
    cert = json.loads(text)
    sig = cert["acks"][0]["signature"]
    cert["acks"][0]["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    db.execute("UPDATE certificates SET doc = ? WHERE height = ?", (json.dumps(cert), height))
    db.commit()
    db.close()
    bad = ian("node", "verify", "--data-dir", str(follower.data_dir))
    assert bad.returncode == 1 and "NOT CERTIFIED" in bad.stdout, bad.stdout + bad.stderr


class Load:
    """Clients submitting without pause to the given nodes (round robin), recording every
    answer: accepted ones by log index, and any index answered twice."""

    def __init__(self, q: Quorum) -> None:
        self.q = q
        self.accepted: dict[int, str] = {}
        self.twice: list[tuple[int, str, str]] = []
        self.statuses: dict[int, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.n = 0
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(3)]

    def _run(self, k: int) -> None:
        i = 0
        while not self.stop.is_set():
            targets = [n for n in self.q.nodes if n.alive]
            node = targets[(i + k) % len(targets)]
            i += 1
            with self.lock:
                self.n += 1
                n = self.n
            try:
                r = submit(node, contribution(n, tag="load"), timeout=10)
            except httpx.HTTPError:
                continue  # the node died under us: the client does not know; no claim
            with self.lock:
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    continue
                doc: dict[str, Any] = r.json()
                if not doc["accepted"]:
                    continue
                index, digest = doc["log_index"], doc["contribution_hash"]
                if index in self.accepted and self.accepted[index] != digest:
                    self.twice.append((index, self.accepted[index], digest))
                self.accepted[index] = digest

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def test_a_killed_leader_is_replaced_and_nothing_accepted_is_lost(ian_nodes) -> None:
    q = start_quorum(ian_nodes, authorities=3, followers=2)
    first = node_by_id(q.nodes, wait_leader(q.nodes))
    with Load(q) as load:
        wait_until(lambda: load.count() >= 30, timeout=30, what="30 accepted before the kill")
        before = load.count()
        first.kill()
        killed_at = time.monotonic()
        survivors = [n for n in q.nodes if n.alive]
        second = wait_leader(survivors, timeout=20, other_than=first.node_id)
        wait_until(
            lambda: load.count() >= before + 30, timeout=30, what="30 more accepted after the kill"
        )
        failover = time.monotonic() - killed_at
        # The old leader comes back as a follower of the new one and catches up.
        again = ian_nodes.restart(first)
        q.authorities[q.authorities.index(first)] = again
        wait_until(
            lambda: again.status()["leader_id"] == second, timeout=30, what="old leader rejoins"
        )
        wait_until(lambda: load.count() >= before + 60, timeout=30, what="60 more accepted")
    assert not load.twice, f"log indices answered twice: {load.twice[:5]}"
    assert again.status()["role"] == "authority"
    wait_same_log(q, load.accepted)
    final = log_of(q.nodes[0])
    assert sorted(final) == list(range(len(final))), "the log has no gaps"
    assert failover < 30, f"{failover:.1f} s to the first commits after the kill"
    print(f"statuses {load.statuses}, failover to 30 more commits {failover:.2f} s")


def test_a_leader_cut_off_from_the_majority_stops_accepting(ian_nodes) -> None:
    """CheckQuorum: with both other authorities frozen (SIGSTOP: their sockets stay open, they
    just never answer), the leader steps down within an election timeout and clients get 503
    with Retry-After, never a false ``accepted``; thawed, the network elects and commits."""
    q = start_quorum(ian_nodes, authorities=3, followers=0)
    leader = node_by_id(q.nodes, wait_leader(q.nodes))
    others = [n for n in q.authorities if n is not leader]
    assert commit(leader, contribution(0, tag="cq"))["accepted"] is True
    for n in others:
        n.signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: leader.status()["role"] != "leader", timeout=10, what="the leader steps down"
        )
        r = submit(leader, contribution(1, tag="cq"))
        assert r.status_code == 503, r.text
        assert float(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "unavailable", r.text
    finally:
        for n in others:
            n.signal(signal.SIGCONT)
    wait_leader(q.nodes)
    r = wait_until(
        lambda: (a := submit(leader, contribution(2, tag="cq"))).status_code == 200 and a,
        timeout=20,
        what="a commit after the thaw",
    )
    assert r.json()["accepted"] is True


def test_liars_change_no_leader_term_or_readiness(ian_nodes, tmp_path) -> None:
    """A stranger that claims to be the sequencer at an absurd height, sends AppendBlocks for a
    far term with an election certificate of its own votes, and announces absurd blocks: no
    node changes leader or term, every node stays ready, and the liar is charged."""
    q = start_quorum(ian_nodes, authorities=3, followers=1)
    leader = wait_leader(q.nodes)
    before = {n.data_dir.name: n.status()["term"] for n in q.nodes}
    genesis = Genesis.read(q.genesis)
    chain = genesis.chain_id()
    init = init_data_dir(tmp_path / "liar")
    creds = TlsCredentials(init.datadir.certs_dir, init.identity)
    liar = init.identity
    signer = IdentitySigner(liar)
    vote = Vote("vote", chain, 1000, liar.node_id, 0, 0, liar.node_id)
    vote = dataclasses.replace(vote, signature=signer.sign(vote.signed_bytes()))
    claim = AppendBlocks(
        term=1000,
        leader=liar.node_id,
        prev_height=0,
        prev_hash=genesis_hash(chain),
        blocks=(),
        election=ElectionCertificate(chain, 1000, liar.node_id, 0, 0, (vote,)),
        commit=None,
    )
    absurd = {"header": {"height": 2**62}, "hash": "00" * 32, "signature": "00" * 64}
    for target in (q.authorities[1], q.followers[0]):
        host, port = target.p2p_address.removeprefix("tcp://").rsplit(":", 1)

        async def act(host: str = host, port: str = port, target: NodeProcess = target) -> None:
            peer = await HostilePeer.connect(
                host, int(port), creds, height=2**62, sequencer=True, chain_id=chain
            )
            try:
                await peer.stream.send(frame("consensus", {"msg": encode(claim)}, msg_id=1))
                await peer.stream.send(frame("block_announce", {"block": absurd}, msg_id=2))
                await anyio.to_thread.run_sync(
                    lambda: wait_until(
                        lambda: (
                            target.get(f"/api/v1/peers/{liar.node_id}").json()["invalid_messages"]
                            > 0
                        ),
                        what="the liar charged",
                    )
                )
            finally:
                await peer.aclose()

        anyio.run(act)
    for n in q.nodes:
        st = n.status()
        assert st["leader_id"] == leader and st["term"] == before[n.data_dir.name], dump(q)
        assert n.get("/readyz").status_code == 200, n.get("/readyz").text
    assert commit(q.followers[0], contribution(0, tag="after-liar"))["accepted"] is True


def test_authorities_are_added_and_removed_one_at_a_time(ian_nodes, ian) -> None:
    """A follower becomes the fourth authority, then an original one is removed; the network
    commits throughout; a second add, an unknown removal and a change asked of a non-leader are
    refused with the reason."""
    q = start_quorum(ian_nodes, authorities=3, followers=1)
    leader = node_by_id(q.nodes, wait_leader(q.nodes))
    newcomer = q.followers[0]
    on_leader = ("--data-dir", str(leader.data_dir), "--node-url", leader.api_url)

    added = ian("network", "authorities", "add", str(newcomer.data_dir), *on_leader, "--json")
    assert added.returncode == 0, added.stderr
    doc = json.loads(added.stdout)
    assert newcomer.node_id in doc["authorities"] and len(doc["authorities"]) == 4
    wait_until(lambda: newcomer.status()["role"] == "authority", what="the newcomer votes")
    assert len(newcomer.status()["authorities"]) == 4

    again = ian("network", "authorities", "add", str(newcomer.data_dir), *on_leader)
    assert again.returncode != 0 and "already an authority" in again.stderr
    unknown = ian("network", "authorities", "remove", "ab" * 20, *on_leader)
    assert unknown.returncode != 0 and "is not an authority" in unknown.stderr
    other = next(n for n in q.authorities if n is not leader)
    elsewhere = ian(
        "network",
        "authorities",
        "remove",
        other.node_id,
        *("--data-dir", str(other.data_dir), "--node-url", other.api_url),
    )
    assert elsewhere.returncode != 0 and "run it on the leader" in elsewhere.stderr

    removed = ian("network", "authorities", "remove", other.node_id, *on_leader)
    assert removed.returncode == 0, removed.stderr
    assert f"removed authority {other.node_id}" in removed.stdout
    wait_until(lambda: other.status()["role"] == "follower", what="the removed one stops voting")
    doc = commit(newcomer, contribution(0, tag="members"))
    assert doc["accepted"] is True, doc
    wait_same_log(q, {doc["log_index"]: doc["contribution_hash"]})


def test_an_authority_restored_from_an_old_backup_catches_up(ian_nodes, ian, tmp_path) -> None:
    """Restore on an authority (here the leader): its chain is older than the network's; it
    comes back as a follower of the others, takes the certified blocks it lacks, and no log
    index is given twice."""
    q = start_quorum(ian_nodes, authorities=3, followers=0)
    leader = node_by_id(q.nodes, wait_leader(q.nodes))
    first = [commit(leader, contribution(i, tag="pre")) for i in range(3)]
    archive = tmp_path / "old.tar"
    made = ian("backup", "--data-dir", str(leader.data_dir), "-o", str(archive))
    assert made.returncode == 0, made.stderr
    later = [commit(leader, contribution(i, tag="post")) for i in range(3, 6)]
    accepted = {a["log_index"]: a["contribution_hash"] for a in first + later}
    assert sorted(accepted) == list(range(6))
    term = leader.status()["term"]
    assert leader.terminate() == 0
    restored = ian("restore", str(archive), "--data-dir", str(leader.data_dir), "--yes")
    assert restored.returncode == 0, restored.stderr
    # The consensus log stays with the node: its term and vote never go back.
    with sqlite3.connect(leader.data_dir / "consensus.db") as db:
        kept = db.execute("SELECT value FROM meta WHERE key = 'term'").fetchone()
    assert kept is not None and int(kept[0]) == term
    again = ian_nodes.restart(leader)
    q.authorities[q.authorities.index(leader)] = again
    wait_same_log(q, accepted)
    nxt = commit(again, contribution(99, tag="after-restore"))
    assert nxt["accepted"] and nxt["log_index"] == 6
    accepted[6] = nxt["contribution_hash"]
    wait_same_log(q, accepted)
    assert not list(again.data_dir.glob("fork-evidence-*.json"))
