"""The node's API port without pydantic: what read commands (``ian status``) need to start fast.

:func:`ian_ops.target.read_node_url` answers "the configured API port on loopback, else the
default" by loading the whole configuration (:func:`ian.config.load_settings`, pydantic-settings:
~300 ms of imports and model building). :func:`read_api_url` gives the same answer from the same
sources in the same order (the ``--data-dir`` flag; ``IAN_*`` variables; the config file at
``IAN_CONFIG``, else ``<data dir>/config.toml``; defaults), or ``None`` whenever it meets
anything it does not fully understand, and the caller then loads the configuration as before.

"The same answer" includes a configuration the full loader refuses: a read command then falls
back to the default URL, so a bad ``IAN_LOG_LEVEL`` changes which port ``ian status`` asks. So
every value that reaches the settings is checked here, not only ``api_port``: each field has a
check that accepts only inputs the full loader certainly accepts (plain digits for a number,
the exact spellings ``log_level`` takes, peer addresses by the loader's own parser in
:mod:`ian.peer_address`, ...); any other input, the fields of cross-field rules, goals and
proxy/forwarding lists unless empty, an unknown key, a config file that cannot be read or
parsed: ``None``. ``tests/ian_ops/test_light_config.py`` compares both ways on
a table of environments and config files and checks the field list and bounds against
:class:`ian.config.Settings`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

ENV_PREFIX = "IAN_"
CONFIG_ENV = "IAN_CONFIG"
CONFIG_FILE_NAME = "config.toml"
DEFAULT_DATA_DIR = ".ian-data"
DEFAULT_API_PORT = 8000

#: ian.config._NODE_ID_RE
NODE_ID_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,15})?")
_NETWORK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CHAIN_ID = re.compile(r"[0-9a-f]{64}")
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_BOOLS = frozenset({"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"})

#: Numeric fields without a cross-field rule: name -> (type, ge, gt, le), as Settings declares
#: them (the test reads Settings' constraints and compares).
NUMBERS: dict[str, tuple[type, float | None, float | None, float | None]] = {
    "log_max_bytes": (int, 1, None, None),
    "log_backups": (int, 0, None, None),
    "api_port": (int, 0, None, 65535),
    "p2p_port": (int, 0, None, 65535),
    "ws_port": (int, 0, None, 65535),
    "api_workers": (int, 0, None, 64),
    "contributor_rate": (float, None, 0, None),
    "contributor_burst": (int, 1, None, None),
    "client_rate": (float, None, 0, None),
    "client_burst": (int, 1, None, None),
    "block_max_entries": (int, 1, None, 10_000),
    "block_linger_ms": (float, 0, None, 1000),
    "consensus_in_flight": (int, 1, None, 16),
    "checkpoint_interval_s": (float, None, 0, None),
    "max_peers_per_ip": (int, 1, None, None),
    "peer_rate": (float, None, 0, None),
    "peer_burst": (float, 1, None, None),
    "ban_seconds": (float, 0, None, None),
    "ban_ip_after": (int, 0, None, None),
    "max_known_peers": (int, 100, None, None),
    "sync_lag_ready_threshold": (int, 0, None, None),
    "tau_commit_interval_s": (float, None, 0, None),
    "tau_commit_entries": (int, 1, None, None),
    "tau_timeout_s": (float, None, 0, None),
    "breaker_failures": (int, 1, None, None),
    "breaker_reset_s": (float, None, 0, None),
    "backup_retention": (int, 1, None, None),
    "peer_prune_days": (float, None, 0, None),
}

#: Fields this module leaves to the full loader whenever they are given (they are in a
#: cross-field rule, or may be empty): their presence alone means ``None``.
FULL_LOADER_ONLY = frozenset(
    {
        "evaluation_workers",
        "max_request_bytes",
        "max_parameters_bytes",
        "max_frame_bytes",
        "min_peers",
        "max_peers",
        "cert_valid_days",
        "cert_renew_days",
    }
)


def _number(name: str, value: Any) -> bool:
    kind, ge, gt, le = NUMBERS[name]
    if isinstance(value, str):
        if not (_DIGITS if kind is int else _DECIMAL).fullmatch(value):
            return False
        number: float = int(value) if kind is int else float(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return False
    else:
        if isinstance(value, float) and (kind is int or not math.isfinite(value)):
            return False
        number = value
    return (
        (ge is None or number >= ge)
        and (gt is None or number > gt)
        and (le is None or number <= le)
    )


def _path(value: Any, *, optional: bool) -> bool:
    if not isinstance(value, str) or "\x00" in value:
        return False
    return optional or bool(value.strip())


def _host(value: Any) -> bool:
    """A bind address as Settings checks it (brackets around IPv6 allowed)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    from ian.peer_address import check_host

    try:
        check_host(text)
    except ValueError:
        return False
    return True


