"""Pydantic models of the HTTP API: the OpenAPI document, the node and the CLI share them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AgentPackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(description="Pack version, 1..64 characters", examples=["1.0"])
    parameters: str = Field(description="Agent parameters, standard base64 (1 B .. 10 MiB)")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free JSON object, ≤100 keys and ≤64 KiB"
    )


class ContributeRequest(BaseModel):
    # strict: `"seed": true` or `"seed": "5"` is a 400 naming the field, never coerced.
    model_config = ConfigDict(extra="forbid", strict=True)

    goal_id: str = Field(examples=["DEMO_TRADING_AGENT"])
    agent_pack: AgentPackIn
    contributor_id: str = Field(description="1..128 characters")
    seed: int = Field(default=0, description="0..2^63-1, recorded with the contribution")


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


class TauStatus(BaseModel):
    enabled: bool = False
    endpoint: str | None = None
    breaker_state: str = "CLOSED"
    last_commit: dict[str, Any] | None = None
    pending: int = 0
    last_error: str | None = None


class GoalStatus(BaseModel):
    goal_id: str
    name: str
    log_size: int
    log_root: str
    leaderboard_size: int
    leaderboard_root: str
    active_policy: dict[str, Any] | None = Field(
        default=None, description="The leaderboard leader: log_index, score, contributor_id"
    )
    contributions: Counters
    tau: TauStatus


class PeerCounts(BaseModel):
    connected: int = 0
    known: int = 0
    banned: int = 0


class NodeStatus(BaseModel):
    node_id: str
    version: str
    role: str
    network_id: str
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


class LogEntryModel(BaseModel):
    goal_id: str
    log_index: int
    contribution_hash: str
    pack_hash: str
    contributor_id: str
    seed: int
    version: str
    score: float
    metrics: dict[str, float]
    block_height: int


class LogResponse(BaseModel):
    goal_id: str
    size: int
    root: str
    entries: list[LogEntryModel]
    next: int | None = Field(description="`from` for the next page, or null at the end")


class ProofResponse(BaseModel):
    goal_id: str
    log_index: int
    size: int = Field(description="Leaves in the log the proof is for")
    root: str
    leaf: str = Field(description="sha256(0x00 ‖ contribution_hash)")
    path: list[str] = Field(description="Siblings from the leaf up to its peak")
    peaks: list[str] = Field(description="The other peaks, left to right")
    entry: LogEntryModel


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
