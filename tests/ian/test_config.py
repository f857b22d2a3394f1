"""Settings: layering, peer addresses, one-line errors, goals, rendering and provenance."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from pydantic import SecretStr

from ian.chain.goals import BUILTIN_GOALS, DEMO_GOAL_ID
from ian.config import (
    PeerAddress,
    PeerAddressError,
    Settings,
    load_settings,
    parse_peer_address,
    render_config_toml,
    settings_as_dict,
)
from ian.errors import ConfigError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so ./.ian-data/config.toml is never picked up by accident."""
    monkeypatch.chdir(tmp_path)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- defaults, layering


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.api_port == 8000
    assert settings.p2p_port == 9000
    assert settings.ws_port == 9001
    assert settings.data_dir == Path(".ian-data")
    assert settings.seed_nodes == []
    assert settings.api_token is None
    assert set(settings.sources().values()) == {"default"}


def test_settings_constructor_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IAN_API_PORT", "1234")
    assert Settings().api_port == 8000
    assert load_settings().api_port == 1234  # env=None means os.environ


@pytest.mark.parametrize(
    ("field", "toml_value", "env_value", "flag_value", "expected"),
    [
        ("api_port", "8100", "8200", 8300, (8100, 8200, 8300)),
        ("contributor_rate", "0.5", "0.25", 2.0, (0.5, 0.25, 2.0)),
        ("admin_allow_remote", "true", "false", True, (True, False, True)),
        ("log_level", '"debug"', "warning", "error", ("DEBUG", "WARNING", "ERROR")),
        (
            "log_file",
            '"/t.log"',
            "/e.log",
            Path("/f"),
            (Path("/t.log"), Path("/e.log"), Path("/f")),
        ),
        ("api_token", '"t"', "e", "f", (SecretStr("t"), SecretStr("e"), SecretStr("f"))),
        (
            "seed_nodes",
            '["tcp://t:1"]',
            "tcp://e:2",
            ["tcp://f:3"],
            ([PeerAddress("t", 1)], [PeerAddress("e", 2)], [PeerAddress("f", 3)]),
        ),
    ],
)
def test_precedence_default_toml_env_flag(
    tmp_path: Path, field: str, toml_value: str, env_value: str, flag_value, expected: tuple
) -> None:
    cfg = write_toml(tmp_path / "c.toml", f"{field} = {toml_value}\n")
    env_name = "IAN_" + field.upper()
    from_toml = load_settings(config_file=cfg, env={})
    from_env = load_settings(config_file=cfg, env={env_name: env_value})
    from_flag = load_settings(
        config_file=cfg, env={env_name: env_value}, overrides={field: flag_value}
    )
    assert getattr(Settings(), field) != expected[0]
    assert getattr(from_toml, field) == expected[0]
    assert getattr(from_env, field) == expected[1]
    assert getattr(from_flag, field) == expected[2]
    assert from_toml.sources()[field] == f"config.toml ({cfg})"
    assert from_env.sources()[field] == f"env {env_name}"
    assert from_flag.sources()[field] == "flag"


