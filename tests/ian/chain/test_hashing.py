from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ian.chain.hashing import (
    canonical_json,
    canonical_json_str,
    canonical_json_text,
    pack_hash,
    sha256,
)


def test_canonical_json_sorts_keys_and_is_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, 2, {"d": None, "c": True}]}) == (
        b'{"a":[1,2,{"c":true,"d":null}],"b":1}'
    )


def test_canonical_json_key_order_does_not_matter() -> None:
    assert canonical_json({"x": 1, "y": 2}) == canonical_json({"y": 2, "x": 1})


def test_canonical_json_writes_non_ascii_as_utf8() -> None:
    assert canonical_json({"k": "é€"}) == '{"k":"é€"}'.encode()


def test_canonical_json_floats_use_shortest_repr() -> None:
    assert canonical_json([0.1, 1.0, 1e16, -0.0]) == b"[0.1,1.0,1e+16,-0.0]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": bad})


def test_sha256_known_answer() -> None:
    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_pack_hash_known_answer() -> None:
    # Written out by hand from the documented encoding: b"\x00\x01\xff" is "AAH/" in base64.
    document = b'{"metadata":{"a":[1,"x"],"z":"\xc3\xa9"},"parameters":"AAH/","version":"1.0"}'
    expected = hashlib.sha256(document).digest()
    assert pack_hash("1.0", b"\x00\x01\xff", {"z": "é", "a": [1, "x"]}) == expected


def test_pack_hash_uses_standard_base64_alphabet() -> None:
    # 0xfb 0xff encodes to "+/8=" in the standard alphabet ("-_8=" in the URL-safe one).
    document = b'{"metadata":{},"parameters":"+/8=","version":"v"}'
    assert pack_hash("v", b"\xfb\xff", {}) == hashlib.sha256(document).digest()


@given(
    version=st.text(max_size=8),
    parameters=st.binary(min_size=1, max_size=32),
    metadata=st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4)),
)
def test_pack_hash_depends_on_every_field(
    version: str, parameters: bytes, metadata: dict[str, object]
) -> None:
    h = pack_hash(version, parameters, metadata)
    assert len(h) == 32
    assert pack_hash(version + "x", parameters, metadata) != h
    assert pack_hash(version, parameters + b"\x00", metadata) != h
    assert pack_hash(version, parameters, {**metadata, "extra-key!": 0}) != h


ODD_STRINGS = [
    "",
    "plain",
    "with space",
    'quo"te',
    "back\\slash",
    "/slash",
    "\x00",
    "\x1f",
    "\t\n\r\b\f",
    "\x7f",
    "é",
    "日本",
    "\U0001f600",
    "\u2028",
    "\ud800",
    "~!@#$%^&*()_+{}|:<>?",
]


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_canonical_json_str_equals_the_encoder(text: str) -> None:
    assert canonical_json_str(text) == canonical_json_text(text)


@given(st.text())
def test_canonical_json_str_equals_the_encoder_on_any_text(text: str) -> None:
    assert canonical_json_str(text) == canonical_json_text(text)


def test_canonical_json_str_of_a_non_string_is_the_encoder_s() -> None:
    assert canonical_json_str(["a"]) == canonical_json_text(["a"])  # type: ignore[arg-type]
