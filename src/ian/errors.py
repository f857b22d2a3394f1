"""The one error hierarchy of the IAN node.

Every failure the node or the toolkit reports on purpose is an :class:`IanError`. The HTTP API
maps ``http_status``/``code`` to a JSON error; the CLI maps the class to an exit code and prints
``message`` (plus ``fix`` when there is one) on one line.

::

    IanError
    ├── ConfigError             a setting or config.toml value is invalid
    │   └── GenesisError        a genesis document is invalid or not this chain's
    ├── DataDirError            the data directory cannot be used as it is
    │   ├── CorruptFileError    a state file is torn or not what it should be
    │   ├── IdentityError       identity/certificate missing, mismatched or unsafe
    │   ├── NodeLockedError     another process holds node.lock
    │   └── SchemaError         the store was written by an unknown (newer) schema
    ├── StoreError              the embedded store failed (I/O, disk full, corruption)
    ├── EvaluationError         the evaluation workers failed (a worker died twice on a batch)
    ├── RequestError            a client request cannot be served (API status codes)
    │   ├── InputError          400: malformed or invalid field
    │   ├── AuthError           401/403: token missing or wrong, or not from loopback
    │   ├── NotFoundError       404: unknown goal, log index, peer ...
    │   ├── DuplicateError      409: the same agent pack was already accepted
    │   ├── ConflictError       409: refused in this node's state (e.g. resync on the sequencer)
    │   ├── PayloadTooLargeError 413
    │   ├── RateLimitedError    429, carries retry_after seconds
    │   └── UnavailableError    503: sequencer unreachable, node shutting down
    ├── NodeUnreachableError    the toolkit cannot reach a node's API
    └── NodeRefusedError        the node answered a toolkit request with an error

The P2P layer adds its own branch under IanError (:mod:`ian.p2p.errors`).
"""

from __future__ import annotations


class IanError(Exception):
    """Base of every deliberate IAN failure.

    ``message`` says what is wrong; ``fix`` (optional) says what the operator should do.
    """

    code = "error"

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class ConfigError(IanError):
    code = "config_invalid"


class GenesisError(ConfigError):
    code = "genesis"


class DataDirError(IanError):
    code = "data_dir"


class CorruptFileError(DataDirError):
    code = "corrupt_file"


class IdentityError(DataDirError):
    code = "identity"


class NodeLockedError(DataDirError):
    code = "node_locked"


class SchemaError(DataDirError):
    code = "schema"


class StoreError(IanError):
    code = "store"


class EvaluationError(IanError):
    """Evaluation could not be carried out (not: a contribution failed its evaluation, which is
    a rejection). Nothing was decided; the same batch may be tried again."""

    code = "evaluation"


class RequestError(IanError):
    """A request that cannot be served; ``field`` names the offending input when there is one."""

    http_status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.field = field
        if code is not None:
            self.code = code


class InputError(RequestError):
    http_status = 400
    code = "invalid_input"


class AuthError(RequestError):
    http_status = 401
    code = "unauthorized"

    def __init__(
        self,
        message: str,
        *,
        forbidden: bool = False,
        field: str | None = None,
        code: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, field=field, code=code, fix=fix)
        if forbidden:
            self.http_status = 403
            self.code = code or "forbidden"


class ConflictError(RequestError):
    """The request is understood but refused in the node's current state (retrying will not
    help, unlike 503)."""

    http_status = 409
    code = "conflict"


class NotFoundError(RequestError):
    http_status = 404
    code = "not_found"


class DuplicateError(RequestError):
    http_status = 409
    code = "duplicate"


class PayloadTooLargeError(RequestError):
    http_status = 413
    code = "payload_too_large"


class RateLimitedError(RequestError):
    http_status = 429
    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        field: str | None = None,
        code: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, field=field, code=code, fix=fix)
        self.retry_after = retry_after


class UnavailableError(RequestError):
    http_status = 503
    code = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        field: str | None = None,
        code: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, field=field, code=code, fix=fix)
        self.retry_after = retry_after


class NodeUnreachableError(IanError):
    code = "node_unreachable"


class NodeRefusedError(IanError):
    """A node's API answered the toolkit with an error status (its JSON error, kept)."""

    code = "node_refused"

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        remote_code: str | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.http_status = http_status
        self.remote_code = remote_code
        self.field = field
