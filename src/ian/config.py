"""Typed node settings: defaults < ``config.toml`` < ``IAN_*`` environment < CLI flags.

:func:`load_settings` is the one way to build the node's :class:`Settings`: it reads each layer,
remembers where every value came from (:meth:`Settings.sources`) and turns any invalid value into
a one-line :class:`~ian.errors.ConfigError` naming the setting as the operator wrote it
(``IAN_API_PORT``, ``<path>: api_port`` or ``--api-port``). ``Settings()`` alone gives the defaults
and reads nothing from the environment.

Names are the same everywhere: the TOML key ``api_port`` is the env var ``IAN_API_PORT`` and the
override key ``api_port``. ``config.toml`` is found at the explicit path, else ``IAN_CONFIG``, else
``<data_dir>/config.toml`` when that exists (``data_dir`` itself from flags, env or default).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ian.chain.contributions import FRAME_OVERHEAD, wire_size_bound
from ian.chain.goals import BUILTIN_GOALS, GoalSpec
from ian.errors import ConfigError
from ian.peer_address import PEER_FORM as _PEER_FORM
from ian.peer_address import PeerAddress, PeerAddressError, parse_peer_address
from ian.peer_address import check_host as _check_host

__all__ = [
    "ENV_PREFIX",
    "PeerAddress",
    "PeerAddressError",
    "Settings",
    "load_settings",
    "parse_peer_address",
    "render_config_toml",
    "settings_as_dict",
]

ENV_PREFIX = "IAN_"
CONFIG_ENV = "IAN_CONFIG"
CONFIG_FILE_NAME = "config.toml"
MIB = 1024 * 1024

_NODE_ID_RE = re.compile(r"^[0-9a-fA-F]{40}$")


# --------------------------------------------------------------------------- field helpers


def _not_bool(value: Any) -> Any:
    """Refuse booleans where a number is expected (pydantic would read ``true`` as 1)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "a boolean is not a number")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Port = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=65535)]

_PORT_ALLOWED = "an integer 0..65535 (0 = pick a free port)"


def _f(default: Any, doc: str, allowed: str, **constraints: Any) -> Any:
    """A field with its one-line doc (shown by ``ian config init``) and allowed values."""
    return Field(default, description=doc, json_schema_extra={"allowed": allowed}, **constraints)


