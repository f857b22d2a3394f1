"""The Tau Net bridge (ARCHITECTURE §9): signed per-goal root commits over the Tau line protocol.

Public surface::

    TauBridge        the node service: run(), notify(), status(), reset_breaker(), breaker_state
    CircuitBreaker   pure breaker logic (injected clock); BreakerState its states
    IanLogCommit     a signed IAN_LOG_COMMIT; build_commit() makes one
    TauCommitLog     the durable commit chain in the store file (table tau_commits)
    send_tx          one sendtx call; TauError for every failure of a call
    MockTauServer    a Tau-compatible test server (also `ian tau serve-mock`)

Errors::

    IanError
    └── TauError     Tau unreachable, timed out, refused the transaction or replied badly
"""

from __future__ import annotations

from ian.tau.breaker import BreakerState, CircuitBreaker
from ian.tau.bridge import TauBridge, TickOutcome
from ian.tau.commits import (
    GENESIS_COMMIT_HASH,
    IanLogCommit,
    StoredCommit,
    TauCommitLog,
    build_commit,
)
from ian.tau.mock_server import MockTauServer
from ian.tau.protocol import TauError, send_tx

__all__ = [
    "GENESIS_COMMIT_HASH",
    "BreakerState",
    "CircuitBreaker",
    "IanLogCommit",
    "MockTauServer",
    "StoredCommit",
    "TauBridge",
    "TauCommitLog",
    "TauError",
    "TickOutcome",
    "build_commit",
    "send_tx",
]