def test_secret_layers_and_never_shown_in_repr(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", 'api_token = "from-file"\n')
    assert load_settings(config_file=cfg, env={}).api_token == SecretStr("from-file")
    settings = load_settings(config_file=cfg, env={"IAN_API_TOKEN": "from-env"})
    assert settings.api_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    assert load_settings(env={"IAN_API_TOKEN": "  "}).api_token is None


def test_none_overrides_mean_flag_not_given() -> None:
    settings = load_settings(env={"IAN_API_PORT": "1"}, overrides={"api_port": None})
    assert settings.api_port == 1
    assert settings.sources()["api_port"] == "env IAN_API_PORT"


def test_unknown_override_is_rejected() -> None:
    assert "api_prot" in config_error(env={}, overrides={"api_prot": 1})


def test_unknown_ian_env_vars_are_ignored() -> None:
    settings = load_settings(
        env={"IAN_NODE_URL": "http://x", "IAN_WHATEVER": "1", "ian_api_port": "7", "PATH": "/bin"}
    )
    assert settings == Settings()


# --------------------------------------------------------------------------- finding config.toml


def test_config_found_in_data_dir_from_env(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = write_toml(data / "config.toml", "api_port = 8111\n")
    settings = load_settings(env={"IAN_DATA_DIR": str(data)})
    assert settings.api_port == 8111
    assert settings.sources()["api_port"] == f"config.toml ({cfg})"
    assert settings.sources()["data_dir"] == "env IAN_DATA_DIR"


def test_config_found_in_data_dir_from_flag_over_env(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_toml(tmp_path / "a" / "config.toml", "api_port = 1\n")
    write_toml(tmp_path / "b" / "config.toml", "api_port = 2\n")
    settings = load_settings(
        env={"IAN_DATA_DIR": str(tmp_path / "a")}, overrides={"data_dir": tmp_path / "b"}
    )
    assert settings.api_port == 2


def test_default_data_dir_config_is_used(tmp_path: Path) -> None:
    (tmp_path / ".ian-data").mkdir()
    write_toml(tmp_path / ".ian-data" / "config.toml", 'network_id = "n1"\n')
    assert load_settings(env={}).network_id == "n1"


def test_ian_config_env_beats_data_dir_and_argument_beats_ian_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_toml(data / "config.toml", "api_port = 1\n")
    env_cfg = write_toml(tmp_path / "env.toml", "api_port = 2\n")
    arg_cfg = write_toml(tmp_path / "arg.toml", "api_port = 3\n")
    env = {"IAN_DATA_DIR": str(data), "IAN_CONFIG": str(env_cfg)}
    assert load_settings(env=env).api_port == 2
    assert load_settings(config_file=arg_cfg, env=env).api_port == 3


def test_missing_explicit_config_files_are_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert str(missing) in config_error(config_file=missing, env={})
    message = config_error(env={"IAN_CONFIG": str(missing)})
    assert message.startswith("IAN_CONFIG:")
    assert str(missing) in message


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", 'network_id = "a"\napi_port = = 3\n')
    message = config_error(config_file=cfg, env={})
    assert str(cfg) in message
    assert "line 2" in message


def test_unknown_toml_key_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", "api_prot = 8000\n")
    message = config_error(config_file=cfg, env={})
    assert message.startswith(f"{cfg}: unknown setting 'api_prot'")
    assert "api_port" in message


def test_unknown_toml_table_is_rejected(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", "[p2p]\nport = 1\n")
    assert "unknown setting 'p2p'" in config_error(config_file=cfg, env={})


# --------------------------------------------------------------------------- peer addresses


@pytest.mark.parametrize(
    ("text", "host", "port", "canonical"),
    [
        ("tcp://seed1.ian.network:9000", "seed1.ian.network", 9000, "tcp://seed1.ian.network:9000"),
        ("TCP://Seed1.IAN.network:9000", "seed1.ian.network", 9000, "tcp://seed1.ian.network:9000"),
        ("tcp://10.0.0.5:1", "10.0.0.5", 1, "tcp://10.0.0.5:1"),
        ("tcp://[::1]:9000", "::1", 9000, "tcp://[::1]:9000"),
        ("tcp://[2001:DB8:0::1]:65535", "2001:db8::1", 65535, "tcp://[2001:db8::1]:65535"),
        ("  tcp://localhost:9000 ", "localhost", 9000, "tcp://localhost:9000"),
        ("node-a:9000", "node-a", 9000, "tcp://node-a:9000"),
    ],
)
def test_parse_peer_address_good(text: str, host: str, port: int, canonical: str) -> None:
    address = parse_peer_address(text)
    assert address == PeerAddress(host, port)
    assert str(address) == canonical
    assert parse_peer_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("http://a:9000", "scheme 'http'"),
        ("udp://a:9000", "scheme 'udp'"),
        ("tcp://a", "missing port"),
        ("tcp://a:", "missing port"),
        ("tcp://:9000", "empty host"),
        ("tcp://a:0", "out of range"),
        ("tcp://a:65536", "out of range"),
        ("tcp://a:-1", "not a number"),
        ("tcp://a:abc", "not a number"),
        ("tcp://::1:9000", "brackets"),
        ("tcp://[::1]", "missing port"),
        ("tcp://[::1:9000", "unclosed"),
        ("tcp://[zz::1]:9000", "not an IPv6 address"),
        ("tcp://a:9000/x", "unexpected path"),
        ("tcp://user@a:9000", "credentials"),
        ("tcp://a..b:9000", "not a valid host"),
    ],
)
def test_parse_peer_address_bad(text: str, reason: str) -> None:
    with pytest.raises(PeerAddressError) as info:
        parse_peer_address(text)
    message = str(info.value)
    assert reason in message
    assert "expected tcp://host:port" in message
    assert "\n" not in message
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, ValueError)


def test_seed_nodes_env_comma_separated() -> None:
    settings = load_settings(
        env={"IAN_SEED_NODES": " tcp://seed1.ian.network:9000 , tcp://[::1]:9001,"}
    )
    assert [str(a) for a in settings.seed_nodes] == [
        "tcp://seed1.ian.network:9000",
        "tcp://[::1]:9001",
    ]
    assert load_settings(env={"IAN_SEED_NODES": ""}).seed_nodes == []


@pytest.mark.parametrize(
    "value", ["http://a:1", "tcp://a", "tcp://a:1,tcp://b:99999", "tcp://a:1;"]
)
def test_seed_nodes_env_errors_name_the_variable_and_form(value: str) -> None:
    message = config_error(env={"IAN_SEED_NODES": value})
    assert message.startswith("IAN_SEED_NODES: ")
    assert "tcp://host:port,tcp://host2:port" in message


def test_seed_nodes_duplicates_rejected() -> None:
    assert "twice" in config_error(env={"IAN_SEED_NODES": "tcp://a:1,tcp://A:1"})


def test_seed_nodes_toml_list_or_string(tmp_path: Path) -> None:
    as_list = write_toml(tmp_path / "l.toml", 'seed_nodes = ["tcp://a:1", "tcp://b:2"]\n')
    as_text = write_toml(tmp_path / "s.toml", 'seed_nodes = "tcp://a:1,tcp://b:2"\n')
    expected = [PeerAddress("a", 1), PeerAddress("b", 2)]
    assert load_settings(config_file=as_list, env={}).seed_nodes == expected
    assert load_settings(config_file=as_text, env={}).seed_nodes == expected


def test_seed_nodes_toml_error_names_file_and_key(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", 'seed_nodes = ["tcp://a:1", "ftp://b:2"]\n')
    message = config_error(config_file=cfg, env={})
    assert message.startswith(f"{cfg}: seed_nodes: ")
    assert "'ftp'" in message


# --------------------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"IAN_API_PORT": "abc"}, "IAN_API_PORT: must be an integer 0..65535"),
        ({"IAN_API_PORT": "70000"}, "IAN_API_PORT: must be an integer 0..65535"),
        ({"IAN_P2P_PORT": "-1"}, "IAN_P2P_PORT: must be an integer 0..65535"),
        ({"IAN_WS_PORT": "1.5"}, "IAN_WS_PORT: must be an integer 0..65535"),
        ({"IAN_LOG_LEVEL": "verbose"}, "IAN_LOG_LEVEL: must be one of DEBUG, INFO"),
        ({"IAN_LOG_FORMAT": "xml"}, "IAN_LOG_FORMAT: must be 'text' or 'json'"),
        ({"IAN_ADMIN_ALLOW_REMOTE": "maybe"}, "IAN_ADMIN_ALLOW_REMOTE: must be true or false"),
        ({"IAN_CONTRIBUTOR_RATE": "nan"}, "IAN_CONTRIBUTOR_RATE: must be a number > 0"),
        ({"IAN_CLIENT_RATE": "0"}, "IAN_CLIENT_RATE: must be a number > 0"),
        ({"IAN_BLOCK_MAX_ENTRIES": "10001"}, "IAN_BLOCK_MAX_ENTRIES: must be an integer 1..10000"),
        ({"IAN_BLOCK_MAX_ENTRIES": "0"}, "IAN_BLOCK_MAX_ENTRIES: must be an integer 1..10000"),
        ({"IAN_CONSENSUS_IN_FLIGHT": "0"}, "IAN_CONSENSUS_IN_FLIGHT: must be an integer 1..16"),
        ({"IAN_SEQUENCER": "leader"}, "IAN_SEQUENCER: must be '', 'self' or a 40-hex node id"),
        ({"IAN_TRUSTED_PROXIES": "10.0.0.0/8,proxy"}, "IAN_TRUSTED_PROXIES: 'proxy' is not an IP"),
        ({"IAN_TAU_ENDPOINT": "http://tau:1"}, "IAN_TAU_ENDPOINT: invalid peer address"),
        ({"IAN_P2P_ADVERTISE": "tcp://x"}, "IAN_P2P_ADVERTISE: invalid peer address"),
        ({"IAN_NETWORK_ID": "my net"}, "IAN_NETWORK_ID: must be 1-64 characters"),
        ({"IAN_API_HOST": "not a host"}, "IAN_API_HOST: must be a host name or IP address"),
        ({"IAN_DATA_DIR": ""}, "IAN_DATA_DIR: must be a directory path"),
        ({"IAN_GOALS": "{not json"}, "IAN_GOALS: must be a JSON list"),
        ({"IAN_MIN_PEERS": "60"}, "IAN_MIN_PEERS: must be at most max_peers (50), got 60"),
        ({"IAN_CERT_RENEW_DAYS": "400"}, "IAN_CERT_RENEW_DAYS: must be less than cert_valid_days"),
        (
            {"IAN_MAX_PARAMETERS_BYTES": str(20 * 1024 * 1024)},
            "IAN_MAX_PARAMETERS_BYTES: must be at most max_request_bytes",
        ),
    ],
)
def test_env_errors_are_one_line_and_name_the_variable(env: dict, expected: str) -> None:
    message = config_error(env=env)
    assert message.startswith(expected), message