def _split_list(value: Any) -> Any:
    """``"a,b"`` → ``["a", "b"]`` (blank items dropped); a JSON list string is decoded."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                pass
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


# --------------------------------------------------------------------------- settings


class Settings(BaseSettings):
    """The node's settings; build with :func:`load_settings`. Immutable once built."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        validate_default=True,
    )

    data_dir: Path = _f(
        Path(".ian-data"),
        "Data directory: identity, certs, store, state files.",
        "a directory path",
    )
    network_id: str = _f(
        "ian-local",
        "Network name; peers with a different network_id are refused.",
        "1-64 characters of letters, digits, '.', '_' or '-'",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    )
    seed_nodes: list[PeerAddress] = _f(
        [],
        "Peers to dial at start, as tcp://host:port (env: comma-separated).",
        "a list of tcp://host:port addresses",
    )
    sequencer: str = _f(
        "",
        "Block sequencer: '' = self without seeds, else learned; 'self'; or a 40-hex node id.",
        "'', 'self' or a 40-hex node id",
    )
    genesis: Path | None = _f(
        None,
        "Genesis document to pin on first start (`ian network init` writes one).",
        "a file path",
    )
    chain_id: str | None = _f(
        None,
        "Chain id this node must be on (64 hex; `ian network show` prints it).",
        "64 hex digits",
        pattern=r"^[0-9a-f]{64}$",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _f(
        "INFO", "Log level.", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)"
    )
    log_format: Literal["text", "json"] = _f("text", "Log line format.", "'text' or 'json'")
    log_file: Path | None = _f(
        None, "Also write logs to this file, rotated by size (unset = stderr only).", "a file path"
    )
    log_max_bytes: Int = _f(50 * MIB, "Rotate the log file at this size.", "an integer >= 1", ge=1)
    log_backups: Int = _f(5, "Rotated log files to keep.", "an integer >= 0", ge=0)
    api_host: str = _f("0.0.0.0", "HTTP API bind address.", "a host name or IP address")
    api_port: Port = _f(8000, "HTTP API port.", _PORT_ALLOWED)
    p2p_host: str = _f("0.0.0.0", "P2P (TLS) bind address.", "a host name or IP address")
    p2p_port: Port = _f(9000, "P2P (TLS) port.", _PORT_ALLOWED)
    ws_port: Port = _f(9001, "WebSocket event stream port.", _PORT_ALLOWED)
    p2p_advertise: str = _f(
        "",
        "Address peers should dial, tcp://host:port ('' = derive from the bind address).",
        f"'' or {_PEER_FORM}",
    )
    api_token: SecretStr | None = _f(
        None,
        "Bearer token for admin routes and (when set) POST /contribute; prefer the env var.",
        "a non-empty string",
    )
    admin_allow_remote: bool = _f(
        False, "Let admin routes answer on non-loopback addresses.", "true or false"
    )
    trusted_proxies: list[str] = _f(
        [],
        "CIDRs of reverse proxies whose X-Forwarded-For is trusted (env: comma-separated).",
        "a list of IP networks (CIDR)",
    )
    api_workers: Int = _f(
        0,
        # Measured with bench/http_bench.py --api-workers: see the README's performance table.
        "Processes that serve the HTTP API's POST /contribute in front of the node, which "
        "then serves every other request they hand it (0: the node's process serves all of it).",
        "an integer 0..64",
        ge=0,
        le=64,
    )
    contributor_rate: Float = _f(
        0.1, "Contributions per second allowed per contributor.", "a number > 0", gt=0
    )
    contributor_burst: Int = _f(10, "Burst size per contributor.", "an integer >= 1", ge=1)
    client_rate: Float = _f(50.0, "Requests per second per client address.", "a number > 0", gt=0)
    client_burst: Int = _f(100, "Burst size per client address.", "an integer >= 1", ge=1)
    max_request_bytes: Int = _f(
        16 * MIB, "Largest HTTP request body accepted.", "an integer >= 1024", ge=1024
    )
    max_parameters_bytes: Int = _f(
        10 * MIB,
        "Largest decoded agent pack parameters accepted.",
        "an integer >= 1 (at most max_request_bytes)",
        ge=1,
    )
    block_max_entries: Int = _f(
        1000,
        # No interval setting: the sequencer seals a block as soon as the previous one is
        # durable (group commit), so a contribution never waits for a timer (under load, a
        # short bounded wait for the next block to fill: block_linger_ms).
        "Most entries per block.",
        "an integer 1..10000",
        ge=1,
        le=10_000,
    )
    block_linger_ms: Float = _f(
        2.0,
        # Measured on one 2-core machine, 32 closed-loop connections: without it blocks of 1
        # and of 31 in turn; 3 authorities +35-45 %/s, one node +14 % (median of 6 pairs).
        "Under load: how long the sequencer (or leader) may wait for as many contributions "
        "as its last block held before it cuts the next block (0: never waits). The wait ends "
        "as soon as they are there; after a block of one (light load) there is none.",
        "a number 0..1000",
        ge=0,
        le=1000,
    )
    consensus_in_flight: Int = _f(
        1,
        # Measured on one 2-core machine running all three authorities (CPU-bound): 4 in
        # flight was no faster than 1 (smaller blocks, the same CPU per answer within noise).
        "Chain blocks a leader of several authorities may have proposed and not yet seen "
        "committed; raise it where network round trips, not CPU, bound the commits.",
        "an integer 1..16",
        ge=1,
        le=16,
    )
    evaluation_workers: Int | None = _f(
        None,
        "Worker processes that evaluate costly contributions (0 or 1: in the node's process; "
        "unset: one per usable core).",
        "an integer 0..256, or empty for one per usable core",
        ge=0,
        le=256,
    )
    checkpoint_interval_s: Float = _f(
        30.0, "Seconds between node_state.json checkpoints.", "a number > 0", gt=0
    )
    max_peers: Int = _f(50, "Most connected peers.", "an integer >= 1", ge=1)
    min_peers: Int = _f(
        3,
        "Peers needed for readiness once seed_nodes is set.",
        "an integer >= 0 (at most max_peers)",
        ge=0,
    )
    max_peers_per_ip: Int = _f(8, "Most connections from one IP address.", "an integer >= 1", ge=1)
    peer_rate: Float = _f(
        200.0, "Messages per second each peer may send (token bucket).", "a number > 0", gt=0
    )
    peer_burst: Float = _f(400.0, "Burst of messages each peer may send.", "a number >= 1", ge=1)
    max_frame_bytes: Int = _f(
        16 * MIB,
        "Largest P2P frame (a block of the largest contribution must fit).",
        "an integer 1024..268435456",
        ge=1024,
        le=256 * MIB,
    )
    ban_seconds: Float = _f(
        86400.0, "Default ban duration for misbehaving peers.", "a number >= 0", ge=0
    )
    forward_from: list[str] = _f(
        [],
        "Peers (node ids, IPs or CIDRs) whose forwarded contributions need no token when "
        "api_token is set; others must forward the token (env: comma-separated).",
        "a list of 40-hex node ids, IP addresses or CIDRs",
    )
    ban_ip_after: Int = _f(
        5,
        "Banned identities from one IP before the IP itself is banned for ban_seconds (0: never).",
        "an integer >= 0",
        ge=0,
    )
    max_known_peers: Int = _f(
        10_000,
        "Most peers the peer book learns; the oldest never-connected ones make room.",
        "an integer >= 100",
        ge=100,
    )
    sync_lag_ready_threshold: Int = _f(
        10, "Readiness fails when this many blocks behind the network.", "an integer >= 0", ge=0
    )
    tau_endpoint: str | None = _f(
        None, "Tau node for root commits, tcp://host:port (unset = bridge off).", _PEER_FORM
    )
    tau_commit_interval_s: Float = _f(
        60.0, "Commit to Tau at least this often (seconds).", "a number > 0", gt=0
    )
    tau_commit_entries: Int = _f(
        1000, "...or after this many new entries.", "an integer >= 1", ge=1
    )
    tau_timeout_s: Float = _f(5.0, "Timeout of one Tau call (seconds).", "a number > 0", gt=0)
    breaker_failures: Int = _f(
        5, "Consecutive Tau failures that open the circuit breaker.", "an integer >= 1", ge=1
    )
    breaker_reset_s: Float = _f(
        30.0, "Seconds the breaker stays open before a probe.", "a number > 0", gt=0
    )
    cert_valid_days: Int = _f(
        365, "Validity of generated P2P certificates (days).", "an integer >= 1", ge=1
    )
    cert_renew_days: Int = _f(
        21,
        "Renew certificates this many days before expiry.",
        "an integer >= 0 (less than cert_valid_days)",
        ge=0,
    )
    backup_retention: Int = _f(7, "Backups kept by `ian prune`.", "an integer >= 1", ge=1)
    peer_prune_days: Float = _f(
        30.0, "`ian peers prune` default: drop peers unseen this long (days).", "a number > 0", gt=0
    )
    goals: list[GoalSpec] = _f(
        [], "Extra goals ([[goals]] tables); ids must be unique.", "a list of goal tables"
    )

    _sources: dict[str, str] | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only explicit values: :func:`load_settings` layers TOML, env and flags itself."""
        return (init_settings,)

    # -- field validators

    @field_validator("data_dir", mode="before")
    @classmethod
    def _v_data_dir(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be a directory path, got ''")
        return value

    @field_validator("seed_nodes", mode="before")
    @classmethod
    def _v_seed_nodes(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of {_PEER_FORM}, got {value!r}")
        out = [
            item if isinstance(item, PeerAddress) else parse_peer_address(item) for item in value
        ]
        if len(set(out)) != len(out):
            raise ValueError("lists the same peer address twice")
        return out

    @field_validator("forward_from", mode="before")
    @classmethod
    def _v_forward_from(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of node ids, IPs or CIDRs, got {value!r}")
        out = []
        for item in value:
            text = str(item).strip().lower()
            if _NODE_ID_RE.match(text):
                out.append(text)
                continue
            try:
                out.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is neither a 40-hex node id nor an IP address or CIDR"
                ) from None
        return out

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _v_trusted_proxies(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of IP networks (CIDR), got {value!r}")
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP network; expected CIDRs like 10.0.0.0/8 or ::1/128"
                ) from None
        return out

    @field_validator("sequencer", mode="before")
    @classmethod
    def _v_sequencer(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.lower() in ("", "self"):
            return text.lower()
        if _NODE_ID_RE.match(text):
            return text.lower()
        raise ValueError(f"must be '', 'self' or a 40-hex node id, got {value!r}")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _v_case(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("chain_id", mode="before")
    @classmethod
    def _v_chain_id(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    @field_validator(
        "log_file", "tau_endpoint", "api_token", "genesis", "evaluation_workers", mode="before"
    )
    @classmethod
    def _v_blank(cls, value: Any) -> Any:
        return _blank_to_none(value)

    @field_validator("api_host", "p2p_host", mode="before")
    @classmethod
    def _v_bind_host(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            return _check_host(text)
        except ValueError:
            raise ValueError(f"must be a host name or IP address, got {value!r}") from None

    @field_validator("p2p_advertise", mode="before")
    @classmethod
    def _v_advertise(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            return str(parse_peer_address(value))
        return value.strip() if isinstance(value, str) else value

    @field_validator("tau_endpoint", mode="after")
    @classmethod
    def _v_tau(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_peer_address(value))

    @field_validator("goals", mode="after")
    @classmethod
    def _v_goals(cls, value: list[GoalSpec]) -> list[GoalSpec]:
        builtin = {g.id for g in BUILTIN_GOALS}
        seen: set[str] = set()
        for goal in value:
            if goal.id in builtin:
                raise ValueError(f"goal id {goal.id!r} collides with a built-in goal")
            if goal.id in seen:
                raise ValueError(f"goal id {goal.id!r} is defined twice")
            seen.add(goal.id)
        return value

    @model_validator(mode="after")
    def _v_cross(self) -> Settings:
        def fail(field: str, detail: str) -> PydanticCustomError:
            return PydanticCustomError(
                "cross_field", "{detail}", {"field": field, "detail": detail}
            )

        if self.max_parameters_bytes > self.max_request_bytes:
            raise fail(
                "max_parameters_bytes",
                f"must be at most max_request_bytes ({self.max_request_bytes}), "
                f"got {self.max_parameters_bytes}",
            )
        largest_entry = wire_size_bound(self.max_parameters_bytes) + FRAME_OVERHEAD
        if largest_entry > self.max_frame_bytes:
            raise fail(
                "max_parameters_bytes",
                f"a contribution of {self.max_parameters_bytes} bytes needs P2P frames of "
                f"{largest_entry} bytes to replicate, but max_frame_bytes is "
                f"{self.max_frame_bytes}: lower this or raise max_frame_bytes",
            )
        if self.min_peers > self.max_peers:
            raise fail(
                "min_peers",
                f"must be at most max_peers ({self.max_peers}), got {self.min_peers}",
            )
        if self.cert_renew_days >= self.cert_valid_days:
            raise fail(
                "cert_renew_days",
                f"must be less than cert_valid_days ({self.cert_valid_days}), "
                f"got {self.cert_renew_days}",
            )
        return self

    # -- behaviour

    def __eq__(self, other: object) -> bool:
        """Equal when every value is equal, wherever the values came from."""
        if not isinstance(other, Settings):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def sources(self) -> dict[str, str]:
        """Where each field's value came from: ``default``, ``config.toml (<path>)``,
        ``env IAN_X`` or ``flag``."""
        recorded = self._sources or {}
        return {name: recorded.get(name, "default") for name in type(self).model_fields}

    def all_goals(self) -> list[GoalSpec]:
        """Built-in goals followed by the configured ones."""
        return [*BUILTIN_GOALS, *self.goals]


FIELD_NAMES: tuple[str, ...] = tuple(Settings.model_fields)
_SECRET_FIELDS = {"api_token"}


# --------------------------------------------------------------------------- layer sources


class _EnvSource(PydanticBaseSettingsSource):
    """``IAN_<FIELD>`` variables from an explicit mapping (exact upper-case names).

    Lists accept ``a,b`` or a JSON list; ``IAN_GOALS`` must be JSON. Unknown ``IAN_*`` names
    (``IAN_NODE_URL``, ``IAN_CONFIG``) are ignored.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        name = ENV_PREFIX + field_name.upper()
        return self.env.get(name), name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            raw, name, _ = self.get_field_value(field, field_name)
            if raw is None:
                continue
            if field_name == "goals":
                try:
                    raw = json.loads(raw) if raw.strip() else []
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"{name}: must be a JSON list of goal objects ({exc.msg} at column "
                        f"{exc.colno})"
                    ) from None
            out[field_name] = raw
        return out


