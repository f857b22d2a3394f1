"""Wire messages: envelope errors, the validation table per type, converters, fuzzing."""

from __future__ import annotations

import contextlib
import gc
import json
import tracemalloc
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ian.chain.blocks import Block, BlockHeader, GoalRoots, InvalidBlockError
from ian.chain.contributions import make_contribution
from ian.consensus import CodecError, Vote, VoteResponse, codec
from ian.identity import Identity
from ian.p2p.errors import InvalidMessage, P2PError, ProtocolViolation
from ian.p2p.messages import (
    MAX_METADATA_WIRE_BYTES,
    MESSAGE_TYPES,
    REQUEST_TYPES,
    SMALL_BODY_BYTES,
    BlockAnnounce,
    BlockDoc,
    Blocks,
    Consensus,
    ContributionDoc,
    ContributionForward,
    ContributionResult,
    Envelope,
    Error,
    GenesisDoc,
    GetBlocks,
    GetGenesis,
    GetPeers,
    Goodbye,
    Hello,
    Peers,
    Ping,
    Pong,
    ResultDoc,
    Status,
    block_from_doc,
    block_to_doc,
    contribution_from_doc,
    contribution_to_doc,
    decode_block,
    decode_envelope,
    doc_to_data,
    encode_block,
    encode_envelope,
)

NODE = "ab" * 20
HASH = "cd" * 32


def raw(mtype: str, body: Any, *, mid: Any = 1, re: Any = None, v: Any = 1) -> bytes:
    return json.dumps({"v": v, "type": mtype, "id": mid, "re": re, "body": body}).encode()


def make_block() -> Block:
    c = make_contribution(
        goal_id="DEMO_TRADING_AGENT",
        version="1.0",
        parameters=b'{"strategy": "momentum", "lookback": 5}',
        metadata={"note": "héllo"},
        contributor_id="alice",
        seed=42,
    )
    header = BlockHeader(
        height=3,
        parent_hash=b"\x01" * 32,
        timestamp_ms=1_700_000_000_000,
        sequencer=NODE,
        sequencer_key=b"\x02" * 32,
        entries_hash=b"\x03" * 32,
        goals={"DEMO_TRADING_AGENT": GoalRoots(1, b"\x04" * 32, 1, b"\x05" * 32)},
    )
    return Block(header=header, hash=header.hash(), signature=b"\x06" * 64, entries=(c,))


ROOTS = {"leaderboard_root": HASH, "leaderboard_size": 1, "log_root": HASH, "log_size": 1}


def good_block() -> dict[str, Any]:
    """A block doc that decodes (its hashes and signature are not checked by decoding)."""
    return {
        "header": {
            "entries_hash": HASH,
            "goals": {"G": ROOTS},
            "height": 1,
            "parent_hash": HASH,
            "sequencer": NODE,
            "sequencer_key": HASH,
            "timestamp_ms": 0,
        },
        "hash": HASH,
        "signature": "ab" * 64,
        "entries": [
            {
                "goal_id": "G",
                "agent_pack": {"version": "1", "parameters": "QUJD", "metadata": {}},
                "contributor_id": "alice",
                "seed": 0,
            }
        ],
    }


def bad_block(
    *,
    header: dict[str, Any] | None = None,
    entry: dict[str, Any] | None = None,
    pack: dict[str, Any] | None = None,
    drop: str | None = None,
    **top: Any,
) -> dict[str, Any]:
    """:func:`good_block` with these fields changed (or ``drop`` left out)."""
    doc = good_block()
    doc["header"].update(header or {})
    doc["entries"][0].update(entry or {})
    doc["entries"][0]["agent_pack"].update(pack or {})
    doc.update(top)
    if drop is not None:
        del doc[drop]
    return doc


HELLO = {
    "network_id": "ian-test",
    "protocol_version": 1,
    "node_id": NODE,
    "height": 0,
    "head_hash": HASH,
    "listen_addr": "tcp://127.0.0.1:9000",
    "agent": "ian/test",
    "sequencer": False,
}