def test_env_error_quotes_the_bad_value() -> None:
    assert config_error(env={"IAN_API_PORT": "abc"}) == (
        "IAN_API_PORT: must be an integer 0..65535 (0 = pick a free port), got 'abc'"
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('api_port = "abc"', "api_port: must be an integer 0..65535"),
        ("api_port = true", "api_port: must be an integer 0..65535"),
        ("log_max_bytes = 0", "log_max_bytes: must be an integer >= 1, got 0"),
        ("trusted_proxies = [1]", "trusted_proxies: 1 is not an IP network"),
        ("block_max_entries = 1.5", "block_max_entries: must be an integer 1..10000"),
    ],
)
def test_toml_errors_name_the_file_and_key(tmp_path: Path, toml: str, expected: str) -> None:
    cfg = write_toml(tmp_path / "c.toml", toml + "\n")
    message = config_error(config_file=cfg, env={})
    assert message.startswith(f"{cfg}: {expected}"), message


def test_flag_errors_name_the_flag() -> None:
    message = config_error(env={}, overrides={"api_port": 99999})
    assert message.startswith("--api-port: must be an integer 0..65535")


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", "api_token = 987654321\n")
    message = config_error(config_file=cfg, env={})
    assert message.startswith(f"{cfg}: api_token: ")
    assert "987654321" not in message