class _TomlSource(PydanticBaseSettingsSource):
    """Top-level keys of one TOML file; unknown keys are an error naming the key."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: config file is not UTF-8 text") from None
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid TOML: {exc}",
                fix="fix the line or regenerate with `ian config init`",
            ) from None
        for key in self.data:
            if key not in settings_cls.model_fields:
                close = difflib.get_close_matches(key, list(settings_cls.model_fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{path}: unknown setting {key!r}{hint}",
                    fix="see `ian config init --output -` for every setting",
                )

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


# --------------------------------------------------------------------------- loading


def _config_path(config_file: Path | None, env: Mapping[str, str], data_dir: Any) -> Path | None:
    """The TOML file to read, or ``None`` when there is none."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    from_env = env.get(CONFIG_ENV, "").strip()
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}: config file {path} does not exist")
        return path
    try:
        default = Path(str(data_dir)) / CONFIG_FILE_NAME
    except (TypeError, ValueError):
        return None
    return default if default.is_file() else None


def _where(field_path: str, origin: str, toml_path: Path | None) -> str:
    top = field_path.split(".", 1)[0].split("[", 1)[0]
    if origin == "flag":
        return "--" + top.replace("_", "-") + field_path[len(top) :]
    if origin.startswith("env "):
        return ENV_PREFIX + top.upper() + field_path[len(top) :]
    if origin.startswith("config.toml"):
        return f"{toml_path}: {field_path}"
    return field_path


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _shown(value: Any, secret: bool) -> str:
    if secret:
        return "'***'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_error(
    exc: ValidationError, origins: Mapping[str, str], toml_path: Path | None
) -> ConfigError:
    """One line for the first error (the count of any others is appended)."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "cross_field":
        loc = (ctx["field"],)
    field = str(loc[0]) if loc else ""
    where = _where(_loc_path(loc), origins.get(field, "default"), toml_path)
    secret = field in _SECRET_FIELDS
    info = Settings.model_fields.get(field)
    if err["type"] == "cross_field":
        detail = str(ctx["detail"])
    elif err["type"] == "value_error":
        original = ctx.get("error")
        detail = str(original) if original is not None else err["msg"]
        if secret:
            detail = "invalid value"
    elif err["type"] == "extra_forbidden":
        detail = "unknown key"
    elif len(loc) == 1 and info is not None:
        allowed = (info.json_schema_extra or {}).get("allowed", err["msg"])  # type: ignore[union-attr]
        detail = f"must be {allowed}, got {_shown(err.get('input'), secret)}"
    else:
        detail = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_shown(err.get('input'), secret)}"
    if field == "seed_nodes" and where.startswith(ENV_PREFIX):
        detail += "; IAN_SEED_NODES takes tcp://host:port,tcp://host2:port"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{where}: {detail}{more}")


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults < config.toml < ``IAN_*`` env < ``overrides``.

    ``env`` defaults to ``os.environ``; ``overrides`` are CLI flags by field name (``None`` values
    mean "flag not given" and are skipped). Raises :class:`ConfigError` (one line) for a missing
    explicit config file, bad TOML, an unknown TOML key or override, or any invalid value.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in flags:
        if key not in Settings.model_fields:
            raise ConfigError(f"unknown setting {key!r} in overrides")

    env_values = _EnvSource(Settings, env)()
    data_dir = flags.get(
        "data_dir", env_values.get("data_dir", Settings.model_fields["data_dir"].default)
    )
    toml_path = _config_path(config_file, env, data_dir)
    toml_values = _TomlSource(Settings, toml_path)() if toml_path is not None else {}

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for values, label in (
        (toml_values, f"config.toml ({toml_path})"),
        (env_values, None),
        (flags, "flag"),
    ):
        for key, value in values.items():
            merged[key] = value
            origins[key] = label or f"env {ENV_PREFIX}{key.upper()}"
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise _format_error(exc, origins, toml_path) from None
    settings._sources = {name: origins.get(name, "default") for name in FIELD_NAMES}
    return settings


# --------------------------------------------------------------------------- output


def _plain(settings: Settings, name: str, *, redact: bool) -> Any:
    """A JSON/TOML-safe form of one field value (``None`` stays ``None``)."""
    value = getattr(settings, name)
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return "***" if redact else value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if name == "seed_nodes":
        return [str(a) for a in value]
    if name == "goals":
        return [g.model_dump(mode="json", exclude_none=True) for g in value]
    if isinstance(value, list):
        return list(value)
    return value


def settings_as_dict(settings: Settings, *, redact: bool = True) -> dict[str, Any]:
    """Every field as JSON-safe data: paths as str, peers as ``tcp://...``, secrets ``***``."""
    return {name: _plain(settings, name, redact=redact) for name in FIELD_NAMES}


