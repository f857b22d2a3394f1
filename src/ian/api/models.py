"""Pydantic models of the HTTP API: the OpenAPI document, the node and the CLI share them.

Every JSON body a route answers with is one of these models, declared once: the CLI builds the
same shapes from them when it works offline (e.g. :class:`PeerList`), and a store record that is
already the shape (:class:`ian.storage.store.LogEntry`) is used as is. Response models that are
read from a core object's dict keep pydantic's default ``extra="ignore"`` unless noted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ian.chain.goals import GOAL_ID_PATTERN
from ian.storage.store import LogEntry

if TYPE_CHECKING:
    from ian.certs import CertInfo
    from ian.p2p.peer_book import PeerBook, PeerRecord


#: standard base64 with padding, at least one byte (what ``decode_parameters`` accepts)
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"


class AgentPackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # The limits are checked (with their own messages) by the intake; json_schema_extra puts
    # them in the OpenAPI document so it states what the node enforces.
    version: str = Field(
        description="Pack version, 1..64 characters",
        examples=["1.0"],
        json_schema_extra={"minLength": 1, "maxLength": 64},
    )
    parameters: str = Field(
        description="Agent parameters, standard base64 (1 B .. 10 MiB)",
        json_schema_extra={"minLength": 4, "pattern": BASE64_PATTERN},
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Free JSON object, ≤100 keys, ≤64 KiB, nested ≤200 levels",
    )


class ContributeRequest(BaseModel):
    # strict: `"seed": true` or `"seed": "5"` is a 400 naming the field, never coerced.
    model_config = ConfigDict(extra="forbid", strict=True)

    goal_id: str = Field(
        examples=["DEMO_TRADING_AGENT"], json_schema_extra={"pattern": GOAL_ID_PATTERN}
    )
    agent_pack: AgentPackIn
    contributor_id: str = Field(
        description="1..128 characters", json_schema_extra={"minLength": 1, "maxLength": 128}
    )
    seed: int = Field(
        default=0,
        description="0..2^63-1, recorded with the contribution",
        json_schema_extra={"minimum": 0, "maximum": 2**63 - 1},
    )


class ContributeResponse(BaseModel):
    accepted: bool
    reason: str
    rejection_type: str | None = None
    score: float | None = None
    metrics: dict[str, float] | None = None
    log_index: int | None = None
    contribution_hash: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Counters(BaseModel):
    received: int = 0
    accepted: int = 0
    rejected: int = 0


class TauCommitSummary(BaseModel):
    """A Tau commit as :meth:`ian.tau.commits.StoredCommit.summary` reports it."""

    goal_id: str
    seq: int
    commit_hash: str
    log_size: int
    height: int
    status: str = Field(description="pending or acknowledged")
    attempts: int
    created_at: float
    at: float | None = Field(description="When Tau acknowledged it (Unix seconds)")
    reply: str | None


class TauPendingCommit(TauCommitSummary):
    last_error: str | None


class TauStatus(BaseModel):
    enabled: bool = False
    endpoint: str | None = None
    breaker_state: str = "CLOSED"
    last_commit: TauCommitSummary | None = None
    pending: int = 0
    last_error: str | None = None


class ActivePolicy(BaseModel):
    """The contribution leading a goal's leaderboard."""

    log_index: int
    score: float
    contributor_id: str


class GoalStatus(BaseModel):
    goal_id: str
    name: str
    log_size: int
    log_root: str
    leaderboard_size: int
    leaderboard_root: str
    active_policy: ActivePolicy | None = Field(
        default=None, description="The leaderboard leader; null while the leaderboard is empty"
    )
    contributions: Counters
    tau: TauStatus


class PeerCounts(BaseModel):
    connected: int = 0
    known: int = 0
    banned: int = 0


