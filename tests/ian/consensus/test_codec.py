"""The consensus wire codec: exact round trips with real signatures, malformed documents only
ever raise CodecError, and seeded random mutations of valid documents never escape it. The JSON
decoder agrees with the document decoder, and skips a hostile peer's unknown fields unbuilt."""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import random
import re
import string
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import pytest

from ian.chain.hashing import canonical_json, sha256
from ian.consensus import (
    Ack,
    AppendBlocks,
    AppendResponse,
    AuthorityChange,
    Block,
    BlockKind,
    CertifiedBlocks,
    CodecError,
    CommitCertificate,
    ConsensusError,
    ElectionCertificate,
    Message,
    Vote,
    VoteRequest,
    VoteResponse,
    genesis_hash,
)
from ian.consensus.codec import (
    MAX_BLOCKS,
    MAX_SIGNATURES,
    block_from_doc,
    block_from_json,
    block_to_doc,
    commit_certificate_from_doc,
    commit_certificate_from_json,
    commit_certificate_to_doc,
    decode,
    decode_json,
    election_certificate_from_doc,
    encode,
    encode_json,
)
from ian.identity import Identity

CHAIN = sha256(b"codec-test-chain").hex()
IDS = [Identity.generate() for _ in range(3)]
LEADER = IDS[0]


def _vote(voter: Identity, *, term: int = 2, kind: Literal["vote", "pre_vote"] = "vote") -> Vote:
    draft = Vote(kind, CHAIN, term, LEADER.node_id, 1, 1, voter.node_id)
    return replace(draft, signature=voter.sign(draft.signed_bytes()))


def _election(term: int = 2) -> ElectionCertificate:
    return ElectionCertificate(
        CHAIN, term, LEADER.node_id, 1, 1, tuple(_vote(i, term=term) for i in IDS)
    )


def _ack(signer: Identity, block: Block) -> Ack:
    draft = Ack(CHAIN, block.term, block.height, block.hash, signer.node_id)
    return replace(draft, signature=signer.sign(draft.signed_bytes()))


def _commit(block: Block) -> CommitCertificate:
    return CommitCertificate(
        CHAIN, block.term, block.height, block.hash, tuple(_ack(i, block) for i in IDS)
    )


ELECTION = _election()
B1 = Block.build(
    CHAIN, height=1, term=1, parent_hash=genesis_hash(CHAIN), kind=BlockKind.DATA, payload=b"x"
)
B2 = Block.build(
    CHAIN,
    height=2,
    term=2,
    parent_hash=B1.hash,
    kind=BlockKind.LEADER_START,
    election=ELECTION,
)
NEWCOMER = Identity.generate()
B3 = Block.build(
    CHAIN,
    height=3,
    term=2,
    parent_hash=B2.hash,
    kind=BlockKind.AUTHORITY_CHANGE,
    change=AuthorityChange("add", NEWCOMER.node_id, NEWCOMER.public_key),
)
B4 = Block.build(
    CHAIN,
    height=4,
    term=2,
    parent_hash=B3.hash,
    kind=BlockKind.AUTHORITY_CHANGE,
    change=AuthorityChange("remove", IDS[2].node_id),
)
BIG = Block.build(
    CHAIN,
    height=5,
    term=2,
    parent_hash=B4.hash,
    kind=BlockKind.DATA,
    payload=random.Random(7).randbytes(1 << 20),
)
BLOCKS = (B1, B2, B3, B4)

