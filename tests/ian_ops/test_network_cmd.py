"""`ian network init/show` through the ``ian`` fixture (exit codes, files, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ian.chain.genesis import Genesis
from ian.identity import Identity, save_identity


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    """Three data dirs holding an identity each."""
    out = []
    for i in range(3):
        d = tmp_path / f"node{i}"
        d.mkdir()
        save_identity(Identity.generate(), d / "identity.json")
        out.append(d)
    return out


def node_id(d: Path) -> str:
    return str(json.loads((d / "identity.json").read_text())["node_id"])


def test_init_writes_a_genesis_and_show_prints_its_chain_id(
    ian, dirs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "genesis.json"
    me = Identity.generate()
    spec = f"{me.node_id}:{me.public_key.hex()}"
    r = ian("network", "init", "-a", str(dirs[0]), "-a", str(dirs[1]), "-a", spec,
                "--network", "testnet", "--out", str(out), "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    genesis = Genesis.read(out)
    assert doc["chain_id"] == genesis.chain_id() and doc["file"] == str(out)
    assert genesis.network == "testnet"
    assert genesis.authority_ids == (node_id(dirs[0]), node_id(dirs[1]), me.node_id)
    assert [g.id for g in genesis.goals] == ["DEMO_TRADING_AGENT"]

    shown = ian("network", "show", "--file", str(out))
    assert shown.exit_code == 0, shown.stderr
    assert f"chain id:    {genesis.chain_id()}" in shown.stdout
    assert node_id(dirs[1]) in shown.stdout
    as_json = ian("network", "show", "--file", str(out), "--json")
    assert json.loads(as_json.stdout)["genesis"]["authorities"][2]["node_id"] == me.node_id


def test_init_to_stdout_and_goals_from_config(ian, dirs: list[Path], tmp_path: Path) -> None:
    config = dirs[0] / "config.toml"
    config.write_text('[[goals]]\nid = "EXTRA"\nevaluator = "trivial"\n')
    r = ian("network", "init", "-a", str(dirs[0]), "--data-dir", str(dirs[0]), "--out", "-")
    assert r.exit_code == 0, r.stderr
    genesis = Genesis.from_bytes(r.stdout.encode())
    assert [g.id for g in genesis.goals] == ["DEMO_TRADING_AGENT", "EXTRA"]
    assert not (tmp_path / "genesis.json").exists()


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["0", "1"], "names 2 authorities; a chain has 1, 3, 5 or 7"),
        (["0", "0", "1"], "twice"),
        (["nowhere"], "is neither NODE_ID:PUBLIC_KEY_HEX nor a data directory"),
        (["abc:def"], "node_id must be 40 hex digits"),
        (["empty"], "has no identity.json"),
    ],
)
def test_init_refuses_bad_authorities_and_writes_nothing(
    ian, dirs: list[Path], tmp_path: Path, specs: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    args: list[str] = []
    for spec in specs:
        path = dirs[int(spec)] if spec.isdigit() else tmp_path / spec
        args += ["-a", str(path) if spec != "abc:def" else spec]
    out = tmp_path / "genesis.json"
    r = ian("network", "init", *args, "--out", str(out))
    assert r.exit_code == 3, r.stderr
    assert message in r.stderr and r.stderr.startswith("error: ")
    assert not out.exists()


def test_init_never_overwrites_without_force(ian, dirs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "genesis.json"
    out.write_text("keep")
    r = ian("network", "init", "-a", str(dirs[0]), "--out", str(out))
    assert r.exit_code == 3 and "already exists" in r.stderr and "--force" in r.stderr
    assert out.read_text() == "keep"
    r = ian("network", "init", "-a", str(dirs[0]), "--out", str(out), "--force")
    assert r.exit_code == 0, r.stderr
    assert Genesis.read(out).authority_ids == (node_id(dirs[0]),)


def test_show_without_a_pinned_genesis_or_with_a_bad_file(
    ian, dirs: list[Path], tmp_path: Path
) -> None:
    r = ian("network", "show", "--data-dir", str(dirs[0]))
    assert r.exit_code == 3 and "has not pinned a genesis yet" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"authorities": []}')
    r = ian("network", "show", "--file", str(bad))
    assert r.exit_code == 3 and str(bad) in r.stderr and "Traceback" not in r.stderr
