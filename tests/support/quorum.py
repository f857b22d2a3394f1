"""Networks of several authorities (CONSENSUS.md) from real `ian node run` processes.

:func:`start_quorum` makes the authorities' data dirs (their identities first), writes a genesis
naming them, starts them with ``IAN_GENESIS`` (each seeded with the ones started before it) and
then the followers — the first with ``IAN_GENESIS`` too, the others with only a seed (trust on
first use) — and returns once every node knows the same leader. Shared by the integration
tests and ``bench/consensus_bench.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tests.support.nodes import TRIVIAL_GOAL, NodeFactory, NodeProcess, wait_until

from ian.chain.genesis import Authority, ConsensusParams, Genesis
from ian.chain.goals import BUILTIN_GOALS, GoalSpec
from ian.storage.datadir import init_data_dir

#: Election timing for tests on a small shared machine: fast enough to fail over in about a
#: second, slow enough that a busy CPU does not start elections by itself.
TEST_CONSENSUS = ConsensusParams(
    election_timeout_min_ms=800, election_timeout_max_ms=1600, heartbeat_ms=100
)

BUILTIN = list(BUILTIN_GOALS)
#: what a node configured like the replication tests' nodes runs: the built-in demo goal and
#: the trivial one
DEFAULT_GOALS = [*BUILTIN, GoalSpec(id=TRIVIAL_GOAL, evaluator="trivial")]

#: Client limits out of the way (the goals come from the genesis).
QUORUM_ENV: dict[str, str] = {
    "IAN_CLIENT_RATE": "100000",
    "IAN_CLIENT_BURST": "100000",
    "IAN_CONTRIBUTOR_RATE": "100000",
    "IAN_CONTRIBUTOR_BURST": "100000",
    "IAN_MIN_PEERS": "0",
}


@dataclass
class Quorum:
    genesis: Path
    authorities: list[NodeProcess]
    followers: list[NodeProcess] = field(default_factory=list)

    @property
    def nodes(self) -> list[NodeProcess]:
        return [*self.authorities, *self.followers]

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive]


def write_genesis(
    path: Path,
    data_dirs: Iterable[Path],
    *,
    goals: list[GoalSpec] | None = None,
    consensus: ConsensusParams = TEST_CONSENSUS,
) -> Genesis:
    """A genesis naming the identities of ``data_dirs`` (created when missing)."""
    authorities = []
    for d in data_dirs:
        identity = init_data_dir(d).identity
        authorities.append(
            Authority(node_id=identity.node_id, public_key=identity.public_key.hex())
        )
    genesis = Genesis(
        created_at=datetime.now(UTC),
        goals=goals or DEFAULT_GOALS,
        authorities=authorities,
        consensus=consensus,
    )
    path.write_text(genesis.to_json())
    return genesis


def start_quorum(
    factory: NodeFactory,
    authorities: int = 3,
    followers: int = 2,
    env: Mapping[str, str] | None = None,
    *,
    goals: list[GoalSpec] | None = None,
) -> Quorum:
    dirs = [factory.data_dir() for _ in range(authorities)]
    genesis = factory.tmp_path / "genesis.json"
    write_genesis(genesis, dirs, goals=goals)
    base = {**QUORUM_ENV, **(env or {}), "IAN_GENESIS": str(genesis)}
    started: list[NodeProcess] = []
    for d in dirs:
        seeds = ",".join(n.p2p_address for n in started)
        extra = {**base, "IAN_SEED_NODES": seeds} if seeds else base
        started.append(factory.start(d, extra, wait=("api", "p2p")))
    q = Quorum(genesis, started)
    seed = ",".join(n.p2p_address for n in started)
    for i in range(followers):
        extra = {**QUORUM_ENV, **(env or {}), "IAN_SEED_NODES": seed}
        if i == 0:
            extra["IAN_GENESIS"] = str(genesis)
        else:  # trust on first use: its goals (built-in + configured) must be the genesis's
            extra["IAN_GOALS"] = json.dumps(
                [g.model_dump(mode="json") for g in goals or DEFAULT_GOALS if g not in BUILTIN]
            )
        q.followers.append(factory.start(env=extra, wait=("api", "p2p")))
    wait_leader(q.nodes)
    return q


def leader_id(nodes: Iterable[NodeProcess]) -> str | None:
    """The leader every node in ``nodes`` names (None unless they all name the same one)."""
    seen = set()
    for n in nodes:
        try:
            seen.add(n.status()["leader_id"])
        except (httpx.HTTPError, ValueError):
            return None
    return seen.pop() if len(seen) == 1 and None not in seen else None


def wait_leader(
    nodes: Iterable[NodeProcess], *, timeout: float = 30.0, other_than: str | None = None
) -> str:
    """Until every node in ``nodes`` names the same leader (not ``other_than``)."""
    nodes = list(nodes)

    def agreed() -> str | None:
        found = leader_id(nodes)
        return found if found != other_than else None

    leader: str = wait_until(agreed, timeout=timeout, what="one leader for all")
    return leader


def node_by_id(nodes: Iterable[NodeProcess], node_id: str) -> NodeProcess:
    return next(n for n in nodes if n.node_id == node_id)


def log_of(node: NodeProcess, goal: str = TRIVIAL_GOAL) -> dict[int, str]:
    """The goal's whole log on ``node``: log index -> contribution hash."""
    out: dict[int, str] = {}
    start: int | None = 0
    while start is not None:
        r = node.get(f"/api/v1/log/{goal}", **{"from": start, "limit": 1000})
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        for e in doc["entries"]:
            out[e["log_index"]] = e["contribution_hash"]
        start = doc["next"]
    return out


def submit(node: NodeProcess, body: dict[str, Any], timeout: float = 15.0) -> httpx.Response:
    return httpx.post(node.api_url + "/api/v1/contribute", json=body, timeout=timeout)


def commit(node: NodeProcess, body: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
    """Submit like a client: a 503 (an election, a new leader not ready yet) is retried after
    its Retry-After; returns the final answer's JSON (status 200)."""
    deadline = time.monotonic() + timeout
    while True:
        r = submit(node, body)
        if r.status_code != 503 or time.monotonic() > deadline:
            assert r.status_code == 200, (r.status_code, r.text)
            doc: dict[str, Any] = r.json()
            return doc
        time.sleep(min(float(r.headers.get("Retry-After", "0.2")), 0.5))


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0


def dump(q: Quorum) -> str:
    """Every node's status summary, for failure messages."""
    rows = []
    for n in q.nodes:
        if not n.alive:
            rows.append(f"{n.data_dir.name}: dead")
            continue
        try:
            s = n.status()
        except httpx.HTTPError as exc:
            rows.append(f"{n.data_dir.name}: {exc}")
            continue
        keep = ("role", "term", "leader_id", "commit_height", "height", "consensus_state")
        rows.append(f"{n.data_dir.name}: " + json.dumps({k: s.get(k) for k in keep}))
    return "\n".join(rows)