MESSAGES: list[Message] = [
    VoteRequest(False, CHAIN, 2, LEADER.node_id, 1, 1),
    VoteRequest(True, CHAIN, 3, LEADER.node_id, 0, 0),
    VoteResponse(False, 2, _vote(IDS[1])),
    VoteResponse(True, 3, _vote(IDS[1], term=3, kind="pre_vote")),
    VoteResponse(False, 2, None),
    AppendBlocks(2, LEADER.node_id, 0, genesis_hash(CHAIN), BLOCKS, ELECTION, _commit(B1)),
    AppendBlocks(2, LEADER.node_id, 4, B4.hash, (), ELECTION, None),
    AppendBlocks(2, LEADER.node_id, 4, B4.hash, (BIG,), ELECTION, _commit(B4)),
    AppendResponse(2, True, 4, tuple(_ack(i, B4) for i in IDS)),
    AppendResponse(2, False, 1, (), learner=True),
    CertifiedBlocks(2, LEADER.node_id, BLOCKS, _commit(B4), ELECTION),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_is_exact(message: Message) -> None:
    doc = encode(message)
    assert decode(doc) == message
    assert decode(json.loads(json.dumps(doc))) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_json_round_trip_is_exact(message: Message) -> None:
    data = encode_json(message)
    assert data == json.dumps(encode(message), separators=(",", ":")).encode()  # compact
    assert decode_json(data) == message
    assert decode_json(bytearray(data)) == message
    assert decode_json(memoryview(data)) == message
    assert decode(json.loads(data)) == message


def test_every_message_kind_is_covered() -> None:
    assert {encode(m)["kind"] for m in MESSAGES} == {
        "vote_request",
        "vote_response",
        "append_blocks",
        "append_response",
        "certified_blocks",
    }


def test_blocks_keep_their_hash_payload_and_certificates() -> None:
    for block in (*BLOCKS, BIG):
        again = block_from_doc(json.loads(json.dumps(block_to_doc(block))))
        assert again == block
        assert again.computed_hash(CHAIN) == block.hash
    assert block_from_doc(block_to_doc(B2)).election == ELECTION
    assert len(block_to_doc(BIG)["payload"]) == 4 * ((1 << 20) + 2) // 3  # base64, padded
    cert = _commit(B4)
    assert commit_certificate_from_doc(commit_certificate_to_doc(cert)) == cert


def _generic_hash(block: Block) -> bytes:
    """The block hash as the consensus module docstring defines it, with the generic encoder."""
    return sha256(
        canonical_json(
            {
                "chain_id": CHAIN,
                "height": block.height,
                "term": block.term,
                "parent": block.parent_hash.hex(),
                "kind": block.kind.value,
                "payload": block.payload.hex(),
                "change": None if block.change is None else block.change.document(),
                "election": None if block.election is None else block.election.document(),
            }
        )
    )


def test_block_hash_is_the_canonical_json_of_the_whole_document() -> None:
    kinds = {block.kind for block in (*BLOCKS, BIG)}
    assert kinds == set(BlockKind)  # every kind, with and without a change or an election
    assert any(b.change is not None for b in BLOCKS) and any(b.election for b in BLOCKS)
    for block in (*BLOCKS, BIG, replace(BIG, payload=b""), replace(BIG, term=2**62)):
        assert block.computed_hash(CHAIN) == _generic_hash(block)
        assert block.computed_hash(CHAIN + "0") != block.computed_hash(CHAIN)


def test_codec_error_is_a_consensus_error() -> None:
    assert issubclass(CodecError, ConsensusError)
    assert CodecError.code == "consensus_codec"


# --------------------------------------------------------------------------- malformed docs

APPEND = encode(MESSAGES[5])  # append_blocks with blocks, election and commit
RESPONSE = encode(MESSAGES[8])  # append_response with acks
VOTE_REQUEST = encode(MESSAGES[0])
VOTE_RESPONSE = encode(MESSAGES[2])


def _edit(doc: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    change(out)
    return out


def _set(path: str, value: object) -> Callable[[dict[str, Any]], object]:
    """A change setting ``path`` ("a.0.b": keys and list indices) to ``value``."""

    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], object]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return change