class AuthorityChangeRequest(BaseModel):
    """Add or remove one authority (``ian network authorities add/remove``)."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["add", "remove"]
    node_id: str = Field(min_length=40, max_length=40, pattern="^[0-9a-f]{40}$")
    public_key: str | None = Field(
        default=None,
        min_length=64,
        max_length=64,
        pattern="^[0-9a-f]{64}$",
        description="the added authority's raw Ed25519 public key (hex); add only",
    )


class AuthorityChangeResponse(BaseModel):
    op: Literal["add", "remove"]
    node_id: str
    height: int = Field(description="the consensus height of the committed change")
    authorities: list[str] = Field(description="the authority set now in force")


class AuthorityStatus(BaseModel):
    """One authority named by the genesis, as this node sees it."""

    node_id: str
    reachable: bool = Field(description="this node, or connected to it now")
    match_height: int | None = Field(
        description="the height this node knows it holds (its own, or the height it announced)"
    )


class NodeStatus(BaseModel):
    node_id: str
    version: str
    role: str
    network_id: str
    chain_id: str | None = Field(
        default=None, description="sha256 of the pinned genesis; null until one is pinned"
    )
    leader_id: str | None = Field(
        default=None, description="the node that sequences blocks now (null: not known yet)"
    )
    term: int | None = Field(
        default=None,
        description="election term; null on a one-authority chain (no elections)",
    )
    commit_height: int = Field(
        default=0, description="highest committed block here (one authority: every stored block)"
    )
    authorities: list[AuthorityStatus] = Field(default_factory=list)
    height: int
    head_hash: str
    network_height: int
    sync_lag: int
    consensus_state: str
    peers: PeerCounts
    uptime_seconds: float
    started_at: float
    contributions: Counters
    goals: dict[str, GoalStatus]
    tau: TauStatus
    cert_not_after: str | None = None
    last_backup_at: float | None = None


class LeaderboardRow(BaseModel):
    rank: int
    log_index: int
    score: float
    contributor_id: str
    contribution_hash: str


class LeaderboardResponse(BaseModel):
    goal_id: str
    size: int
    capacity: int
    root: str
    entries: list[LeaderboardRow]


#: Config of the models that carry :class:`~ian.storage.store.LogEntry` records: its hashes are
#: ``bytes`` in the store and lowercase hex in JSON.
_HEX_BYTES = ConfigDict(ser_json_bytes="hex", val_json_bytes="hex")


class _BytesAsHex:
    """JSON-schema metadata for a dataclass whose ``bytes`` fields a :data:`_HEX_BYTES` model
    writes as lowercase hex: says so in the schema (pydantic would say raw binary)."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        target = handler.resolve_ref_schema(json_schema)
        for prop in target.get("properties", {}).values():
            if prop.get("format") == "binary" or "contentMediaType" in prop:
                prop.pop("format", None)
                prop.pop("contentMediaType", None)
                prop.update(pattern="^[0-9a-f]*$", description="Lowercase hex")
        return json_schema


#: A log entry in JSON: the store's record as is, hashes in hex (one declaration of the shape).
LogEntryDoc = Annotated[LogEntry, _BytesAsHex()]


class LogResponse(BaseModel):
    model_config = _HEX_BYTES

    goal_id: str
    size: int
    root: str
    entries: list[LogEntryDoc]
    next: int | None = Field(description="`from` for the next page, or null at the end")


class ProofResponse(BaseModel):
    model_config = _HEX_BYTES

    goal_id: str
    log_index: int
    size: int = Field(description="Leaves in the log the proof is for")
    root: str
    leaf: str = Field(description="sha256(0x00 ‖ contribution_hash)")
    path: list[str] = Field(description="Siblings from the leaf up to its peak")
    peaks: list[str] = Field(description="The other peaks, left to right")
    entry: LogEntryDoc


class PolicyResponse(BaseModel):
    goal_id: str
    log_index: int
    score: float
    contributor_id: str
    contribution_hash: str
    agent_pack: AgentPackIn


class GoalInfo(BaseModel):
    id: str
    name: str
    description: str
    evaluator: str
    thresholds: dict[str, float | None]
    weights: dict[str, float]
    leaderboard_capacity: int
    log_size: int


class GoalsResponse(BaseModel):
    goals: list[GoalInfo]


class LogLevelRequest(BaseModel):
    level: str = Field(examples=["DEBUG"])


class LogLevelResponse(BaseModel):
    level: str = Field(description="The level now in force, upper case", examples=["DEBUG"])


class ReadinessCheck(BaseModel):
    ok: bool
    detail: str


class ReadinessReport(BaseModel):
    """``GET /readyz?verbose``: every named check of :meth:`ian.node.Node.readiness`."""

    ready: bool
    checks: dict[str, ReadinessCheck]


class ResyncResponse(BaseModel):
    """What ``POST /api/v1/admin/resync`` did (see ``Replicator.force_resync``)."""

    blocks_removed: int
    peers: int = Field(description="Peers connected when the resync started")