def _peer(value: Any, *, blank: bool) -> bool:
    """One ``tcp://host:port`` (``blank``: or nothing) as Settings parses it."""
    if not isinstance(value, str):
        return False
    if not value.strip():
        return blank
    from ian.peer_address import parse_peer_address

    try:
        parse_peer_address(value)
    except ValueError:  # PeerAddressError is one
        return False
    return True


def _peers(value: Any) -> bool:
    """``seed_nodes``: ``a,b``, a JSON list or a TOML list of addresses (split as Settings
    splits them), each one valid and none twice."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if not text.startswith("["):
                raise ValueError(text)
            value = json.loads(text)
        except ValueError:  # json.JSONDecodeError is one
            value = [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return False
    from ian.peer_address import parse_peer_address

    try:
        parsed = [parse_peer_address(item) for item in value]
    except ValueError:
        return False
    return len(set(parsed)) == len(parsed)


def _sequencer(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.lower() in ("", "self") or bool(NODE_ID_RE.match(text))


def _chain_id(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value.strip().lower()
    return not text or bool(_CHAIN_ID.fullmatch(text))


def _empty_list(value: Any) -> bool:
    """A list setting that is empty: ``""`` / ``"[]"`` (split or decoded by its validator, from
    the environment or TOML), or ``[]``."""
    if isinstance(value, str):
        return value.strip() in ("", "[]")
    return isinstance(value, list) and not value


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


CHECKS: dict[str, Callable[[Any], bool]] = {
    **{name: partial(_number, name) for name in NUMBERS},
    "data_dir": lambda value: _path(value, optional=False),
    "genesis": lambda value: _path(value, optional=True),
    "log_file": lambda value: _path(value, optional=True),
    "network_id": lambda value: isinstance(value, str) and bool(_NETWORK_ID.fullmatch(value)),
    "sequencer": _sequencer,
    "chain_id": _chain_id,
    "log_level": lambda value: isinstance(value, str) and value.strip().upper() in _LOG_LEVELS,
    "log_format": lambda value: (
        isinstance(value, str) and value.strip().lower() in ("text", "json")
    ),
    "api_host": _host,
    "p2p_host": _host,
    "api_token": _is_str,
    "admin_allow_remote": lambda value: (
        isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOLS)
    ),
    "seed_nodes": _peers,
    "trusted_proxies": _empty_list,
    "forward_from": _empty_list,
    # IAN_GOALS is decoded as JSON before validation (see read_api_url); in TOML, a list
    "goals": lambda value: isinstance(value, list) and not value,
    "p2p_advertise": partial(_peer, blank=True),
    "tau_endpoint": partial(_peer, blank=True),
}


def read_api_url(data_dir: Path | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """``http://127.0.0.1:<api_port>`` as :func:`ian_ops.target.read_node_url` answers without
    ``--node-url`` (the default URL when the port is 0 or the configuration is invalid), or
    ``None`` when the configuration holds anything this module does not check."""
    env = os.environ if env is None else env
    # Settings' env source: the exact name IAN_<FIELD> of every field
    values: dict[str, Any] = {}
    for name in (*CHECKS, *FULL_LOADER_ONLY):
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name == "goals":  # a JSON list: only an empty one is understood here
            if raw.strip() not in ("", "[]"):
                return None
            values[name] = []
        else:
            values[name] = raw
    if data_dir is not None:
        where: Any = data_dir
    else:
        where = values.get("data_dir", DEFAULT_DATA_DIR)
    file_values = _config_file(env, where)
    if file_values is None:
        return None
    merged = {**file_values, **values}
    if data_dir is not None:
        merged.pop("data_dir", None)  # a flag: a path, always valid
    for name, value in merged.items():
        check = CHECKS.get(name)
        if check is None or not check(value):
            return None
    port = merged.get("api_port", DEFAULT_API_PORT)
    return f"http://127.0.0.1:{int(port) or DEFAULT_API_PORT}"


def _config_file(env: Mapping[str, str], data_dir: Any) -> dict[str, Any] | None:
    """The top-level keys of the config file the full loader reads (``{}`` without one), or
    ``None`` when it is missing where named, unreadable or not valid TOML (the full loader
    says what is wrong)."""
    try:
        named = env.get(CONFIG_ENV, "").strip()
        if named:
            path = Path(named)
            if not path.is_file():
                return None
        else:
            path = Path(str(data_dir)) / CONFIG_FILE_NAME
            if not path.is_file():
                return {}
        text = path.read_bytes().decode("utf-8")
        import tomllib

        return tomllib.loads(text)
    except (OSError, ValueError):  # tomllib.TOMLDecodeError and UnicodeDecodeError included
        return None