BAD: list[tuple[object, str, str]] = [
    ([], "not an object", "message: Expected `object`, got `array`"),
    ("vote_request", "a string", "Expected `object`, got `str`"),
    ({"term": 1}, "no kind", "missing required field `kind`"),
    ({**VOTE_REQUEST, "kind": "vote_requests"}, "unknown kind", "'vote_requests' - at `$.kind`"),
    ({**VOTE_REQUEST, "kind": 7}, "kind not a string", "`$.kind`"),
    (_edit(VOTE_REQUEST, _drop("term")), "missing term", "missing required field `term`"),
    (_edit(VOTE_REQUEST, _set("term", -1)), "negative term", ">= 0 - at `$.term`"),
    (
        _edit(VOTE_REQUEST, _set("term", 2**63)),
        "term too large",
        "9223372036854775807 - at `$.term`",
    ),
    (_edit(VOTE_REQUEST, _set("term", "2")), "string term", "`int`, got `str` - at `$.term`"),
    (_edit(VOTE_REQUEST, _set("term", 2.0)), "float term", "got `float` - at `$.term`"),
    (_edit(VOTE_REQUEST, _set("term", True)), "bool term", "got `bool` - at `$.term`"),
    (
        _edit(VOTE_REQUEST, _set("pre_vote", 0)),
        "int for bool",
        "`bool`, got `int` - at `$.pre_vote`",
    ),
    (_edit(VOTE_REQUEST, _set("chain_id", "ab")), "short chain id", "`$.chain_id`"),
    (_edit(VOTE_REQUEST, _set("candidate", "AB" * 20)), "upper-case node id", "`$.candidate`"),
    (_edit(VOTE_REQUEST, _set("candidate", "ab" * 19)), "short node id", "`$.candidate`"),
    (_edit(VOTE_REQUEST, _set("candidate", None)), "null node id", "`null` - at `$.candidate`"),
    (_edit(VOTE_RESPONSE, _set("vote.kind", "ballot")), "bad vote kind", "`$.vote.kind`"),
    (_edit(VOTE_RESPONSE, _set("vote.signature", "00" * 63)), "short sig", "`$.vote.signature`"),
    (_edit(VOTE_RESPONSE, _set("vote.signature", "zz" * 64)), "non-hex sig", "`$.vote.signature`"),
    (_edit(VOTE_RESPONSE, _set("vote", [])), "vote not an object", "`array` - at `$.vote`"),
    (_edit(APPEND, _set("prev_hash", "00" * 31)), "short hash", "`$.prev_hash`"),
    (_edit(APPEND, _set("prev_hash", "00" * 33)), "long hash", "`$.prev_hash`"),
    (_edit(APPEND, _set("blocks.0.kind", "genesis")), "unknown block kind", "`$.blocks[0].kind`"),
    (
        _edit(APPEND, _set("blocks.0.payload", "!!!")),
        "bad base64",
        "not standard base64 - at `$.blocks[0].payload`",
    ),
    (
        _edit(APPEND, _set("blocks.0.payload", "eA")),
        "unpadded base64",
        "not standard base64 - at `$.blocks[0].payload`",
    ),
    (
        _edit(APPEND, _set("blocks.0.payload", "eB==")),
        "non-canonical base64",
        "not canonical base64 - at `$.blocks[0].payload`",
    ),
    (
        _edit(APPEND, _set("blocks.0.payload", "é===")),
        "non-ASCII base64",
        "not standard base64 - at `$.blocks[0].payload`",
    ),
    (_edit(APPEND, _set("blocks.0.payload", b"x")), "bytes payload", "`$.blocks[0].payload`"),
    (_edit(APPEND, _set("blocks.2.change.op", "replace")), "bad op", "`$.blocks[2].change.op`"),
    (
        _edit(APPEND, _set("blocks.2.change.public_key", "")),
        "add without key",
        "`$.blocks[2].change.public_key`",
    ),
    (
        _edit(APPEND, _set("blocks.2.change.public_key", "00" * 31)),
        "short key",
        "`$.blocks[2].change.public_key`",
    ),
    (
        _edit(APPEND, _set("blocks", {})),
        "blocks not a list",
        "`array`, got `object` - at `$.blocks`",
    ),
    (
        _edit(APPEND, _set("blocks", [APPEND["blocks"][0]] * 513)),
        "too many blocks",
        "length <= 512 - at `$.blocks`",
    ),
    (
        _edit(APPEND, _set("election.votes", [APPEND["election"]["votes"][0]] * 65)),
        "too many votes",
        "length <= 64 - at `$.election.votes`",
    ),
    (_edit(APPEND, _set("election", None)), "null election", "`null` - at `$.election`"),
    (
        _edit(APPEND, _set("commit.acks.0.block_hash", 5)),
        "int hash",
        "`$.commit.acks[0].block_hash`",
    ),
    (
        _edit(APPEND, _drop("commit.acks.0.signer")),
        "ack without signer",
        "field `signer` - at `$.commit.acks[0]`",
    ),
    (
        _edit(RESPONSE, _set("acks", [RESPONSE["acks"][0]] * 65)),
        "too many acks",
        "length <= 64 - at `$.acks`",
    ),
    (_edit(RESPONSE, _set("success", "yes")), "string bool", "`$.success`"),
    (_edit(RESPONSE, _drop("learner")), "missing learner", "missing required field `learner`"),
]