def test_several_errors_still_one_line() -> None:
    message = config_error(env={"IAN_API_PORT": "x", "IAN_P2P_PORT": "y"})
    assert "(and 1 more)" in message


# --------------------------------------------------------------------------- normalisation


def test_values_are_normalised() -> None:
    node_id = "AB" * 20
    settings = load_settings(
        env={
            "IAN_LOG_LEVEL": "debug",
            "IAN_LOG_FORMAT": "JSON",
            "IAN_SEQUENCER": node_id,
            "IAN_TRUSTED_PROXIES": "10.1.2.3/8, ::1",
            "IAN_TAU_ENDPOINT": "tau-node:12345",
            "IAN_P2P_ADVERTISE": "203.0.113.7:9000",
            "IAN_LOG_FILE": "",
            "IAN_API_PORT": "0",
        }
    )
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.sequencer == node_id.lower()
    assert settings.trusted_proxies == ["10.0.0.0/8", "::1/128"]
    assert settings.tau_endpoint == "tcp://tau-node:12345"
    assert settings.p2p_advertise == "tcp://203.0.113.7:9000"
    assert settings.log_file is None
    assert settings.api_port == 0
    assert load_settings(env={"IAN_SEQUENCER": "SELF"}).sequencer == "self"


# --------------------------------------------------------------------------- goals

GOALS_TOML = """
[[goals]]
id = "TRIVIAL_1"
name = "Trivial"
evaluator = "trivial"
leaderboard_capacity = 5
[goals.thresholds]
min_reward = 0.0

[[goals]]
id = "SECOND"
"""


