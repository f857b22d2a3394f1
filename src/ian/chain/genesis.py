"""The genesis document: what a chain is, and the chain id every node and statement carries.

A genesis names the network, the goals every node runs, the **authorities** (the nodes that
sequence and vote: 1, 3, 5 or 7 of them, each by node id and Ed25519 public key) and the
consensus parameters. ``chain_id = sha256(canonical_json(genesis))`` over the document with every
default filled in (:meth:`Genesis.chain_id`), so two files that differ only in whitespace, key
order or omitted defaults name the same chain, and any change of substance names another.

Pure: parsing, hashing and the start-up decision (:func:`resolve_genesis`); the node does the
file I/O around them. Errors are :class:`ian.errors.GenesisError` with one line to print.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ian.chain.goals import GoalSpec
from ian.chain.hashing import canonical_json, sha256
from ian.errors import GenesisError
from ian.identity import node_id_for

__all__ = [
    "AUTHORITY_COUNTS",
    "PROTOCOL_VERSION",
    "Authority",
    "ConsensusParams",
    "Genesis",
    "GenesisDecision",
    "goals_of",
    "parse_authority_spec",
    "parse_chain_id",
    "resolve_genesis",
    "sole_authority",
]

#: the protocol this genesis format belongs to
PROTOCOL_VERSION = 1
#: allowed sizes of the authority set (a majority of an even number buys nothing)
AUTHORITY_COUNTS = (1, 3, 5, 7)
#: a genesis file is small; anything bigger is not one
MAX_GENESIS_BYTES = 1024 * 1024

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
NetworkName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class Authority(BaseModel):
    """One voting member: its node id must be the id of its public key (sha256(key)[:20])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str
    public_key: str

    @field_validator("node_id", "public_key", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _key_matches_id(self) -> Authority:
        if not _HEX40.match(self.node_id):
            raise ValueError(f"node_id must be 40 hex digits, got {self.node_id!r}")
        if not _HEX64.match(self.public_key):
            raise ValueError(
                f"public_key of {self.node_id} must be 64 hex digits (a raw Ed25519 key)"
            )
        derived = node_id_for(bytes.fromhex(self.public_key))
        if derived != self.node_id:
            raise ValueError(
                f"node_id {self.node_id} does not belong to its public key (that key is node "
                f"{derived})"
            )
        return self

    @property
    def public_key_bytes(self) -> bytes:
        return bytes.fromhex(self.public_key)


class ConsensusParams(BaseModel):
    """Timing every authority uses (milliseconds). Block limits stay node settings until
    the quorum commit uses them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    election_timeout_min_ms: int = Field(default=1000, ge=50, le=60_000)
    election_timeout_max_ms: int = Field(default=2000, ge=50, le=120_000)
    heartbeat_ms: int = Field(default=150, ge=10, le=30_000)

    @model_validator(mode="after")
    def _ordered(self) -> ConsensusParams:
        if self.election_timeout_max_ms <= self.election_timeout_min_ms:
            raise ValueError("election_timeout_max_ms must be above election_timeout_min_ms")
        if self.heartbeat_ms * 2 > self.election_timeout_min_ms:
            raise ValueError("heartbeat_ms must be at most half of election_timeout_min_ms")
        return self


class Genesis(BaseModel):
    """The genesis document (``genesis.json``). Immutable: a new document is a new chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["ian-genesis"] = "ian-genesis"
    protocol_version: Literal[1] = 1
    network: NetworkName = "ian-local"
    created_at: datetime
    goals: list[GoalSpec] = Field(min_length=1)
    authorities: list[Authority]
    consensus: ConsensusParams = ConsensusParams()

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _sets(self) -> Genesis:
        n = len(self.authorities)
        if n not in AUTHORITY_COUNTS:
            raise ValueError(f"names {n} authorities; a chain has 1, 3, 5 or 7")
        ids = [a.node_id for a in self.authorities]
        if len(set(ids)) != n:
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"names authority {', '.join(twice)} twice")
        goal_ids = [g.id for g in self.goals]
        if len(set(goal_ids)) != len(goal_ids):
            twice = sorted({i for i in goal_ids if goal_ids.count(i) > 1})
            raise ValueError(f"lists goal {', '.join(twice)} twice")
        return self

    # -- identity of the chain

    def canonical(self) -> bytes:
        """The bytes the chain id hashes: canonical JSON with every default filled in."""
        return canonical_json(self.model_dump(mode="json"))

    def chain_id(self) -> str:
        """``sha256(canonical_json(genesis))`` as 64 lowercase hex."""
        return sha256(self.canonical()).hex()

    def to_json(self) -> str:
        """The document as operators read it (indented, keys sorted), ending in a newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @property
    def authority_ids(self) -> tuple[str, ...]:
        return tuple(a.node_id for a in self.authorities)

    def authority(self, node_id: str) -> Authority | None:
        return next((a for a in self.authorities if a.node_id == node_id), None)

    # -- parsing

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "genesis") -> Genesis:
        """Parse and check a genesis document; raises :class:`GenesisError` naming ``source``
        and the first problem."""
        if len(data) > MAX_GENESIS_BYTES:
            raise GenesisError(
                f"{source}: {len(data)} bytes is too big for a genesis document "
                f"(at most {MAX_GENESIS_BYTES})"
            )
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenesisError(f"{source}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise GenesisError(f"{source}: a genesis document is a JSON object")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise GenesisError(
                f"{source}: {where}: {msg}" if where else f"{source} {msg}"
            ) from None

    @classmethod
    def read(cls, path: Path) -> Genesis:
        """Read ``path``; raises :class:`GenesisError` when it is missing or invalid."""
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_GENESIS_BYTES + 1)
        except FileNotFoundError:
            raise GenesisError(f"genesis file {path} does not exist") from None
        except OSError as exc:
            raise GenesisError(f"cannot read genesis file {path}: {exc.strerror or exc}") from None
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def one_authority(
        cls,
        node_id: str,
        public_key: bytes,
        goals: list[GoalSpec],
        *,
        network: str = "ian-local",
        now: datetime | None = None,
    ) -> Genesis:
        """The genesis a lone node makes for itself: it is the only authority."""
        return cls(
            network=network,
            created_at=now or datetime.now(UTC),
            goals=goals,
            authorities=[Authority(node_id=node_id, public_key=public_key.hex())],
        )


def goals_of(genesis: Genesis | None, configured: list[GoalSpec]) -> list[GoalSpec]:
    """The goals a node runs: its genesis's when it has pinned one, else ``configured``."""
    return list(genesis.goals) if genesis is not None else list(configured)