@pytest.mark.parametrize(("doc", "why", "match"), BAD, ids=[w for _, w, _ in BAD])
def test_malformed_documents_raise_codec_error(doc: object, why: str, match: str) -> None:
    with pytest.raises(CodecError, match=re.escape(match)):
        decode(doc)


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


JSON_BAD = [case for case in BAD if _is_json(case[0])]


@pytest.mark.parametrize(("doc", "why", "match"), JSON_BAD, ids=[w for _, w, _ in JSON_BAD])
def test_malformed_json_raises_codec_error(doc: object, why: str, match: str) -> None:
    with pytest.raises(CodecError, match=re.escape(match)):
        decode_json(json.dumps(doc).encode())


KEY = APPEND["blocks"][2]["change"]["public_key"]

STRICT: list[tuple[dict[str, Any], str, str]] = [
    (_edit(VOTE_REQUEST, _set("last_height", False)), "false for int", "`$.last_height`"),
    (_edit(APPEND, _set("blocks.1.height", True)), "true for height", "`$.blocks[1].height`"),
    (_edit(RESPONSE, _set("acks.2.term", True)), "true for ack term", "`$.acks[2].term`"),
    (_edit(VOTE_REQUEST, _set("term", 1.0)), "1.0 for int", "got `float` - at `$.term`"),
    (_edit(APPEND, _set("commit.height", 1.0)), "1.0 for height", "`$.commit.height`"),
    (_edit(VOTE_REQUEST, _set("pre_vote", 1)), "1 for bool", "`$.pre_vote`"),
    (_edit(VOTE_REQUEST, _set("chain_id", CHAIN.upper())), "upper-case chain", "`$.chain_id`"),
    (
        _edit(APPEND, _set("blocks.0.hash", APPEND["blocks"][0]["hash"].upper())),
        "upper-case block hash",
        "`$.blocks[0].hash`",
    ),
    (
        _edit(RESPONSE, _set("acks.0.signature", RESPONSE["acks"][0]["signature"].upper())),
        "upper-case signature",
        "`$.acks[0].signature`",
    ),
    (_edit(APPEND, _set("blocks.2.change.public_key", KEY.upper())), "upper-case key", "key`"),
    (
        _edit(VOTE_REQUEST, _set("candidate", LEADER.node_id + "\n")),
        "node id and newline",
        "`$.candidate`",
    ),
    (_edit(APPEND, _set("prev_hash", APPEND["prev_hash"] + "\n")), "hash and newline", "`$.prev"),
    (
        _edit(APPEND, _set("blocks.2.change.public_key", KEY + "\n")),
        "key and newline",
        "`$.blocks[2].change.public_key`",
    ),
    (
        _edit(APPEND, _set("blocks.3.change.public_key", "\n")),
        "removal with a newline for no key",
        "`$.blocks[3].change.public_key`",
    ),
    (_edit(APPEND, _set("blocks.0.payload", "eA==\n")), "base64 and newline", "payload`"),
    (
        _edit(APPEND, _set("blocks", [APPEND["blocks"][0]] * (MAX_BLOCKS + 1))),
        "too many blocks",
        "length <= 512 - at `$.blocks`",
    ),
    (
        {**encode(MESSAGES[10]), "blocks": [APPEND["blocks"][0]] * (MAX_BLOCKS + 1)},
        "too many certified blocks",
        "length <= 512 - at `$.blocks`",
    ),
    (
        _edit(RESPONSE, _set("acks", RESPONSE["acks"][:1] * (MAX_SIGNATURES + 1))),
        "too many acks",
        "length <= 64 - at `$.acks`",
    ),
    (
        _edit(APPEND, _set("commit.acks", APPEND["commit"]["acks"][:1] * (MAX_SIGNATURES + 1))),
        "too many commit acks",
        "length <= 64 - at `$.commit.acks`",
    ),
    (
        _edit(APPEND, _set("election.votes", APPEND["election"]["votes"][:1] * 65)),
        "too many votes",
        "length <= 64 - at `$.election.votes`",
    ),
]