VALID: list[tuple[str, dict[str, Any]]] = [
    ("hello", HELLO),
    ("hello", {**HELLO, "listen_addr": None, "extra_future_field": 1}),
    ("ping", {"nonce": 0}),
    ("pong", {"nonce": 2**63 - 1}),
    ("get_peers", {}),
    ("get_genesis", {}),
    ("genesis", {"genesis": {"any": "object: checked by the genesis exchange"}}),
    ("hello", {**HELLO, "chain_id": HASH}),
    ("peers", {"peers": [{"node_id": NODE, "address": "tcp://[::1]:9000"}]}),
    ("status", {"height": 5, "head_hash": HASH}),
    ("get_blocks", {"from_height": 1, "max_blocks": 500}),
    ("blocks", {"blocks": []}),
    ("blocks", {"blocks": [good_block(), {**good_block(), "future_field": 1}]}),
    ("block_announce", {"block": good_block()}),
    ("contribution_result", {"result": {"accepted": True}}),
    ("error", {"code": "unsupported", "message": "no"}),
    ("goodbye", {"reason": "shutdown"}),
    ("consensus", {"msg": {"kind": "checked by ian.consensus.codec.decode"}}),
]

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("hello", {**HELLO, "node_id": "AB" * 20}, "upper-case node id"),
    ("hello", {**HELLO, "node_id": "ab" * 19}, "short node id"),
    ("hello", {**HELLO, "chain_id": "AB" * 32}, "upper-case chain id"),
    ("genesis", {"genesis": []}, "genesis not an object"),
    ("hello", {**HELLO, "height": -1}, "negative height"),
    ("hello", {**HELLO, "height": "1"}, "string height (strict)"),
    ("hello", {**HELLO, "sequencer": 1}, "int for bool (strict)"),
    ("hello", {**HELLO, "head_hash": "zz" * 32}, "non-hex hash"),
    ("hello", {**HELLO, "listen_addr": "http://x:1"}, "wrong scheme"),
    ("hello", {**HELLO, "listen_addr": "tcp://host"}, "no port"),
    ("hello", {k: v for k, v in HELLO.items() if k != "network_id"}, "missing network_id"),
    ("hello", {**HELLO, "agent": "x" * 129}, "agent too long"),
    ("ping", {}, "missing nonce"),
    ("ping", {"nonce": 2**63}, "nonce too large"),
    ("peers", {"peers": [{"node_id": NODE, "address": "tcp://a:1"}] * 51}, "too many peers"),
    ("peers", {"peers": [{"node_id": NODE}]}, "peer without address"),
    ("get_blocks", {"from_height": 0, "max_blocks": 0}, "zero max_blocks"),
    ("get_blocks", {"from_height": 0, "max_blocks": 501}, "too many blocks asked"),
    ("blocks", {"blocks": [{"header": {}}]}, "malformed block"),
    ("status", {"height": 1.5, "head_hash": HASH}, "float height"),
    ("contribution_forward", {"contribution": {"goal_id": "bad id!"}}, "bad contribution"),
    ("error", {"code": ""}, "empty error code"),
    ("goodbye", {"reason": "x" * 257}, "reason too long"),
    ("consensus", {}, "consensus without msg"),
    ("consensus", {"msg": []}, "consensus msg not an object"),
    *(
        ("blocks", {"blocks": [block_doc]}, why)
        for block_doc, why in (
            (bad_block(hash=HASH.upper()), "upper-case block hash"),
            (bad_block(hash=HASH + "\n"), "block hash with a line feed"),
            (bad_block(signature="ab" * 63), "short signature"),
            (bad_block(header={"height": 0}), "height 0"),
            (bad_block(header={"height": True}), "bool height (strict)"),
            (bad_block(header={"timestamp_ms": 1.0}), "float timestamp (strict)"),
            (bad_block(header={"sequencer": NODE + "\n"}), "sequencer with a line feed"),
            (bad_block(header={"goals": {"bad id!": ROOTS}}), "bad goal id in the header"),
            (bad_block(header={"goals": {"G": {**ROOTS, "log_size": -1}}}), "negative log size"),
            (bad_block(entry={"seed": "1"}), "string seed (strict)"),
            (bad_block(entry={"contributor_id": ""}), "empty contributor"),
            (bad_block(entry={"goal_id": "G\n"}), "entry goal id with a line feed"),
            (bad_block(pack={"version": "v" * 65}), "version too long"),
            (bad_block(drop="entries"), "block without entries"),
        )
    ),
    ("blocks", {"blocks": [good_block()] * 501}, "too many blocks"),
    ("block_announce", {"block": bad_block(drop="header")}, "announced block without header"),
]