def test_goals_from_toml(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", GOALS_TOML)
    settings = load_settings(config_file=cfg, env={})
    assert [g.id for g in settings.goals] == ["TRIVIAL_1", "SECOND"]
    assert settings.goals[0].thresholds.min_reward == 0.0
    assert settings.goals[0].evaluator == "trivial"
    assert [g.id for g in settings.all_goals()] == [
        *(g.id for g in BUILTIN_GOALS),
        "TRIVIAL_1",
        "SECOND",
    ]
    assert settings.sources()["goals"] == f"config.toml ({cfg})"


def test_goal_colliding_with_builtin_is_rejected(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", f'[[goals]]\nid = "{DEMO_GOAL_ID}"\n')
    message = config_error(config_file=cfg, env={})
    assert message.startswith(f"{cfg}: goals: goal id '{DEMO_GOAL_ID}' collides with a built-in")


def test_duplicate_goal_ids_are_rejected(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", '[[goals]]\nid = "G"\n[[goals]]\nid = "G"\n')
    assert "goal id 'G' is defined twice" in config_error(config_file=cfg, env={})


def test_bad_goal_field_names_its_path(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", '[[goals]]\nid = "G"\nevaluator = "magic"\n')
    assert config_error(config_file=cfg, env={}).startswith(f"{cfg}: goals[0].evaluator: ")
    cfg = write_toml(tmp_path / "d.toml", '[[goals]]\nid = "G"\ncolour = "red"\n')
    assert config_error(config_file=cfg, env={}) == f"{cfg}: goals[0].colour: unknown key"


def test_goals_from_env_json() -> None:
    settings = load_settings(env={"IAN_GOALS": '[{"id": "ENV_GOAL", "evaluator": "trivial"}]'})
    assert [g.id for g in settings.goals] == ["ENV_GOAL"]


# --------------------------------------------------------------------------- rendering


def test_render_defaults_round_trips_and_documents_every_field(tmp_path: Path) -> None:
    text = render_config_toml()
    assert tomllib.loads(text) == {}  # defaults are shown commented out
    for name in Settings.model_fields:
        assert f"IAN_{name.upper()}" in text
        assert f"# {name} =" in text or f"{name} =" in text or name == "goals"
    cfg = write_toml(tmp_path / "config.toml", text)
    loaded = load_settings(config_file=cfg, env={})
    assert loaded == Settings()
    assert set(loaded.sources().values()) == {"default"}


def test_render_custom_settings_round_trips(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "IAN_DATA_DIR": "/srv/ian",
            "IAN_SEED_NODES": "tcp://seed1:9000,tcp://[::1]:9001",
            "IAN_LOG_FILE": "/var/log/ian.log",
            "IAN_API_PORT": "0",
            "IAN_ADMIN_ALLOW_REMOTE": "true",
            "IAN_TRUSTED_PROXIES": "10.0.0.0/8",
            "IAN_CONTRIBUTOR_RATE": "0.75",
            "IAN_TAU_ENDPOINT": "tcp://tau:12345",
            "IAN_SEQUENCER": "self",
            "IAN_GOALS": json.dumps(
                [{"id": "G1", "thresholds": {"max_risk": 0.2}, "weights": {"risk": -1.0}}]
            ),
        }
    )
    text = render_config_toml(settings)
    data = tomllib.loads(text)
    assert data["seed_nodes"] == ["tcp://seed1:9000", "tcp://[::1]:9001"]
    assert data["api_port"] == 0
    assert Settings(**data) == settings
    reloaded = load_settings(config_file=write_toml(tmp_path / "c.toml", text), env={})
    assert reloaded == settings


def test_render_never_writes_the_token() -> None:
    settings = load_settings(env={"IAN_API_TOKEN": "super-secret-token"})
    text = render_config_toml(settings)
    assert "super-secret-token" not in text
    assert "api_token" not in tomllib.loads(text)


def test_rendered_goal_example_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = render_config_toml()
    start = text.index("# [[goals]]")
    block = "\n".join(line[2:] for line in text[start:].splitlines() if line.startswith("# "))
    cfg = write_toml(tmp_path / "c.toml", block + "\n")
    settings = load_settings(config_file=cfg, env={})
    assert [g.id for g in settings.goals] == ["MY_GOAL"]


# --------------------------------------------------------------------------- dict and sources


def test_settings_as_dict_is_json_safe_and_redacted() -> None:
    settings = load_settings(
        env={
            "IAN_API_TOKEN": "tok",
            "IAN_SEED_NODES": "tcp://[::1]:9000",
            "IAN_LOG_FILE": "/x/y.log",
            "IAN_GOALS": '[{"id": "G"}]',
        }
    )
    data = settings_as_dict(settings)
    json.dumps(data, allow_nan=False)
    assert set(data) == set(Settings.model_fields)
    assert data["api_token"] == "***"
    assert data["seed_nodes"] == ["tcp://[::1]:9000"]
    assert data["data_dir"] == ".ian-data"
    assert data["log_file"] == "/x/y.log"
    assert data["goals"][0]["id"] == "G"
    assert settings_as_dict(settings, redact=False)["api_token"] == "tok"
    assert settings_as_dict(Settings())["api_token"] is None


def test_sources_report_each_layer(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "c.toml", 'network_id = "file-net"\napi_port = 1\n')
    settings = load_settings(
        config_file=cfg,
        env={"IAN_API_PORT": "2", "IAN_LOG_LEVEL": "ERROR"},
        overrides={"log_level": "debug"},
    )
    sources = settings.sources()
    assert set(sources) == set(Settings.model_fields)
    assert sources["network_id"] == f"config.toml ({cfg})"
    assert sources["api_port"] == "env IAN_API_PORT"
    assert sources["log_level"] == "flag"
    assert sources["p2p_port"] == "default"
    # Equality is about values, not provenance.
    assert settings == Settings(network_id="file-net", api_port=2, log_level="DEBUG")