@pytest.mark.parametrize(("doc", "why", "match"), STRICT, ids=[w for _, w, _ in STRICT])
def test_both_decoders_refuse_lax_values_and_long_lists(
    doc: dict[str, Any], why: str, match: str
) -> None:
    """msgspec is strict (a bool is no int, 1.0 no int, 1 no bool); hex patterns are anchored
    with \\A and \\Z, not $ (which would let a final newline through); list limits hold."""
    with pytest.raises(CodecError, match=re.escape(match)):
        decode(doc)
    with pytest.raises(CodecError, match=re.escape(match)):
        decode_json(json.dumps(doc).encode())


def test_limits_are_inclusive_and_a_removal_may_name_its_key() -> None:
    full = AppendBlocks(
        2, LEADER.node_id, 0, genesis_hash(CHAIN), (B1,) * MAX_BLOCKS, ELECTION, None
    )
    acks = AppendResponse(2, True, 4, (tuple(_ack(i, B4) for i in IDS) * 22)[:MAX_SIGNATURES])
    removal = replace(B4, change=AuthorityChange("remove", IDS[2].node_id, IDS[2].public_key))
    keyed = AppendBlocks(2, LEADER.node_id, 3, B3.hash, (removal,), ELECTION, None)
    for message in (full, acks, keyed):
        assert decode(encode(message)) == message
        assert decode_json(encode_json(message)) == message


MALFORMED_JSON: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"{", "unclosed"),
    (b"null", "null"),
    (b"[]", "array"),
    (b'"vote_request"', "string"),
    (encode_json(MESSAGES[0]) + b" x", "trailing data"),
    (encode_json(MESSAGES[0])[:-1], "truncated"),
    (b"\xff" + encode_json(MESSAGES[0]), "not UTF-8"),
    (encode_json(MESSAGES[0]).replace(CHAIN.encode(), b"\xc3" * 64), "bad UTF-8 in a field"),
    (b"\xef\xbb\xbf" + encode_json(MESSAGES[0]), "byte order mark"),
    (encode_json(MESSAGES[0]).decode().encode("utf-16"), "UTF-16"),
    (b'{"kind":"vote_request","term":NaN}', "NaN"),
    (b'{"zz":' + b"[" * 100_000 + b"]" * 100_000 + b"," + encode_json(MESSAGES[0])[1:], "deep"),
]


@pytest.mark.parametrize(("data", "why"), MALFORMED_JSON, ids=[w for _, w in MALFORMED_JSON])
def test_malformed_json_bytes_raise_codec_error(data: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=r"\Amessage: "):
        decode_json(data)


# --------------------------------------------------------------------------- fuzz