_OPTIONAL_EXAMPLES = {
    "log_file": "/data/logs/ian.log",
    "tau_endpoint": "tcp://tau-node:12345",
    "api_token": "change-me",
    "genesis": "/config/genesis.json",
    "chain_id": "0" * 64,
    "evaluation_workers": 2,
}

_GOAL_EXAMPLE = """\
# Extra goals; every node of a network needs the same ones. [env IAN_GOALS, a JSON list]
# [[goals]]
# id = "MY_GOAL"
# name = "My goal"
# description = "What contributors compete on."
# evaluator = "demo_trading"          # or "trivial"
# leaderboard_capacity = 100
# [goals.thresholds]
# min_reward = 0.0
# max_risk = 0.1
# [goals.weights]
# reward = 1.0
# risk = -0.5
# complexity = -0.01
"""


def _commented(text: str) -> str:
    return "\n".join(f"# {line}" if line else "#" for line in text.strip().splitlines())


def render_config_toml(settings: Settings | None = None) -> str:
    """A commented ``config.toml`` listing every setting with a one-line doc and its env var.

    Values equal to the default are written commented out (so ``ian config show`` still reports
    them as defaults and new defaults apply after an upgrade); values that differ are written as
    live keys. Unset optional settings show a commented example. The API token is never written
    (set ``IAN_API_TOKEN`` instead). Loading the output back gives the same settings, token aside.
    """
    settings = settings if settings is not None else Settings()
    defaults = Settings()
    lines = [
        "# IAN node configuration.",
        "# Precedence: defaults < this file < IAN_* environment variables < command-line flags.",
        "# Every key is also an environment variable: api_port -> IAN_API_PORT.",
        "# Commented-out keys show the defaults; uncomment and edit to change one.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        if name == "goals":
            continue
        lines.append(f"# {info.description} [env {ENV_PREFIX}{name.upper()}]")
        value = _plain(settings, name, redact=False)
        if name in _SECRET_FIELDS:
            lines.append(f'# {name} = "..."   # secret: set {ENV_PREFIX}{name.upper()} instead')
        elif value is None:
            lines.append(_commented(tomli_w.dumps({name: _OPTIONAL_EXAMPLES[name]})))
        elif value == _plain(defaults, name, redact=False):
            lines.append(_commented(tomli_w.dumps({name: value})))
        else:
            lines.append(tomli_w.dumps({name: value}).strip())
        lines.append("")
    lines.append(_GOAL_EXAMPLE)
    goals = _plain(settings, "goals", redact=False)
    if goals:
        lines.append(tomli_w.dumps({"goals": goals}))
    return "\n".join(lines).rstrip("\n") + "\n"
