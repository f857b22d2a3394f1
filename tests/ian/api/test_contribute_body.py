"""The contribute body decoder agrees with the ContributeRequest model on every input.

``parse_contribute_body`` decodes the usual body with msgspec and anything else with the pydantic
model; whichever path runs, it must accept exactly what the model accepts, with the same values,
and refuse the rest with the model's error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ian.api import models as m
from ian.api.contribute_body import ContributeFields, parse_contribute_body
from ian.errors import InputError


def model_fields(body: bytes) -> ContributeFields | None:
    """What the pydantic model makes of ``body``, or None when it refuses it."""
    try:
        req = m.ContributeRequest.model_validate_json(body)
    except ValueError:
        return None
    pack = req.agent_pack
    return ContributeFields(
        req.goal_id, pack.version, pack.parameters, pack.metadata, req.contributor_id, req.seed
    )


def assert_agree(body: bytes) -> None:
    expected = model_fields(body)
    try:
        got: ContributeFields | None = parse_contribute_body(body)
    except InputError:
        got = None
    assert got == expected, body
    if got is not None:  # same types too: True == 1 and 1.0 == 1 would hide a coercion
        assert type(got.seed) is int and type(got.goal_id) is str, body


GOOD = {
    "goal_id": "G",
    "agent_pack": {"version": "1.0", "parameters": "AAAA"},
    "contributor_id": "c",
    "seed": 5,
}


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(GOOD).encode(),
        json.dumps({**GOOD, "seed": 5.0}).encode(),
        json.dumps({**GOOD, "seed": True}).encode(),
        json.dumps({**GOOD, "seed": None}).encode(),
        json.dumps({**GOOD, "seed": "5"}).encode(),
        json.dumps({**GOOD, "seed": 10**30}).encode(),
        json.dumps({**GOOD, "seed": -1}).encode(),
        json.dumps({**GOOD, "extra": 1}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "seed"}).encode(),
        json.dumps({**GOOD, "agent_pack": {**GOOD["agent_pack"], "metadata": {}}}).encode(),
        json.dumps({**GOOD, "agent_pack": {**GOOD["agent_pack"], "metadata": None}}).encode(),
        json.dumps({**GOOD, "agent_pack": {**GOOD["agent_pack"], "metadata": [1]}}).encode(),
        json.dumps(
            {**GOOD, "agent_pack": {**GOOD["agent_pack"], "metadata": {"k": 1e300}}}
        ).encode(),
        json.dumps({**GOOD, "agent_pack": {**GOOD["agent_pack"], "x": 1}}).encode(),
        b'{"goal_id":"G","goal_id":"H","agent_pack":{"version":"1","parameters":"AAAA"},'
        b'"contributor_id":"c"}',
        b'{"goal_id":"G\\ud800","agent_pack":{"version":"1","parameters":"AAAA"},'
        b'"contributor_id":"c"}',
        b'{"goal_id":"G\\u00e9\\u0000","agent_pack":{"version":"1","parameters":"AAAA"},'
        b'"contributor_id":"\xc3\xa9"}',
        b'{"goal_id":"G","agent_pack":{"version":"1","parameters":"AAAA"},"contributor_id":"c"} x',
        b'{"goal_id":"G","agent_pack":{"version":"1","parameters":"AAAA"},"contributor_id":"c",'
        b'"seed":01}',
        b'{"goal_id":"G","agent_pack":{"version":"1","parameters":"AAAA"},"contributor_id":"c",'
        b'"seed":-0}',
        b"\xff\xfe",
        b"",
        b"[]",
        b"null",
        b"{}",
    ],
)
def test_edge_cases_agree(raw: bytes) -> None:
    assert_agree(raw)


def test_fast_path_refusal_names_the_field_like_the_model() -> None:
    with pytest.raises(InputError) as info:
        parse_contribute_body(json.dumps({**GOOD, "seed": True}).encode())
    assert info.value.field == "seed"
    with pytest.raises(InputError) as info:
        parse_contribute_body(json.dumps({**GOOD, "surprise": 1}).encode())
    assert info.value.field == "surprise"
    assert info.value.message == "surprise is not a known field"


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed bodies with some fields missing, mistyped or extra."""

    def field(value: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(value, json_values))

    pack: dict[str, Any] = {}
    for key, value in (("version", st.text(max_size=6)), ("parameters", st.text(max_size=6))):
        if draw(st.integers(0, 9)):
            pack[key] = field(value)
    if draw(st.booleans()):
        pack["metadata"] = draw(st.one_of(st.just({}), json_values))
    if not draw(st.integers(0, 19)):
        pack[draw(st.text(max_size=4))] = draw(json_values)
    doc: dict[str, Any] = {}
    for key, value in (
        ("goal_id", st.text(max_size=6)),
        ("contributor_id", st.text(max_size=6)),
        ("seed", st.integers(min_value=-(2**65), max_value=2**65)),
    ):
        if draw(st.integers(0, 9)):
            doc[key] = field(value)
    if draw(st.integers(0, 9)):
        doc["agent_pack"] = pack if draw(st.integers(0, 9)) else draw(json_values)
    if not draw(st.integers(0, 19)):
        doc[draw(st.text(max_size=4))] = draw(json_values)
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


@settings(max_examples=400, deadline=None)
@given(bodies())
def test_generated_bodies_agree(body: bytes) -> None:
    assert_agree(body)