_ODD_VALUES: list[object] = [None, True, 0, -1, 2**64, 1.5, "", "zz", [], {}, [{}], {"kind": 1}]


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _mutate(doc: dict[str, Any], rng: random.Random) -> object:
    out: Any = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(out) if p]
        if not paths:
            return out
        *parent_path, last = rng.choice(paths)
        parent = out
        for part in parent_path:
            parent = parent[part]
        value = parent[last]
        action = rng.randrange(4)
        if action == 0 and isinstance(parent, dict):
            del parent[last]
        elif action == 1 and isinstance(value, str) and value:
            parent[last] = value[: rng.randrange(len(value))]
        elif action == 2 and isinstance(value, int) and not isinstance(value, bool):
            parent[last] = rng.choice([-value - 1, value + 2**63, str(value)])
        else:
            parent[last] = copy.deepcopy(rng.choice(_ODD_VALUES))
    return out


def test_random_mutations_only_raise_codec_errors() -> None:
    rng = random.Random(20240611)
    docs = [encode(m) for m in MESSAGES if m is not MESSAGES[7]]  # not the 1 MiB block
    outcomes = {"error": 0, "message": 0}
    for _ in range(2000):
        mutated = _mutate(rng.choice(docs), rng)
        try:
            message = decode(mutated)
        except CodecError:
            outcomes["error"] += 1
        else:
            assert decode(encode(message)) == message
            outcomes["message"] += 1
    assert outcomes["error"] > 1000, outcomes
    assert outcomes["message"] > 0, outcomes  # some mutations stay valid (e.g. ints changed)


def _payload_verdict(value: str) -> str:
    """What the codec says of ``value`` as a block payload: "ok", "standard" or "canonical"."""
    doc = block_to_doc(B1)
    doc["payload"] = value
    try:
        block_from_doc(doc)
    except CodecError as exc:
        return "canonical" if "canonical" in str(exc) else "standard"
    return "ok"


def _reference_verdict(value: str) -> str:
    """The definition: standard base64 (``validate=True``) whose re-encoding is ``value``."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "standard"
    return "ok" if base64.b64encode(raw).decode("ascii") == value else "canonical"


def test_payload_base64_checks_agree_with_their_definition() -> None:
    """The codec checks the end of a payload only for canonical form (a strict decode checks
    the rest): seeded edits of valid encodings and random strings get the same verdict as
    decoding and re-encoding all of it."""
    rng = random.Random(20261207)
    alphabet = string.ascii_letters + string.digits + "+/=-_ \n.é"
    verdicts = {"ok": 0, "standard": 0, "canonical": 0}
    for _ in range(20_000):
        if rng.random() < 0.6:
            chars = list(base64.b64encode(rng.randbytes(rng.randint(0, 10))).decode())
            for _ in range(rng.randint(0, 2)):
                at = rng.randint(0, len(chars))
                if rng.random() < 0.5 and at < len(chars):
                    chars[at] = rng.choice(alphabet)
                else:
                    chars.insert(at, rng.choice(alphabet))
            value = "".join(chars)
        else:
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        verdict = _payload_verdict(value)
        assert verdict == _reference_verdict(value), value
        verdicts[verdict] += 1
    assert min(verdicts.values()) > 500, verdicts  # every verdict is exercised


# --------------------------------------------------------------------------- JSON bytes


def _outcome(decoder: Callable[[], Message]) -> Message | str:
    try:
        return decoder()
    except CodecError:
        return "CodecError"


def _add_unknown(doc: object, rng: random.Random) -> object:
    """``doc`` with an unknown field (holding an odd value) added to one of its objects."""
    objects = [p for p in _paths(doc) if isinstance(_at(doc, p), dict)]
    target = _at(doc, rng.choice(objects))
    assert isinstance(target, dict)
    target[rng.choice(["zz", "extra", "kinds", "op_"])] = copy.deepcopy(rng.choice(_ODD_VALUES))
    return doc


def _at(doc: Any, path: tuple[object, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def test_decode_json_agrees_with_decode_of_parsed_json() -> None:
    """On valid documents and seeded mutations of them (unknown fields added too), decoding the
    JSON bytes and decoding ``json.loads`` of them both fail or give equal messages."""
    rng = random.Random(20261208)
    docs = [encode(m) for m in MESSAGES if m is not MESSAGES[7]]  # not the 1 MiB block
    cases: list[object] = list(docs)
    for _ in range(3000):
        base = rng.choice(docs)
        doc = _mutate(base, rng) if rng.random() < 0.8 else copy.deepcopy(base)
        cases.append(_add_unknown(doc, rng) if rng.random() < 0.4 else doc)
    outcomes = {"error": 0, "message": 0}
    for doc in cases:
        data = json.dumps(doc).encode()
        expected = _outcome(lambda: decode(json.loads(data)))  # noqa: B023
        assert _outcome(lambda: decode_json(data)) == expected, data[:300]  # noqa: B023
        outcomes["error" if expected == "CodecError" else "message"] += 1
    assert outcomes["error"] > 1500, outcomes
    assert outcomes["message"] > 500, outcomes


def _junk(unit: bytes, size: int) -> bytes:
    """A JSON array of ``unit`` (``[]``, ``{}``...) about ``size`` bytes long."""
    return b"[" + b",".join([unit] * (size // (len(unit) + 1))) + b"]"


def _peak_allocation(run: Callable[[], object]) -> tuple[object, int]:
    """What ``run()`` returns (or the CodecError it raises), and its peak traced allocation."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            result = run()
        except CodecError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()


