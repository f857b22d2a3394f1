"""`ian config init/show` in process (the `ian` fixture; real files, real environment mapping)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

from ian.config import Settings, load_settings
from ian.errors import ConfigError


def test_init_writes_commented_config_into_data_dir(tmp_path: Path, ian) -> None:
    data = tmp_path / "data"
    result = ian("config", "init", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    target = data / "config.toml"
    assert f"wrote {target}" in result.output
    text = target.read_text(encoding="utf-8")
    assert "IAN_SEED_NODES" in text
    assert "# [[goals]]" in text
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    tomllib.loads(text)
    loaded = load_settings(env={"IAN_DATA_DIR": str(data)})
    assert loaded == Settings(data_dir=data)


def test_init_uses_ian_data_dir_from_env(tmp_path: Path, ian) -> None:
    data = tmp_path / "envdata"
    result = ian("config", "init", env={"IAN_DATA_DIR": str(data)})
    assert result.exit_code == 0, result.output
    assert (data / "config.toml").is_file()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, ian) -> None:
    target = tmp_path / "config.toml"
    target.write_text("# mine\n", encoding="utf-8")
    result = ian("config", "init", "--output", str(target))
    assert isinstance(result.exception, ConfigError)
    assert "already exists" in str(result.exception)
    assert "--force" in (result.exception.fix or "")
    assert target.read_text(encoding="utf-8") == "# mine\n"

    result = ian("config", "init", "--output", str(target), "--force")
    assert result.exit_code == 0, result.output
    assert "IAN_API_PORT" in target.read_text(encoding="utf-8")


def test_init_to_stdout(ian) -> None:
    result = ian("config", "init", "--output", "-")
    assert result.exit_code == 0
    assert "# IAN node configuration." in result.stdout
    assert tomllib.loads(result.stdout) == {}
    assert not Path(".ian-data").exists()


def test_show_json_reports_values_and_sources(tmp_path: Path, ian) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text('network_id = "file-net"\n', encoding="utf-8")
    result = ian(
        "config",
        "show",
        "--json",
        env={"IAN_DATA_DIR": str(data), "IAN_API_PORT": "8123", "IAN_API_TOKEN": "hunter2"},
    )
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.stdout
    doc = json.loads(result.stdout)
    assert doc["settings"]["api_port"] == 8123
    assert doc["settings"]["network_id"] == "file-net"
    assert doc["settings"]["api_token"] == "***"
    assert doc["sources"]["api_port"] == "env IAN_API_PORT"
    assert doc["sources"]["data_dir"] == "env IAN_DATA_DIR"
    assert doc["sources"]["network_id"] == f"config.toml ({data / 'config.toml'})"
    assert doc["sources"]["p2p_port"] == "default"


def test_show_data_dir_flag_is_reported_as_flag(tmp_path: Path, ian) -> None:
    result = ian("config", "show", "--json", "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["settings"]["data_dir"] == str(tmp_path / "d")
    assert doc["sources"]["data_dir"] == "flag"


def test_show_explicit_config_file(tmp_path: Path, ian) -> None:
    cfg = tmp_path / "other.toml"
    cfg.write_text('seed_nodes = "tcp://seed1:9000"\n', encoding="utf-8")
    result = ian("config", "show", "--json", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["settings"]["seed_nodes"] == ["tcp://seed1:9000"]
    assert doc["sources"]["seed_nodes"] == f"config.toml ({cfg})"


def test_show_table_for_humans(ian) -> None:
    result = ian("config", "show", env={"IAN_SEED_NODES": "tcp://seed1:9000", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "seed_nodes" in result.stdout
    assert "tcp://seed1:9000" in result.stdout
    assert "env IAN_SEED_NODES" in result.stdout


def test_show_invalid_config_raises_config_error(tmp_path: Path, ian) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("api_prot = 1\n", encoding="utf-8")
    result = ian("config", "show", "--config", str(cfg))
    assert isinstance(result.exception, ConfigError)
    assert "unknown setting 'api_prot'" in str(result.exception)
