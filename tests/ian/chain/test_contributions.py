from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ian.chain.contributions import (
    check_metadata,
    contribution_hash,
    decode_parameters,
    make_contribution,
)
from ian.chain.hashing import canonical_json, canonical_json_text, pack_hash
from ian.errors import InputError, PayloadTooLargeError

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    contributor=st.text(min_size=1, max_size=20),
    goal_id=st.sampled_from(["G_1", 'quo"te', "back\\slash", "tab\t", "é", "\x7f", "a b"])
    | st.text(min_size=1, max_size=12),
    version=st.sampled_from(["v1", "1.0", 'v"2', "v\n", "ü"]) | st.text(min_size=1, max_size=12),
    seed=st.integers(0, 2**63 - 1),
    score=finite,
    metrics=st.dictionaries(st.sampled_from(["reward", "risk", "complexity"]), finite),
    metadata=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)),
)
def test_fast_encodings_equal_the_canonical_documents(
    contributor: str,
    goal_id: str,
    version: str,
    seed: int,
    score: float,
    metrics: dict,
    metadata: dict,
) -> None:
    c = make_contribution(
        goal_id=goal_id,
        version=version,
        parameters=b"\x00params",
        metadata=metadata,
        contributor_id=contributor,
        seed=seed,
    )
    assert c.pack_hash == pack_hash(version, b"\x00params", metadata)
    pack_doc = {
        "metadata": metadata,
        "parameters": base64.b64encode(b"\x00params").decode(),
        "version": version,
    }
    assert c.pack_hash == hashlib.sha256(canonical_json(pack_doc)).digest()
    assert c.metadata_json == canonical_json(metadata).decode()
    doc = {
        "contributor_id": contributor,
        "goal_id": goal_id,
        "metrics": metrics,
        "pack_hash": c.pack_hash.hex(),
        "score": score,
        "seed": seed,
    }
    expected = hashlib.sha256(canonical_json(doc)).digest()
    assert contribution_hash(c, score, canonical_json_text(metrics)) == expected


@pytest.mark.parametrize(
    "text, error",
    [("", InputError), ("***", InputError), ("QQ", InputError)],
)
def test_bad_parameters(text: str, error: type) -> None:
    with pytest.raises(error) as info:
        decode_parameters(text)
    assert info.value.field == "agent_pack.parameters"


def test_parameter_size_limit() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode_parameters(base64.b64encode(b"x" * 101).decode(), max_bytes=100)
    assert decode_parameters(base64.b64encode(b"x" * 100).decode(), max_bytes=100) == b"x" * 100


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"version": ""}, "agent_pack.version"),
        ({"version": "v" * 65}, "agent_pack.version"),
        ({"contributor_id": ""}, "contributor_id"),
        ({"contributor_id": "c" * 129}, "contributor_id"),
        ({"seed": -1}, "seed"),
        ({"metadata": {str(i): i for i in range(101)}}, "agent_pack.metadata"),
        ({"metadata": {"big": "x" * 70_000}}, "agent_pack.metadata"),
        ({"metadata": {"nan": float("nan")}}, "agent_pack.metadata"),
    ],
)
def test_limits_name_the_field(kwargs: dict, field: str) -> None:
    args = {
        "goal_id": "G",
        "version": "1",
        "parameters": b"p",
        "metadata": {},
        "contributor_id": "c",
        "seed": 0,
    } | kwargs
    with pytest.raises(InputError) as info:
        make_contribution(**args)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"contributor_id": "al\udfff"}, "contributor_id"),
        ({"version": "1\ud800"}, "agent_pack.version"),
        ({"metadata": {"\ud800": 1}}, "agent_pack.metadata"),
        ({"metadata": {"k": ["\udc00"]}}, "agent_pack.metadata"),
    ],
)
def test_lone_surrogates_are_refused(kwargs: dict, field: str) -> None:
    """Not Unicode text: it cannot be encoded, so it could be neither hashed nor stored."""
    fields = {"goal_id": "G", "version": "1", "parameters": b"x", "metadata": {}}
    fields |= {"contributor_id": "alice", "seed": 0, **kwargs}
    with pytest.raises(InputError) as info:
        make_contribution(**fields)
    assert info.value.field == field


_JSON_SCALARS = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=4)


@given(
    st.dictionaries(
        st.text(max_size=4),
        st.integers() | st.text(max_size=6) | _JSON_SCALARS | st.lists(_JSON_SCALARS, max_size=2),
        max_size=6,
    )
)
def test_metadata_text_is_the_encoder_s_for_every_shape(metadata: dict) -> None:
    """Flat objects of strings and integers take the fast path; booleans, floats, None and
    nested values the encoder's: the text (what the pack hash covers) is the same either way."""
    assert check_metadata(metadata) == canonical_json_text(metadata)


@pytest.mark.parametrize(
    "metadata",
    [
        {"b": "x", "a": 1, "c": '\u00e9"\\\n\x7f', "\u20ac": -(2**70)},  # fast path
        {"a": True, "b": 1},  # a bool is not an int here
        {"a": 1.0, "b": None},
        {"a": {"b": "c"}},
    ],
)
def test_metadata_text_examples(metadata: dict) -> None:
    assert check_metadata(metadata) == canonical_json_text(metadata)


def test_metadata_with_keys_that_do_not_sort_is_refused_as_not_plain_json() -> None:
    with pytest.raises(InputError, match="not plain JSON") as info:
        check_metadata({"a": "x", 1: "y"})  # type: ignore[dict-item]
    assert info.value.field == "agent_pack.metadata"


def test_metadata_nesting_is_bounded_without_recursion() -> None:
    def nested(depth: int) -> dict:
        doc: dict = {}
        for _ in range(depth - 1):
            doc = {"a": [doc]} if depth % 2 else {"a": doc}
        return doc

    fields = {"goal_id": "G", "version": "1", "parameters": b"x", "contributor_id": "a", "seed": 0}
    assert make_contribution(**fields, metadata=nested(200)).metadata == nested(200)
    for depth in (201, 100_000):  # far past any recursion limit: refused all the same
        with pytest.raises(InputError, match="nested more than 200 levels"):
            make_contribution(**fields, metadata=nested(depth))