JUNK_BOUND = 128 << 10
"""Peak allocation allowed when decoding a message with a 1 MiB unknown field of junk. The
decoded messages below take at most ~25 KiB; parsing the junk untyped (json.loads or
msgspec.json.decode, then checking) peaks at 21 to 32 MiB for the same 1 MiB of ``[]``, ``{}``
or ``[[]]``."""


@pytest.mark.parametrize("unit", [b"[]", b"{}", b"[[]]"])
@pytest.mark.parametrize(
    ("message", "where"),
    [
        (MESSAGES[0], ()),
        (MESSAGES[5], ("blocks", 0)),
        (MESSAGES[5], ("election", "votes", 2)),
        (MESSAGES[8], ("acks", 1)),
        (MESSAGES[10], ("commit",)),
    ],
    ids=["top", "block", "vote", "ack", "commit"],
)
def test_unknown_fields_are_skipped_without_being_built(
    message: Message, where: tuple[object, ...], unit: bytes
) -> None:
    doc = encode(message)
    _at(doc, where)["zz_junk"] = "JUNK"
    data = json.dumps(doc).encode().replace(b'"JUNK"', _junk(unit, 1 << 20))
    assert len(data) > 1 << 20
    decoded, peak = _peak_allocation(lambda: decode_json(data))
    assert decoded == message
    assert peak < JUNK_BOUND, peak


@functools.cache
def _tails() -> tuple[bytes, ...]:
    """16 MiB of JSON junk, and 4 MiB of bytes that are not JSON at all."""
    return _junk(b"[]", 16 << 20) + b"]}", b"\xff" * (4 << 20)


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (b'{"kind":"vote_request","term":-1,"zz":', "`$.term`"),
        (b'{"kind":"vote_request","pre_vote":1,"zz":', "`$.pre_vote`"),
        (b'{"kind":"append_blocks","term":1,"blocks":[{"height":true},', "`$.blocks[0].height`"),
        (b'{"kind":"append_response","acks":[{"chain_id":"AB"},', "`$.acks[0].chain_id`"),
        (b'{"kind":"junk","zz":', "`$.kind`"),
    ],
    ids=["term", "pre_vote", "block height", "ack chain id", "kind"],
)
def test_a_bad_value_aborts_before_the_megabytes_after_it(head: bytes, match: str) -> None:
    for tail in _tails():
        data = head + tail
        error, peak = _peak_allocation(lambda: decode_json(data))  # noqa: B023
        assert isinstance(error, CodecError)
        assert match in str(error)
        assert peak < 16 << 10, peak