@pytest.mark.parametrize(
    ("mtype", "body"), VALID, ids=[f"{t}-{i}" for i, (t, _) in enumerate(VALID)]
)
def test_valid_bodies_decode(mtype: str, body: dict[str, Any]) -> None:
    envelope = decode_envelope(raw(mtype, body, mid=9, re=4))
    assert envelope.type == mtype
    assert (envelope.id, envelope.re) == (9, 4)
    assert isinstance(envelope.message, MESSAGE_TYPES[mtype])
    # What was decoded is what is sent again.
    assert decode_envelope(encode_envelope(envelope)) == envelope


@pytest.mark.parametrize(("mtype", "body", "why"), INVALID, ids=[w for _, _, w in INVALID])
def test_invalid_bodies_are_invalid_messages(mtype: str, body: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_envelope(raw(mtype, body, mid=77))
    assert info.value.message_type == mtype
    assert info.value.message_id == 77
    assert info.value.score_event == "INVALID_MESSAGE"


ENVELOPE_VIOLATIONS: list[tuple[bytes, str]] = [
    (b"\xff\xfe", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (raw("ping", {"nonce": 1}, v=2), "future envelope version"),
    (raw("ping", {"nonce": 1}, v=True), "bool version"),
    (raw("teleport", {}), "unknown type"),
    (json.dumps({"v": 1, "id": 1, "body": {}}).encode(), "no type"),
    (raw("ping", {"nonce": 1}, mid=-1), "negative id"),
    (raw("ping", {"nonce": 1}, mid=True), "bool id"),
    (raw("ping", {"nonce": 1}, mid="1"), "string id"),
    (raw("ping", {"nonce": 1}, re=1.5), "float re"),
    (raw("ping", [1]), "list body"),
    (b"[" * 100_000 + b"]" * 100_000, "deep nesting"),
    (b'{"v": 1, "id": ' + b"9" * 5000 + b"}", "huge integer literal"),
]


@pytest.mark.parametrize(
    ("payload", "why"), ENVELOPE_VIOLATIONS, ids=[w for _, w in ENVELOPE_VIOLATIONS]
)
def test_envelope_problems_are_protocol_violations(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_envelope(payload)
    assert info.value.score_event == "PROTOCOL_VIOLATION"


def test_every_type_round_trips() -> None:
    block_doc = block_to_doc(make_block())
    samples = [
        msgspec.convert(HELLO, Hello),
        Ping(nonce=1),
        Pong(nonce=1),
        GetPeers(),
        msgspec.convert({"peers": [{"node_id": NODE, "address": "tcp://h:1"}]}, Peers),
        GetGenesis(),
        GenesisDoc(genesis=msgspec.Raw(b'{"network": "x"}')),
        Status(height=1, head_hash=HASH),
        BlockAnnounce(block=block_doc),
        GetBlocks(from_height=1, max_blocks=10),
        Blocks(blocks=[block_doc, block_doc]),
        ContributionForward(contribution=block_doc.entries[0]),
        ContributionResult(result=ResultDoc(accepted=False, reason="threshold")),
        Error(code="x", message="y"),
        Goodbye(reason="bye"),
        Consensus(msg=msgspec.Raw(b'{"kind": "vote_request"}')),
    ]
    assert {m.TYPE for m in samples} == set(MESSAGE_TYPES)
    for message in samples:
        envelope = Envelope(id=3, re=None, message=message)
        payload = encode_envelope(envelope)
        assert decode_envelope(payload) == envelope
        # Every field is written, defaults too, in declaration order.
        fields = [f.encode_name for f in msgspec.structs.fields(type(message))]
        assert list(json.loads(payload)["body"]) == fields


def test_addresses_are_canonicalised() -> None:
    hello = decode_envelope(raw("hello", {**HELLO, "listen_addr": "TCP://LocalHost:9000"}))
    assert hello.message.listen_addr == "tcp://localhost:9000"  # type: ignore[attr-defined]


def test_block_converters_round_trip() -> None:
    block = make_block()
    doc = block_to_doc(block)
    assert msgspec.to_builtins(doc.header) == block.header.to_doc()
    assert [doc_to_data(e) for e in doc.entries] == [c.to_wire() for c in block.entries]
    again = decode_block(encode_block(block))
    assert again == block_from_doc(msgspec.json.decode(msgspec.json.encode(doc), type=BlockDoc))
    assert again.header == block.header
    assert again.hash == block.hash and again.signature == block.signature
    assert [c.pack_hash for c in again.entries] == [c.pack_hash for c in block.entries]
    assert again.entries[0].metadata == {"note": "héllo"}


def test_block_docs_are_not_tracked_by_the_garbage_collector() -> None:
    """A catch-up batch decodes thousands of docs; untracked, they neither trigger nor fill the
    collector's passes (the containers decoding built are tracked as always)."""
    doc = msgspec.json.decode(msgspec.json.encode(block_to_doc(make_block())), type=BlockDoc)
    for item in (doc, doc.header, *doc.header.goals.values(), doc.entries[0]):
        assert not gc.is_tracked(item), type(item).__name__
    assert not gc.is_tracked(doc.entries[0].agent_pack)
    assert gc.is_tracked(doc.entries)


def test_wire_round_trip_keeps_the_pack_hash() -> None:
    c = make_contribution(
        goal_id="G",
        version="1",
        parameters=b"xyz",
        metadata={"k": [1, 2]},
        contributor_id="alice",
        seed=3,
    )
    back = contribution_from_doc(msgspec.json.decode(json.dumps(c.to_wire()), type=ContributionDoc))
    assert back == c and back.pack_hash == c.pack_hash


def test_contribution_converter_revalidates_like_the_api() -> None:
    c = make_block().entries[0]
    doc = contribution_to_doc(c)
    assert contribution_from_doc(doc).pack_hash == c.pack_hash
    bad = msgspec.structs.replace(
        doc, agent_pack=msgspec.structs.replace(doc.agent_pack, parameters="!!notb64")
    )
    with pytest.raises(InvalidMessage, match="base64"):
        contribution_from_doc(bad)


def test_a_consensus_payload_that_is_no_block_is_refused() -> None:
    for payload in (b"", b"[]", b"{", json.dumps(bad_block(hash="x")).encode()):
        with pytest.raises(InvalidMessage):
            decode_block(payload)
    with pytest.raises(InvalidMessage, match="base64"):
        decode_block(json.dumps(bad_block(pack={"parameters": "!!"})).encode())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_payloads_only_raise_p2p_errors(payload: bytes) -> None:
    with contextlib.suppress(P2PError):
        decode_envelope(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    mtype=st.sampled_from(sorted(MESSAGE_TYPES)),
    body=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
def test_random_bodies_only_raise_p2p_errors(mtype: str, body: dict[str, Any]) -> None:
    with contextlib.suppress(P2PError):
        decode_envelope(raw(mtype, body))


def test_consensus_message_travels_in_an_envelope() -> None:
    voter = Identity.generate()
    chain = "ef" * 32
    draft = Vote("vote", chain, 4, NODE, 3, 9, voter.node_id)
    vote = replace(draft, signature=voter.sign(draft.signed_bytes()))
    message = VoteResponse(pre_vote=False, term=4, vote=vote)
    envelope = Envelope(
        id=5, re=None, message=Consensus(msg=msgspec.Raw(codec.encode_json(message)))
    )
    received = decode_envelope(encode_envelope(envelope))
    assert received == envelope
    assert received.type == "consensus" and "consensus" not in REQUEST_TYPES
    assert isinstance(received.message, Consensus)
    assert codec.decode_json(received.message.msg) == message
    with pytest.raises(CodecError):
        codec.decode({**json.loads(bytes(received.message.msg)), "term": -4})


def nested(depth: int) -> dict[str, Any]:
    """Metadata ``depth`` levels deep (the object itself is one)."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


SURROGATE = "\ud800"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"pack": {"version": "1" + SURROGATE}}, "version"),
        ({"entry": {"contributor_id": "al" + SURROGATE}}, "contributor"),
        ({"pack": {"metadata": {SURROGATE: 1}}}, "metadata key"),
        ({"pack": {"metadata": {"k": SURROGATE}}}, "metadata value"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_lone_surrogate_is_the_peers_fault_on_every_path(
    changes: dict[str, Any], why: str
) -> None:
    """A lone surrogate (a JSON escape that is no Unicode text) is refused as the peer's
    fault: the frame that carries it (a block, a forward) is no JSON text, a consensus payload
    is no block; nothing that would stop the node is raised."""
    doc = bad_block(**changes)
    frame = {"v": 1, "type": "blocks", "id": 5, "re": None, "body": {"blocks": [doc]}}
    with pytest.raises(ProtocolViolation, match="not UTF-8 JSON"):
        decode_envelope(json.dumps(frame).encode())
    with pytest.raises(ProtocolViolation, match="not UTF-8 JSON"):
        decode_envelope(raw("contribution_forward", {"contribution": doc["entries"][0]}))
    with pytest.raises(InvalidMessage):
        decode_block(json.dumps(doc).encode())


def test_metadata_deeper_than_the_api_allows_is_an_invalid_message_on_every_path() -> None:
    doc = bad_block(pack={"metadata": nested(201)})
    payload = json.dumps({"v": 1, "type": "blocks", "id": 5, "re": None, "body": {"blocks": [doc]}})
    message = decode_envelope(payload.encode()).message
    assert isinstance(message, Blocks)
    with pytest.raises(InvalidMessage, match="invalid contribution"):
        block_from_doc(message.blocks[0])
    forward = raw("contribution_forward", {"contribution": doc["entries"][0]})
    contribution = decode_envelope(forward).message.contribution  # type: ignore[attr-defined]
    with pytest.raises(InvalidMessage, match="invalid contribution"):
        contribution_from_doc(contribution)
    with pytest.raises(InvalidMessage):
        decode_block(json.dumps(doc).encode())


def test_metadata_as_deep_as_the_api_allows_is_a_contribution() -> None:
    doc = bad_block(pack={"metadata": nested(200)})
    assert decode_block(json.dumps(doc).encode()).entries[0].metadata == nested(200)


def test_a_payload_too_deep_or_not_utf8_is_an_invalid_message() -> None:
    too_deep = b'{"metadata":' * 2000 + b"1" + b"}" * 2000
    for payload in (too_deep, b'{"hash": "\xff"}'):
        with pytest.raises(InvalidMessage):
            decode_block(payload)


# --------------------------------------------------------------------------- hostile frames

JUNK = b"[" + b"[]," * 350_000 + b"[]]"  # 1 MiB of empty lists: ~20 MiB as Python objects


def frame_with(body: bytes, *, mtype: bytes = b'"ping"', extra: bytes = b"") -> bytes:
    return b'{"v":1,"type":' + mtype + b',"id":7,"re":null,' + extra + b'"body":' + body + b"}"


def ping_with(field: bytes) -> bytes:
    return frame_with(b'{"nonce":1,"junk":' + field + b"}")


HOSTILE: list[tuple[bytes, type[P2PError] | None, str]] = [
    (frame_with(b'{"nonce":1}', extra=b'"junk":' + JUNK + b","), None, "unknown envelope field"),
    (ping_with(JUNK), InvalidMessage, "unknown field of a small body (over its limit)"),
    (frame_with(b'{"nonce":1}', mtype=JUNK), ProtocolViolation, "junk type"),
    (b'{"v":' + JUNK + b',"type":"ping","id":1,"body":{}}', ProtocolViolation, "junk version"),
    (
        frame_with(b'{"peers":[' + b"{}," * 350_000 + b"{}]}", mtype=b'"peers"'),
        InvalidMessage,
        "peers",
    ),
    (frame_with(b'{"nonce":' + JUNK + b"}"), InvalidMessage, "junk nonce"),
    (
        frame_with(b'{"blocks":[],"junk":' + JUNK + b"}", mtype=b'"blocks"'),
        None,
        "unknown field of a blocks body",
    ),
    (
        frame_with(b'{"msg":{"kind":"append_blocks","junk":' + JUNK + b"}}", mtype=b'"consensus"'),
        None,
        "consensus message (decoded later, by an authority's codec)",
    ),
    (
        frame_with(b'{"genesis":{"junk":' + JUNK + b"}}", mtype=b'"genesis"'),
        None,
        "genesis (decoded later, from a trusted source)",
    ),
    (
        frame_with(
            b'{"result":{"accepted":true,"junk":' + JUNK + b"}}", mtype=b'"contribution_result"'
        ),
        InvalidMessage,
        "result (a small body: over its limit)",
    ),
    (
        frame_with(
            json.dumps({"blocks": [bad_block(pack={"metadata": {"k": []}})]})
            .encode()
            .replace(b'{"k": []}', b'{"k":' + JUNK + b"}"),
            mtype=b'"blocks"',
        ),
        None,
        "metadata past its byte limit (refused when converted, see below)",
    ),
]


@pytest.mark.parametrize(("payload", "error", "why"), HOSTILE, ids=[w for _, _, w in HOSTILE])
def test_a_hostile_frame_builds_no_objects_for_its_junk(
    payload: bytes, error: type[P2PError] | None, why: str
) -> None:
    """A megabyte of ``[],[],…`` wherever a peer can put it: decoding the frame never turns it
    into Python objects (untyped, it takes ~20 MiB). Skipped as text, or refused at its first
    value; a consensus message or genesis stays text for its reader."""
    assert len(payload) > len(JUNK)
    tracemalloc.start()
    try:
        with pytest.raises(error) if error is not None else contextlib.nullcontext():
            decode_envelope(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{why}: {peak} bytes allocated"


def test_metadata_text_is_bounded_and_decoded_only_when_converted() -> None:
    limit = MAX_METADATA_WIRE_BYTES
    pad = limit - len(b'{"k": ""}')  # json.dumps writes a space
    at_limit = {"k": "x" * pad}
    doc = bad_block(pack={"metadata": at_limit})
    message = decode_envelope(raw("blocks", {"blocks": [doc]})).message
    assert isinstance(message, Blocks)
    assert len(message.blocks[0].entries[0].agent_pack.metadata) == limit
    # Text within the wire limit is still checked as the API checks it (64 KiB canonical).
    with pytest.raises(InvalidMessage, match="bytes as JSON"):
        block_from_doc(message.blocks[0])
    for metadata, error in (
        ({"k": "x" * (pad + 1)}, r"agent_pack.metadata is \d+ bytes of JSON"),
        ([], "Expected `object`, got `array`"),
    ):
        over = decode_envelope(raw("blocks", {"blocks": [bad_block(pack={"metadata": metadata})]}))
        assert isinstance(over.message, Blocks)
        with pytest.raises(InvalidMessage, match=error):
            block_from_doc(over.message.blocks[0])


def test_a_block_check_runs_before_the_entries_are_decoded() -> None:
    doc = decode_envelope(raw("block_announce", {"block": bad_block(pack={"parameters": "!!"})}))
    announced = doc.message
    assert isinstance(announced, BlockAnnounce)
    seen: list[Block] = []
    with pytest.raises(InvalidMessage, match="base64"):  # the entry: decoded after the check
        block_from_doc(announced.block, seen.append)
    assert len(seen) == 1 and seen[0].entries == () and seen[0].height == 1

    def refuse(block: Block) -> None:
        raise InvalidBlockError("not signed by the sequencer")

    with pytest.raises(InvalidBlockError):  # the check's error, not the entry's
        block_from_doc(announced.block, refuse)


@pytest.mark.parametrize("mtype", ["status", "peers", "error", "contribution_result"])
def test_a_small_body_is_refused_past_its_limit_before_it_is_decoded(mtype: str) -> None:
    bodies = {
        "status": b'"height":1,"head_hash":"%s"' % HASH.encode(),
        "peers": b'"peers":[]',
        "error": b'"code":"x"',
        "contribution_result": b'"result":{"accepted":false}',
    }
    head = b"{" + bodies[mtype] + b',"pad":"'

    def padded(size: int) -> bytes:
        return frame_with(
            head + b"x" * (size - len(head) - 2) + b'"}', mtype=b'"%s"' % mtype.encode()
        )

    message = decode_envelope(padded(SMALL_BODY_BYTES)).message
    assert isinstance(message, MESSAGE_TYPES[mtype])
    with pytest.raises(InvalidMessage, match=f"the limit is {SMALL_BODY_BYTES}") as info:
        decode_envelope(padded(SMALL_BODY_BYTES + 1))
    assert info.value.message_type == mtype and info.value.message_id == 7
