"""The genesis document: validation, a stable chain id, authority specs, the start-up decision."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ian.chain.genesis import (
    Authority,
    Genesis,
    GenesisDecision,
    parse_authority_spec,
    parse_chain_id,
    resolve_genesis,
)
from ian.chain.goals import DEMO_GOAL, GoalSpec
from ian.errors import ConfigError, GenesisError
from ian.identity import Identity

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEYS = [Identity.generate() for _ in range(8)]


def auth(i: int) -> dict[str, str]:
    return {"node_id": KEYS[i].node_id, "public_key": KEYS[i].public_key.hex()}


def doc(n: int = 3, **extra: object) -> dict[str, object]:
    return {
        "created_at": "2026-01-01T00:00:00Z",
        "goals": [DEMO_GOAL.model_dump(mode="json")],
        "authorities": [auth(i) for i in range(n)],
        **extra,
    }


def parse(d: dict[str, object]) -> Genesis:
    return Genesis.from_bytes(json.dumps(d).encode(), source="g.json")


def test_chain_id_ignores_layout_and_omitted_defaults() -> None:
    g = parse(doc())
    assert len(g.chain_id()) == 64
    # Key order, whitespace and filled-in defaults do not change the chain.
    pretty = json.dumps(dict(reversed(list(doc().items()))), indent=4).encode()
    assert Genesis.from_bytes(pretty).chain_id() == g.chain_id()
    assert Genesis.from_bytes(g.to_json().encode()).chain_id() == g.chain_id()
    full = doc(network="ian-local", consensus={"heartbeat_ms": 150})
    assert parse(full).chain_id() == g.chain_id()
    # Any change of substance names another chain.
    assert parse(doc(network="other")).chain_id() != g.chain_id()
    assert parse(doc(created_at="2026-01-01T00:00:01Z")).chain_id() != g.chain_id()
    assert parse(doc(authorities=[auth(1), auth(0), auth(2)])).chain_id() != g.chain_id()
    # The same instant in another zone is the same document.
    assert parse(doc(created_at="2026-01-01T01:00:00+01:00")).chain_id() == g.chain_id()


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_authority_counts_allowed(n: int) -> None:
    assert len(parse(doc(n)).authorities) == n


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"authorities": []}, "names 0 authorities; a chain has 1, 3, 5 or 7"),
        ({"authorities": [auth(0), auth(1)]}, "names 2 authorities"),
        ({"authorities": [auth(0), auth(0), auth(1)]}, f"names authority {KEYS[0].node_id} twice"),
        (
            {"authorities": [{"node_id": KEYS[0].node_id, "public_key": KEYS[1].public_key.hex()}]},
            "does not belong to its public key",
        ),
        ({"authorities": [{"node_id": "xyz", "public_key": "00" * 32}]}, "40 hex digits"),
        ({"authorities": [{"node_id": KEYS[0].node_id, "public_key": "ab"}]}, "64 hex digits"),
        ({"goals": []}, "goals"),
        ({"goals": [DEMO_GOAL.model_dump(mode="json")] * 2}, "lists goal DEMO_TRADING_AGENT twice"),
        ({"created_at": "2026-01-01T00:00:00"}, "must carry a time zone"),
        ({"network": "bad name!"}, "network"),
        ({"protocol_version": 2}, "protocol_version"),
        ({"extra": 1}, "extra"),
        ({"consensus": {"election_timeout_min_ms": 500, "election_timeout_max_ms": 400}}, "above"),
        ({"consensus": {"heartbeat_ms": 900}}, "at most half"),
    ],
)
def test_invalid_documents_name_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(GenesisError, match=r"^g\.json") as info:
        parse({**doc(), **change})
    assert message in info.value.message
    assert isinstance(info.value, ConfigError)  # exit 3 in the CLI


@pytest.mark.parametrize("data", [b"{torn", b"[]", b"\xff\xfe", b" " * (1024 * 1024 + 1)])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(GenesisError, match=r"g\.json"):
        Genesis.from_bytes(data, source="g.json")


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="does not exist"):
        Genesis.read(tmp_path / "nope.json")


def test_one_authority_genesis_names_the_node() -> None:
    me = KEYS[0]
    g = Genesis.one_authority(me.node_id, me.public_key, [DEMO_GOAL], network="net", now=T0)
    assert g.authority_ids == (me.node_id,)
    assert g.authority(me.node_id) == Authority(node_id=me.node_id, public_key=me.public_key.hex())
    assert g.authority(KEYS[1].node_id) is None
    assert Genesis.from_bytes(g.to_json().encode()) == g


def test_authority_specs(tmp_path: Path) -> None:
    me = KEYS[2]
    spec = f"{me.node_id.upper()}:{me.public_key.hex().upper()}"
    assert parse_authority_spec(spec, lambda p: pytest.fail("no file read")).node_id == me.node_id
    (tmp_path / "dd").mkdir()
    seen: list[Path] = []

    def load(path: Path) -> tuple[str, bytes]:
        seen.append(path)
        return me.node_id, me.public_key

    assert parse_authority_spec(str(tmp_path / "dd"), load).public_key == me.public_key.hex()
    assert seen == [tmp_path / "dd" / "identity.json"]
    with pytest.raises(GenesisError, match="neither NODE_ID:PUBLIC_KEY_HEX nor a data directory"):
        parse_authority_spec(str(tmp_path / "missing"), load)
    with pytest.raises(GenesisError, match="does not belong"):
        parse_authority_spec(f"{KEYS[3].node_id}:{me.public_key.hex()}", load)


def test_chain_id_parsing() -> None:
    assert parse_chain_id(" " + "AB" * 32 + "\n") == "ab" * 32
    for bad in ("", "ab" * 31, "zz" * 32):
        with pytest.raises(GenesisError, match="64 hex digits"):
            parse_chain_id(bad)


# --------------------------------------------------------------------------- start-up decision

G1 = Genesis.one_authority(KEYS[0].node_id, KEYS[0].public_key, [DEMO_GOAL], now=T0)
G2 = Genesis.one_authority(KEYS[1].node_id, KEYS[1].public_key, [DEMO_GOAL], now=T0)


def decide(**kw: object) -> GenesisDecision:
    args: dict[str, object] = {
        "stored": None,
        "given": None,
        "given_path": None,
        "chain_id": None,
        "has_seeds": False,
        "leads_alone": False,
        "make_own": lambda: G2,
    }
    args.update(kw)
    return resolve_genesis(**args)  # type: ignore[arg-type]


def test_decision_branches() -> None:
    # Stored wins and is not re-pinned; a given file equal to it is fine.
    assert decide(stored=G1) == GenesisDecision(G1, False, "genesis pinned in the data dir")
    assert decide(stored=G1, given=G1, given_path="g").genesis == G1
    # A given file is pinned on first start.
    d = decide(given=G1, given_path="g.json")
    assert d.genesis == G1 and d.pin and "g.json" in d.how
    # A lone leader makes its own; a follower with seeds waits (no genesis yet).
    assert decide(leads_alone=True) == GenesisDecision(
        G2, True, "made a one-authority genesis naming this node"
    )
    assert decide(has_seeds=True).genesis is None
    waiting = decide(has_seeds=True, chain_id=G1.chain_id())
    assert waiting.genesis is None and G1.chain_id() in waiting.how
    # IAN_CHAIN_ID must match whatever is used.
    assert decide(stored=G1, chain_id=G1.chain_id()).genesis == G1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"stored": G1, "given": G2, "given_path": "g.json"}, "IAN_GENESIS g.json is chain"),
        ({"stored": G1, "chain_id": G2.chain_id()}, "IAN_CHAIN_ID is"),
        ({"leads_alone": True, "chain_id": G1.chain_id()}, "IAN_CHAIN_ID is"),
        ({"chain_id": G1.chain_id()}, "no seeds to fetch it from"),
    ],
)
def test_decision_refusals(kw: dict[str, object], message: str) -> None:
    with pytest.raises(GenesisError, match=message) as info:
        decide(**kw)
    assert "\n" not in info.value.message


def test_goal_specs_round_trip_through_genesis() -> None:
    extra = GoalSpec(id="EXTRA", evaluator="trivial")
    g = Genesis.one_authority(KEYS[0].node_id, KEYS[0].public_key, [DEMO_GOAL, extra], now=T0)
    assert Genesis.from_bytes(g.to_json().encode()).goals == [DEMO_GOAL, extra]