HUGE = "x" * (1 << 20)


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": HUGE},
        _edit(VOTE_RESPONSE, _set("vote.kind", HUGE)),
        _edit(APPEND, _set("blocks.1.kind", HUGE)),
        _edit(APPEND, _set("blocks.2.change.op", HUGE)),
    ],
    ids=["message kind", "vote kind", "block kind", "op"],
)
def test_errors_quote_a_peers_value_briefly(doc: dict[str, Any]) -> None:
    """msgspec quotes an invalid enum or tag value in full: the CodecError keeps a short start
    of it and the path."""
    for run in (lambda: decode(doc), lambda: decode_json(json.dumps(doc).encode())):
        with pytest.raises(CodecError) as caught:
            run()
        text = str(caught.value)
        assert len(text) < 300 and "'xxx" in text and text.endswith("`"), text


@pytest.mark.parametrize(
    "doc",
    [{"kind": "a\nb\x1b[31m"}, _edit(APPEND, _set("blocks.2.change.op", "\r\n\u2028"))],
    ids=["message kind", "op"],
)
def test_errors_escape_control_characters(doc: dict[str, Any]) -> None:
    for run in (lambda: decode(doc), lambda: decode_json(json.dumps(doc).encode())):
        with pytest.raises(CodecError) as caught:
            run()
        assert str(caught.value).isprintable(), str(caught.value)


def test_part_decoders_name_their_document() -> None:
    doc = _edit(block_to_doc(B3), _set("change.public_key", ""))
    with pytest.raises(CodecError, match=re.escape("block 3: Expected `str` matching")):
        block_from_doc(doc, "block 3")
    with pytest.raises(CodecError, match=re.escape("block: Expected `object`, got `array`")):
        block_from_doc([])
    with pytest.raises(CodecError, match=re.escape("commit: Object missing required field")):
        commit_certificate_from_doc({})
    cert = commit_certificate_to_doc(_commit(B1))
    with pytest.raises(CodecError, match=re.escape("commit: Expected `int` >= 0 - at `$.term`")):
        commit_certificate_from_doc({**cert, "term": -1})
    with pytest.raises(CodecError, match=re.escape("election: Expected `object`, got `null`")):
        election_certificate_from_doc(None)
    with pytest.raises(CodecError, match=re.escape("not canonical base64 - at `$.payload`")):
        block_from_doc({**block_to_doc(B1), "payload": "eB=="})


def test_stored_documents_decode_in_one_pass_as_they_do_in_two() -> None:
    """The consensus log reads its rows with ``block_from_json`` and
    ``commit_certificate_from_json``: on valid documents and seeded mutations of them, they fail
    or succeed exactly as ``*_from_doc(json.loads(text))`` did, and name their document."""
    rng = random.Random(20261209)
    parts = [(block_to_doc(b), block_from_doc, block_from_json) for b in (B1, B2, B3)] + [
        (
            commit_certificate_to_doc(_commit(B1)),
            commit_certificate_from_doc,
            commit_certificate_from_json,
        )
    ]
    outcomes = {"error": 0, "value": 0}
    for _ in range(2000):
        base, from_doc, from_json = rng.choice(parts)
        doc = _mutate(base, rng) if rng.random() < 0.7 else copy.deepcopy(base)
        text = json.dumps(doc, separators=(",", ":"))
        expected = _outcome(lambda: from_doc(json.loads(text), "row 7"))  # noqa: B023
        assert _outcome(lambda: from_json(text, "row 7")) == expected, text[:300]  # noqa: B023
        outcomes["error" if expected == "CodecError" else "value"] += 1
    assert outcomes["error"] > 500 and outcomes["value"] > 300, outcomes
    with pytest.raises(CodecError, match=re.escape("row 7: Input data was truncated")):
        block_from_json('{"height":', "row 7")
    with pytest.raises(CodecError, match=re.escape("commit: Object missing required field")):
        commit_certificate_from_json(b"{}")
