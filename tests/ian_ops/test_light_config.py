"""ian_ops.light_config finds the API URL of read commands without pydantic: it must give the
full loader's answer (ian_ops.target.configured_url) whenever it gives one, on every source
(flag, env, IAN_CONFIG, the data dir's config.toml, defaults), and leave anything it does not
understand to the full loader."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ian import config
from ian.config import FIELD_NAMES, Settings, render_config_toml
from ian_ops import cli, light_config
from ian_ops.light_config import CHECKS, FULL_LOADER_ONLY, NUMBERS, read_api_url
from ian_ops.target import configured_url, read_node_url

SRC = Path(__file__).resolve().parents[2] / "src"
HEX40 = "0123456789abcdefABCDEF0123456789abcdef01"
HEX64 = "0123456789ABCDEF" * 4


def both(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flag: Path | None = None):
    """(light answer, full answer) with exactly ``env`` as the IAN_* environment."""
    for key in [k for k in os.environ if k.startswith("IAN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return read_api_url(flag), configured_url(flag)


def agree(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flag: Path | None = None) -> Any:
    light, full = both(monkeypatch, env, flag)
    assert light is None or light == full, (env, flag, light, full)
    return light, full


# --------------------------------------------------------------------------- the same lists


def test_every_field_is_checked_here_or_left_to_the_full_loader() -> None:
    assert not set(CHECKS) & FULL_LOADER_ONLY
    assert set(CHECKS) | FULL_LOADER_ONLY == set(FIELD_NAMES)


def _numeric(annotation: object) -> bool:
    """A number, possibly optional or annotated (``int | None``, ``Annotated[int, ...]``)."""
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(annotation))


def test_numbers_have_the_settings_types_and_bounds() -> None:
    for name, (kind, ge, gt, le) in NUMBERS.items():
        info = Settings.model_fields[name]
        assert info.annotation is kind, name
        bounds = {"ge": None, "gt": None, "le": None, "lt": None}
        for item in info.metadata:
            for key in bounds:
                if hasattr(item, key):
                    bounds[key] = getattr(item, key)
        assert bounds == {"ge": ge, "gt": gt, "le": le, "lt": None}, name
    # every other number is in a cross-field rule or may be empty, so left to the full loader
    plain = {n for n, f in Settings.model_fields.items() if _numeric(f.annotation)}
    assert plain - set(NUMBERS) == FULL_LOADER_ONLY


def test_names_patterns_and_defaults_are_the_configs() -> None:
    assert light_config.NODE_ID_RE.pattern == config._NODE_ID_RE.pattern
    assert light_config.ENV_PREFIX == config.ENV_PREFIX
    assert light_config.CONFIG_ENV == config.CONFIG_ENV
    assert light_config.CONFIG_FILE_NAME == config.CONFIG_FILE_NAME
    fields = Settings.model_fields
    assert Path(light_config.DEFAULT_DATA_DIR) == fields["data_dir"].default
    assert fields["api_port"].default == light_config.DEFAULT_API_PORT
    assert f"http://127.0.0.1:{light_config.DEFAULT_API_PORT}" == cli.DEFAULT_NODE_URL
    for name, mine in (
        ("network_id", light_config._NETWORK_ID),
        ("chain_id", light_config._CHAIN_ID),
    ):
        (general,) = fields[name].metadata
        assert general.pattern == f"^{mine.pattern}$", name
    assert set(typing.get_args(fields["log_level"].annotation)) == light_config._LOG_LEVELS
    assert set(typing.get_args(fields["log_format"].annotation)) == {"text", "json"}


# --------------------------------------------------------------------------- a table of cases


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def commented(api_port: int | None = None, **extra: Any) -> str:
    """What `ian config init` writes, with ``api_port`` (and ``extra`` keys) set."""
    text = render_config_toml(Settings())
    if api_port is not None:
        text = text.replace("\n# api_port = 8000\n", f"\napi_port = {api_port}\n")
    if extra:
        text = tomli_w.dumps(extra) + text
    return text


NODE_ENV = {  # a node's environment as deployments set it (values the light checks accept)
    "IAN_DATA_DIR": "node-data",
    "IAN_API_HOST": "127.0.0.1",
    "IAN_API_PORT": "18000",
    "IAN_P2P_HOST": "[::]",
    "IAN_P2P_PORT": "19000",
    "IAN_WS_PORT": "19001",
    "IAN_LOG_LEVEL": "debug",
    "IAN_LOG_FORMAT": " JSON ",
    "IAN_LOG_FILE": "/var/log/ian.log",
    "IAN_NETWORK_ID": "ian-test.1",
    "IAN_SEQUENCER": "self",
    "IAN_CHAIN_ID": HEX64,
    "IAN_GENESIS": "",
    "IAN_API_TOKEN": "s3cret",
    "IAN_ADMIN_ALLOW_REMOTE": "yes",
    "IAN_SEED_NODES": "tcp://10.0.0.2:9000, seed.example:9000,tcp://[fd00::1]:9000",
    "IAN_P2P_ADVERTISE": "tcp://203.0.113.7:9000",
    "IAN_FORWARD_FROM": "",
    "IAN_TRUSTED_PROXIES": "[]",
    "IAN_GOALS": "[]",
    "IAN_TAU_ENDPOINT": " ",
    "IAN_CONTRIBUTOR_RATE": "1000",
    "IAN_CONTRIBUTOR_BURST": "100000",
    "IAN_CLIENT_RATE": "0.5",
    "IAN_CLIENT_BURST": "5000",
    "IAN_NODE_URL": "http://10.9.9.9:1",  # not a setting: ignored by both
    "IAN_SOMETHING_ELSE": "x",
}

# (case id, IAN_* environment, files to write {relative path: text}, --data-dir flag, answer)
# answer: the port the light resolver must find itself, or None when it must leave the case to
# the full loader (every case is compared with the full loader either way).
CASES: list[tuple[str, dict[str, str], dict[str, Any], str | None, int | None]] = [
    ("defaults", {}, {}, None, 8000),
    ("env port", {"IAN_API_PORT": "8123"}, {}, None, 8123),
    ("env port 0 = default", {"IAN_API_PORT": "0"}, {}, None, 8000),
    ("env port leading zero", {"IAN_API_PORT": "08123"}, {}, None, 8123),
    ("env port top", {"IAN_API_PORT": "65535"}, {}, None, 65535),
    ("default file", {}, {".ian-data/config.toml": commented(8200)}, None, 8200),
    ("commented file", {}, {".ian-data/config.toml": commented()}, None, 8000),
    ("empty file", {}, {".ian-data/config.toml": ""}, None, 8000),
    (
        "env beats file",
        {"IAN_API_PORT": "8300"},
        {".ian-data/config.toml": commented(8200)},
        None,
        8300,
    ),
    (
        "IAN_DATA_DIR's file",
        {"IAN_DATA_DIR": "d2"},
        {"d2/config.toml": commented(8400), ".ian-data/config.toml": commented(8200)},
        None,
        8400,
    ),
    (
        "flag beats IAN_DATA_DIR",
        {"IAN_DATA_DIR": "d2"},
        {"d2/config.toml": commented(8400), "d3/config.toml": commented(8500)},
        "d3",
        8500,
    ),
    (
        "a bad IAN_DATA_DIR under a flag is never read",
        {"IAN_DATA_DIR": " "},
        {"d3/config.toml": commented(8500)},
        "d3",
        8500,
    ),
    (
        "IAN_CONFIG beats the data dir's",
        {"IAN_CONFIG": " elsewhere.toml "},
        {"elsewhere.toml": commented(8600), ".ian-data/config.toml": commented(8200)},
        None,
        8600,
    ),
    (
        "file data_dir does not move the file",
        {},
        {".ian-data/config.toml": commented(8200, data_dir="d4"), "d4/config.toml": "api_port = 1"},
        None,
        8200,
    ),
    ("a node's environment", NODE_ENV, {}, None, 18000),
    (
        "file with many settings",
        {},
        {
            ".ian-data/config.toml": tomli_w.dumps(
                {
                    "api_port": 8700,
                    "api_host": "::1",
                    "p2p_port": 0,
                    "log_level": "WARNING",
                    "admin_allow_remote": True,
                    "contributor_rate": 2,
                    "peer_burst": 1.5,
                    "seed_nodes": [],
                    "forward_from": "",
                    "goals": [],
                    "sequencer": HEX40,
                    "network_id": "n",
                    "api_token": "",
                    "block_max_entries": 10000,
                    "ws_port": "9101",
                }
            )
        },
        None,
        8700,
    ),
    # everything below goes to the full loader (invalid, or not understood here)
    ("port word", {"IAN_API_PORT": "eighty"}, {}, None, None),
    ("port spaced", {"IAN_API_PORT": " 8123"}, {}, None, None),
    ("port float text", {"IAN_API_PORT": "8123.0"}, {}, None, None),
    ("port too big", {"IAN_API_PORT": "65536"}, {}, None, None),
    ("port negative", {"IAN_API_PORT": "-1"}, {}, None, None),
    ("bad log level", {"IAN_API_PORT": "8123", "IAN_LOG_LEVEL": "loud"}, {}, None, None),
    ("seed nodes", {"IAN_API_PORT": "8123", "IAN_SEED_NODES": "tcp://a:1,b:2"}, {}, None, 8123),
    ("seed nodes json", {"IAN_API_PORT": "8123", "IAN_SEED_NODES": '["a:1"]'}, {}, None, 8123),
    ("seed ipv6 first", {"IAN_API_PORT": "8123", "IAN_SEED_NODES": "[::1]:9"}, {}, None, 8123),
    ("bad seed nodes", {"IAN_API_PORT": "8123", "IAN_SEED_NODES": "a"}, {}, None, None),
    ("seed twice", {"IAN_API_PORT": "8123", "IAN_SEED_NODES": "a:1,tcp://A:1"}, {}, None, None),
    ("tau endpoint", {"IAN_API_PORT": "8123", "IAN_TAU_ENDPOINT": "tau:12345"}, {}, None, 8123),
    (
        "bad tau endpoint",
        {"IAN_API_PORT": "8123", "IAN_TAU_ENDPOINT": "http://t:1"},
        {},
        None,
        None,
    ),
    ("proxies", {"IAN_API_PORT": "8123", "IAN_TRUSTED_PROXIES": "10.0.0.0/8"}, {}, None, None),
    ("cross-field", {"IAN_API_PORT": "8123", "IAN_MAX_PEERS": "10"}, {}, None, None),
    ("cross-field bad", {"IAN_API_PORT": "8123", "IAN_MIN_PEERS": "99"}, {}, None, None),
    ("goals", {"IAN_API_PORT": "8123", "IAN_GOALS": "[1]"}, {}, None, None),
    ("goals bad json", {"IAN_API_PORT": "8123", "IAN_GOALS": "["}, {}, None, None),
    ("blank data dir", {"IAN_DATA_DIR": "  "}, {}, None, None),
    ("missing IAN_CONFIG", {"IAN_CONFIG": "nope.toml", "IAN_API_PORT": "8123"}, {}, None, None),
    ("IAN_CONFIG a directory", {"IAN_CONFIG": "d5"}, {"d5/x": ""}, None, None),
    ("unknown key", {}, {".ian-data/config.toml": "api_prot = 8200\n"}, None, None),
    ("bad toml", {}, {".ian-data/config.toml": "api_port = \n"}, None, None),
    ("not utf-8", {}, {".ian-data/config.toml": b"api_port = 8200 # \xff\n"}, None, None),
    ("toml port float", {}, {".ian-data/config.toml": "api_port = 8200.0\n"}, None, None),
    ("toml port bool", {}, {".ian-data/config.toml": "api_port = true\n"}, None, None),
    ("toml port table", {}, {".ian-data/config.toml": "[api_port]\nx = 1\n"}, None, None),
    ("toml goals", {}, {".ian-data/config.toml": '[[goals]]\nid = "X"\n'}, None, None),
    ("toml host int", {}, {".ian-data/config.toml": "api_host = 1\napi_port = 8200\n"}, None, None),
    ("toml nul path", {}, {".ian-data/config.toml": 'log_file = "a\\u0000b"\n'}, None, None),
    ("toml inf", {}, {".ian-data/config.toml": "peer_rate = inf\napi_port = 8200\n"}, None, None),
    (
        "toml port with bad env elsewhere",
        {"IAN_WS_PORT": "x"},
        {".ian-data/config.toml": commented(8200)},
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("env", "files", "flag", "answer"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_light_answer_is_the_full_loaders(
    env: dict[str, str],
    files: dict[str, Any],
    flag: str | None,
    answer: int | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    for relative, text in files.items():
        write(tmp_path / relative, text)
    light, full = agree(monkeypatch, env, Path(flag) if flag is not None else None)
    if answer is None:
        assert light is None, "left to the full loader"
    else:
        assert light == full == f"http://127.0.0.1:{answer}"
    assert read_node_url(None, Path(flag) if flag is not None else None) == full


# --------------------------------------------------------------------------- every field


STRINGS = [
    "",
    " ",
    "0",
    "1",
    "08",
    "-1",
    "1.5",
    "0.5",
    ".5",
    "1.",
    "1e3",
    "1_0",
    "inf",
    "nan",
    "100",
    "10000",
    "10001",
    "65535",
    "65536",
    "9" * 20,
    "true",
    "TRUE",
    "Yes",
    "no",
    "off",
    "2",
    "x",
    "self",
    " SELF ",
    HEX40,
    HEX40[:-1],
    HEX64,
    HEX64.lower() + "\n",
    "127.0.0.1",
    "[::1]",
    "::1",
    "0.0.0.0",
    "host.example",
    "-bad",
    "bad host",
    "a" * 64,
    "a" * 65,
    "tcp://a:1",
    "a:1",
    "tcp://a:1,b:2",
    "a:1,a:1",
    "tcp://[::1]:9000",
    "[::1]:9000",
    "a:0",
    "udp://a:1",
    "tcp://a:1/x",
    '["a:1"]',
    '["a:1", 1]',
    "[1]",
    "[]",
    "[ ]",
    "a,b",
    "DEBUG",
    " info ",
    "Json",
    "text",
    "/a/b",
    "é",
]
TOML_VALUES: list[Any] = [
    0,
    1,
    -1,
    100,
    70000,
    1.5,
    0.0,
    True,
    False,
    "x",
    "",
    "5",
    [],
    ["a"],
    {"a": 1},
]


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_each_field_from_the_environment(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    understood = 0
    for text in STRINGS:
        env = {"IAN_API_PORT": "8123", f"IAN_{name.upper()}": text}
        light, _ = agree(monkeypatch, env)
        understood += light is not None
    assert (understood > 0) == (name not in FULL_LOADER_ONLY), understood


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_each_field_from_the_config_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".ian-data" / "config.toml"
    for value in [*TOML_VALUES, *STRINGS]:
        doc = {name: value} if name == "api_port" else {"api_port": 8124, name: value}
        write(path, tomli_w.dumps(doc))
        agree(monkeypatch, {})


# --------------------------------------------------------------------------- no pydantic


def test_a_read_command_url_from_the_config_file_imports_no_pydantic(tmp_path: Path) -> None:
    write(tmp_path / "data" / "config.toml", commented(8200))
    code = (
        "import sys\n"
        "from ian_ops.target import read_node_url\n"
        "print(read_node_url(None))\n"
        "print([m for m in ('pydantic', 'ian.config', 'httpx', 'rich') if m in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    env.update({"PYTHONPATH": str(SRC), "IAN_DATA_DIR": str(tmp_path / "data")})
    ran = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["http://127.0.0.1:8200", "[]"]
