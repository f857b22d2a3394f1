from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from ian.errors import CorruptFileError, IdentityError
from ian.identity import Identity, load_identity, node_id_for, save_identity, verify_signature


def _saved(tmp_path: Path) -> tuple[Identity, Path]:
    identity = Identity.generate()
    path = tmp_path / "identity.json"
    save_identity(identity, path)
    return identity, path


def _rewrite(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def test_node_id_derivation_known_vector() -> None:
    # sha256(32 zero bytes) = 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925
    assert node_id_for(bytes(32)) == "66687aadf862bd776c8fc18b8e9f8e2008971485"


def test_round_trip_file_shape_and_mode(tmp_path: Path) -> None:
    identity, path = _saved(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc) == {"node_id", "public_key", "private_key"}
    assert doc["node_id"] == identity.node_id  # what `jq -r .node_id` prints
    assert len(doc["node_id"]) == 40 and int(doc["node_id"], 16) >= 0
    assert len(base64.b64decode(doc["public_key"])) == 32
    assert len(base64.b64decode(doc["private_key"])) == 32
    loaded = load_identity(path)
    assert loaded == identity
    assert loaded.private_key_raw() == identity.private_key_raw()
    assert loaded.node_id == node_id_for(loaded.public_key)
    assert "private_key" not in repr(loaded)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    identity, path = _saved(tmp_path)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        save_identity(Identity.generate(), path)
    assert load_identity(path) == identity
    other = Identity.generate()
    save_identity(other, path, overwrite=True)
    assert load_identity(path) == other


def test_sign_and_verify() -> None:
    identity = Identity.generate()
    sig = identity.sign(b"block")
    assert len(sig) == 64
    assert verify_signature(identity.public_key, sig, b"block")
    assert not verify_signature(identity.public_key, sig, b"other")
    assert not verify_signature(Identity.generate().public_key, sig, b"block")


@pytest.mark.parametrize(
    ("key", "sig"),
    [(b"short", b"x" * 64), (b"k" * 32, b"short"), (None, b"x" * 64), (b"k" * 32, "str")],
)
def test_verify_never_raises(key: object, sig: object) -> None:
    assert verify_signature(key, sig, b"data") is False  # type: ignore[arg-type]


def test_tampered_node_id(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    doc = json.loads(path.read_text())
    doc["node_id"] = node_id_for(b"someone else")
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match=r"identity\.json: node_id does not match public_key"):
        load_identity(path)


def test_mismatched_private_key(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    doc = json.loads(path.read_text())
    doc["private_key"] = Identity.generate().to_json()["private_key"]
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match="private_key does not match public_key"):
        load_identity(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_group_or_world_access_rejected(tmp_path: Path, mode: int) -> None:
    _, path = _saved(tmp_path)
    path.chmod(mode)
    with pytest.raises(IdentityError) as info:
        load_identity(path)
    assert info.value.fix == f"chmod 600 {path}"


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],
        {"node_id": "00" * 20, "public_key": "AA=="},
        {"node_id": "00" * 20, "public_key": "!!!", "private_key": "AA=="},
        {
            "node_id": "00" * 20,
            "public_key": base64.b64encode(b"x" * 31).decode(),
            "private_key": "",
        },
        {"node_id": "00" * 20, "public_key": 5, "private_key": 6},
    ],
)
def test_malformed_content_is_corrupt(tmp_path: Path, doc: object) -> None:
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    with pytest.raises(CorruptFileError) as info:
        load_identity(path)
    assert str(path) in info.value.message
    assert "ian restore" in (info.value.fix or "")


def test_torn_file_is_corrupt(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"identity\.json is corrupt"):
        load_identity(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        load_identity(tmp_path / "identity.json")