class CertificateInfo(BaseModel):
    """A node certificate as the API and ``ian certs show --json`` print it: the schema of
    :func:`ian.certs.cert_doc`, which builds it. Forbids keys it does not declare, so the two
    cannot drift apart silently."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    subject: str
    san: str
    fingerprint_sha256: str
    not_before: str = Field(description="ISO 8601, UTC")
    not_after: str = Field(description="ISO 8601, UTC")
    days_left: float = Field(description="Days until not_after, 2 decimals; negative once expired")

    @classmethod
    def of(cls, info: CertInfo) -> CertificateInfo:
        """The model of :func:`ian.certs.cert_doc` ``(info)`` (that function is the one shape)."""
        from ian.certs import cert_doc

        return cls.model_validate(cert_doc(info))


# -- Tau bridge ----------------------------------------------------------------------------------


class TauGoalStatus(BaseModel):
    """One goal in the Tau bridge status: its last acknowledged and its pending commit."""

    last_commit: TauCommitSummary | None
    pending: TauPendingCommit | None


class TauBridgeStatus(BaseModel):
    """What ``TauBridge.status()`` reports; see :mod:`ian.tau.bridge`."""

    enabled: bool
    endpoint: str | None
    detail: str | None = None
    committer: bool
    breaker_state: str
    consecutive_failures: int
    retry_in_s: float
    last_commit: TauCommitSummary | None
    pending: int
    last_error: str | None
    last_error_at: float | None
    commits_total: int
    failures_total: int
    goals: dict[str, TauGoalStatus]


class TauResetResponse(BaseModel):
    previous_state: str
    breaker_state: str


# -- peers ---------------------------------------------------------------------------------------


class PeerConnection(BaseModel):
    """A peer connected now, as the P2P layer reports it, with its peer-book score."""

    node_id: str
    address: str
    direction: str | None = Field(description="inbound or outbound")
    connected_since: float | None
    height: int | None = Field(
        description="The peer's chain height as it last announced it (at most ten times a second;"
        " once a second on a chain of several authorities)"
    )
    cert_fingerprint: str | None
    score: float | None = Field(description="Peer-book score; null when the book has no record")


class PeerEntry(BaseModel):
    """One peer-book record (:meth:`ian.p2p.peer_book.PeerRecord.to_dict`), score decayed to
    ``as_of``. Forbids keys it does not declare, so a record field added in the core without
    being added here fails loudly instead of vanishing from the API."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    score: float
    banned: bool
    banned_until: float | None
    ban_reason: str | None
    valid_messages: int
    valid_contributions: int
    successful_syncs: int
    invalid_messages: int
    invalid_contributions: int
    rate_limit_violations: int
    protocol_violations: int
    failed_syncs: int
    first_seen: float
    last_seen: float
    last_connected: float | None
    addresses: list[str]
    connected: bool
    as_of: float = Field(description="When the score was decayed to (Unix seconds)")
    violations: int = Field(description="Sum of the misbehaviour counters")
    trusted: bool

    @classmethod
    def of(cls, record: PeerRecord) -> PeerEntry:
        return cls.model_validate(record.to_dict())


class BanEntry(BaseModel):
    """A ban (:class:`ian.p2p.peer_book.BanInfo`)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="node id, IP address or CIDR")
    kind: str = Field(description="node or ip")
    banned_until: float
    reason: str


class PeerList(BaseModel):
    """``GET /api/v1/peers`` and ``ian peers list --json`` (online or offline).

    ``peers`` is left out of the body (not null) unless the peer records were asked for; build
    it with :meth:`of` and serialise with ``exclude_unset=True``.
    """

    connected: list[PeerConnection]
    known: int = Field(description="Peers in the peer book")
    banned: int = Field(description="Node ids banned now (IP bans are in ip_bans)")
    ip_bans: list[BanEntry]
    peers: list[PeerEntry] | None = Field(
        default=None, description="Peer records, only with all=1 or banned=1"
    )

    @classmethod
    def of(
        cls,
        book: PeerBook,
        connected: list[PeerConnection],
        records: list[PeerRecord] | None,
    ) -> PeerList:
        """The list for ``book``; ``records`` None leaves ``peers`` out."""
        doc = cls(
            connected=connected,
            known=len(book),
            banned=book.banned_count(),
            ip_bans=[BanEntry.model_validate(b.to_dict()) for b in book.ip_bans()],
        )
        if records is not None:
            doc.peers = [PeerEntry.of(r) for r in records]
        return doc


class BanResponse(BanEntry):
    disconnected: list[str] = Field(description="Connected peers the ban disconnected")


class UnbanResponse(BaseModel):
    target: str
    removed: bool = Field(description="False when the target had no ban")


class ConnectResponse(BaseModel):
    address: str
    node_id: str


class PruneResponse(BaseModel):
    kept: int
    removed: int
    removed_ids: list[str] = Field(description="The removed ids, the first 1000")
    dry_run: bool


class P2PLimits(BaseModel):
    max_peers: int
    rate: float
    burst: float


class P2PLimitsChange(BaseModel):
    applied: dict[str, int | float] = Field(description="The fields given, as given")
    limits: P2PLimits


class HttpLimits(BaseModel):
    """Token buckets of the HTTP API: per client address and per contributor."""

    client_rate: float
    client_burst: float
    contributor_rate: float
    contributor_burst: float


class HttpLimitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_rate: float | None = Field(default=None, ge=0.0001, le=1_000_000)
    client_burst: float | None = Field(default=None, ge=1, le=1_000_000)
    contributor_rate: float | None = Field(default=None, ge=0.0001, le=1_000_000)
    contributor_burst: float | None = Field(default=None, ge=1, le=1_000_000)


class HttpLimitsChange(BaseModel):
    applied: dict[str, float] = Field(description="The fields given, as given")
    limits: HttpLimits


class BanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(description="node id (40 hex), IP address or CIDR")
    seconds: float = Field(gt=0, description="ban duration in seconds")
    reason: str = Field(min_length=1, max_length=500)


class TargetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node_id: str


class ConnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(description="tcp://host:port")


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_s: float = Field(ge=0)
    dry_run: bool = False


class LimitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_peers: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=1)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may answer these error statuses (the error body)."""
    return {code: {"model": ErrorResponse} for code in codes}


#: ``responses=`` of ``POST /contribute``, which can answer every error status of the API
#: (403 and, on routes with parameters, 400 are added to every route by the app).
CONTRIBUTE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 429, 503)