def sole_authority(genesis: Genesis | None) -> str | None:
    """The node id every block must be signed by on a one-authority chain, else None."""
    if genesis is not None and len(genesis.authorities) == 1:
        return genesis.authorities[0].node_id
    return None


def parse_chain_id(text: str) -> str:
    """A chain id as given by an operator (64 hex digits, any case) → lowercase hex."""
    value = text.strip().lower()
    if not _HEX64.match(value):
        raise GenesisError(f"chain id must be 64 hex digits, got {text!r}")
    return value


def parse_authority_spec(
    spec: str, load_identity: Callable[[Path], tuple[str, bytes]]
) -> Authority:
    """``NODE_ID:PUBLIC_KEY_HEX``, or a data directory holding ``identity.json`` →
    :class:`Authority`. ``load_identity(path)`` returns (node id, raw public key) of an
    identity file (injected: this module does no I/O of its own)."""
    text = spec.strip()
    if ":" in text and not Path(text).exists():
        node_id, _, key = text.partition(":")
        try:
            return Authority(node_id=node_id, public_key=key)
        except ValidationError as exc:
            msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise GenesisError(f"authority {spec!r}: {msg}") from None
    path = Path(text)
    if not path.is_dir():
        raise GenesisError(
            f"authority {spec!r} is neither NODE_ID:PUBLIC_KEY_HEX nor a data directory"
        )
    node_id, public_key = load_identity(path / "identity.json")
    return Authority(node_id=node_id, public_key=public_key.hex())


@dataclass(frozen=True)
class GenesisDecision:
    """What start-up does about genesis: ``genesis`` to run with (None: none pinned yet, the
    node runs as before), ``pin`` = write it into the data dir, ``how`` = one line for the log."""

    genesis: Genesis | None
    pin: bool
    how: str


def resolve_genesis(
    *,
    stored: Genesis | None,
    given: Genesis | None,
    given_path: str | None,
    chain_id: str | None,
    has_seeds: bool,
    leads_alone: bool,
    make_own: Callable[[], Genesis],
) -> GenesisDecision:
    """Decide the genesis at start-up (pure). ``stored``: the data dir's ``genesis.json``;
    ``given``: the ``IAN_GENESIS`` file; ``chain_id``: ``IAN_CHAIN_ID``; ``leads_alone``: this
    node would sequence with nobody to ask (no seeds, or configured as sequencer).

    Rules: a given genesis is pinned on first start and must equal the stored one after; an
    ``IAN_CHAIN_ID`` must match whatever genesis is used; a node that leads alone and has none
    makes a one-authority genesis naming itself; a node with seeds and none waits for one over
    P2P (:mod:`ian.ledger.genesis_exchange`). Raises :class:`GenesisError` (one line) on
    any disagreement."""
    if given is not None and stored is not None and given.chain_id() != stored.chain_id():
        raise GenesisError(
            f"IAN_GENESIS {given_path} is chain {given.chain_id()[:16]}…, but this data dir is "
            f"pinned to chain {stored.chain_id()[:16]}…",
            fix="point IAN_GENESIS at this chain's genesis, or use another data dir",
        )
    if stored is not None:
        decision = GenesisDecision(stored, False, "genesis pinned in the data dir")
    elif given is not None:
        decision = GenesisDecision(given, True, f"genesis from {given_path}, now pinned")
    elif chain_id is not None:
        if has_seeds:
            return GenesisDecision(
                None, False, f"waiting for chain {chain_id}'s genesis from a peer"
            )
        raise GenesisError(
            "IAN_CHAIN_ID is set but this node has no genesis and no seeds to fetch it from",
            fix="give the genesis document with IAN_GENESIS=FILE (`ian network show` prints it)",
        )
    elif leads_alone:
        own = make_own()
        decision = GenesisDecision(own, True, "made a one-authority genesis naming this node")
    else:
        return GenesisDecision(None, False, "no genesis yet: it comes from the first seed")
    genesis = decision.genesis
    assert genesis is not None
    if chain_id is not None and genesis.chain_id() != chain_id:
        raise GenesisError(
            f"IAN_CHAIN_ID is {chain_id[:16]}…, but the genesis is chain "
            f"{genesis.chain_id()[:16]}…",
            fix="set IAN_CHAIN_ID to this chain's id (`ian network show`), or use another data dir",
        )
    return decision
