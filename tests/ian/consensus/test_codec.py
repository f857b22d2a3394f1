"""The consensus wire codec: exact round trips with real signatures, malformed documents only
ever raise CodecError, and seeded random mutations of valid documents never escape it."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import re
import string
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
    block_from_doc,
    block_to_doc,
    commit_certificate_from_doc,
    commit_certificate_to_doc,
    decode,
    encode,
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
    ([], "not an object", "message: not an object"),
    ("vote_request", "a string", "not an object"),
    ({"term": 1}, "no kind", "unknown message kind"),
    ({**VOTE_REQUEST, "kind": "vote_requests"}, "unknown kind", "unknown message kind"),
    ({**VOTE_REQUEST, "kind": 7}, "kind not a string", "unknown message kind"),
    (_edit(VOTE_REQUEST, _drop("term")), "missing term", "vote_request.term: missing"),
    (_edit(VOTE_REQUEST, _set("term", -1)), "negative term", "out of range"),
    (_edit(VOTE_REQUEST, _set("term", 2**63)), "term too large", "out of range"),
    (_edit(VOTE_REQUEST, _set("term", "2")), "string term", "not an integer"),
    (_edit(VOTE_REQUEST, _set("term", 2.0)), "float term", "not an integer"),
    (_edit(VOTE_REQUEST, _set("term", True)), "bool term", "not an integer"),
    (_edit(VOTE_REQUEST, _set("pre_vote", 0)), "int for bool", "pre_vote: not a boolean"),
    (_edit(VOTE_REQUEST, _set("chain_id", "ab")), "short chain id", "chain_id"),
    (_edit(VOTE_REQUEST, _set("candidate", "AB" * 20)), "upper-case node id", "candidate"),
    (_edit(VOTE_REQUEST, _set("candidate", "ab" * 19)), "short node id", "candidate"),
    (_edit(VOTE_REQUEST, _set("candidate", None)), "null node id", "candidate"),
    (_edit(VOTE_RESPONSE, _set("vote.kind", "ballot")), "bad vote kind", "vote.kind"),
    (_edit(VOTE_RESPONSE, _set("vote.signature", "00" * 63)), "short signature", "signature"),
    (_edit(VOTE_RESPONSE, _set("vote.signature", "zz" * 64)), "non-hex signature", "signature"),
    (_edit(VOTE_RESPONSE, _set("vote", [])), "vote not an object", "vote: not an object"),
    (_edit(APPEND, _set("prev_hash", "00" * 31)), "short hash", "prev_hash"),
    (_edit(APPEND, _set("prev_hash", "00" * 33)), "long hash", "prev_hash"),
    (_edit(APPEND, _set("blocks.0.kind", "genesis")), "unknown block kind", "blocks[0].kind"),
    (_edit(APPEND, _set("blocks.0.payload", "!!!")), "bad base64", "base64"),
    (_edit(APPEND, _set("blocks.0.payload", "eA")), "unpadded base64", "base64"),
    (_edit(APPEND, _set("blocks.0.payload", "eB==")), "non-canonical base64", "canonical"),
    (_edit(APPEND, _set("blocks.0.payload", "é===")), "non-ASCII base64", "base64"),
    (_edit(APPEND, _set("blocks.0.payload", b"x")), "bytes payload", "base64"),
    (_edit(APPEND, _set("blocks.2.change.op", "replace")), "bad op", "change.op"),
    (_edit(APPEND, _set("blocks.2.change.public_key", "")), "add without key", "public_key"),
    (_edit(APPEND, _set("blocks.2.change.public_key", "00" * 31)), "short key", "public_key"),
    (_edit(APPEND, _set("blocks", {})), "blocks not a list", "blocks: not a list"),
    (_edit(APPEND, _set("blocks", [APPEND["blocks"][0]] * 513)), "too many blocks", "513"),
    (_edit(APPEND, _set("election.votes", [{}] * 65)), "too many votes", "65 items"),
    (_edit(APPEND, _set("election", None)), "null election", "election: not an object"),
    (_edit(APPEND, _set("commit.acks.0.block_hash", 5)), "int hash", "block_hash"),
    (_edit(APPEND, _drop("commit.acks.0.signer")), "ack without signer", "signer: missing"),
    (_edit(RESPONSE, _set("acks", [RESPONSE["acks"][0]] * 65)), "too many acks", "at most 64"),
    (_edit(RESPONSE, _set("success", "yes")), "string bool", "success"),
    (_edit(RESPONSE, _drop("learner")), "missing learner", "learner: missing"),
]


@pytest.mark.parametrize(("doc", "why", "match"), BAD, ids=[w for _, w, _ in BAD])
def test_malformed_documents_raise_codec_error(doc: object, why: str, match: str) -> None:
    with pytest.raises(CodecError, match=re.escape(match)):
        decode(doc)


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
