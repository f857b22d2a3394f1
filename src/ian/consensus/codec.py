"""JSON-able documents for the consensus core's wire messages (and its blocks and certificates).

Pure, no I/O. :func:`encode` turns a :data:`~ian.consensus.types.Message` into a document and
:func:`encode_json` into its compact JSON; :func:`decode_json` turns JSON bytes back into a
message, :func:`decode` an already-parsed document (a fork-evidence file's, say). The consensus
log reads its rows with :func:`block_from_json` and :func:`commit_certificate_from_json`. All
raise :class:`~ian.consensus.errors.CodecError` (and nothing else) on malformed input. Hashes,
public keys and signatures are lowercase hex, node ids 40 lowercase hex, chain ids 64 lowercase
hex, a block's ``payload`` standard base64 (canonical, padded), integers JSON integers in
``[0, 2**63)`` (not booleans, not floats such as ``1.0``). Every message document names its
``kind``::

    vote_request      pre_vote, chain_id, term, candidate, last_term, last_height
    vote_response     pre_vote, term, vote: vote doc | null
    append_blocks     term, leader, prev_height, prev_hash, blocks: [block doc] (<= 512),
                      election: election doc, commit: commit doc | null
    append_response   term, success, match_height, acks: [ack doc] (<= 64), learner
    certified_blocks  term, leader, blocks: [block doc] (<= 512), commit: commit doc,
                      election: election doc

    vote doc      kind ("vote" | "pre_vote"), chain_id, term, candidate, last_term,
                  last_height, voter, signature
    election doc  chain_id, term, candidate, last_term, last_height, votes: [vote doc] (<= 64)
    ack doc       chain_id, term, height, block_hash, signer, signature
    commit doc    chain_id, term, height, block_hash, acks: [ack doc] (<= 64)
    block doc     height, term, parent_hash, kind (a BlockKind value), payload (base64),
                  change: {op ("add" | "remove"), node_id, public_key} | null,
                  election: election doc | null, hash

Every field is required, the nullable ones too; a ``remove`` change may carry ``public_key: ""``.

The shapes are defined once, as msgspec structs (``_*Doc`` below, the five message kinds a union
tagged by ``kind``), and both decoders go through them: :func:`decode_json` decodes the bytes
straight into the structs (msgspec validates while it parses: the first invalid value aborts,
and unknown fields are skipped without building anything, so a hostile peer cannot make the node
build a large object tree out of a small body), :func:`decode` converts parsed data into the same
structs (``msgspec.convert``). The structs are then turned into the :mod:`ian.consensus.types`
values directly; only the payload's canonical base64 is checked in that step. Error messages end
with the path of the offending value, as msgspec writes it (``$.blocks[0].payload``). A list
longer than its limit is refused once it ends (msgspec checks the length then): its items must all
be well-formed to get there, so that costs memory of the order of the body's size, no more.

Decoding checks shape only: it verifies no signature and no hash (the core does). Unknown fields
are ignored, like the P2P bodies' (a newer release may add optional ones).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from ian.consensus.errors import CodecError
from ian.consensus.types import (
    Ack,
    AppendBlocks,
    AppendResponse,
    AuthorityChange,
    Block,
    BlockKind,
    CertifiedBlocks,
    CommitCertificate,
    ElectionCertificate,
    Message,
    Vote,
    VoteRequest,
    VoteResponse,
)

__all__ = [
    "MAX_BLOCKS",
    "MAX_SIGNATURES",
    "block_from_doc",
    "block_from_json",
    "block_to_doc",
    "commit_certificate_from_doc",
    "commit_certificate_from_json",
    "commit_certificate_to_doc",
    "decode",
    "decode_json",
    "election_certificate_from_doc",
    "election_certificate_to_doc",
    "encode",
    "encode_json",
]

MAX_BLOCKS = 512
"""Most blocks one message may carry."""
MAX_SIGNATURES = 64
"""Most votes or acks one certificate or response may carry."""

_T = TypeVar("_T")

# --------------------------------------------------------------------------- typed shapes

# Patterns are anchored with \A and \Z: msgspec searches with Python's re, where $ also matches
# before a final newline. msgspec is strict: a bool or a float is not an int, an int not a bool.
_Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
_NodeId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{40}\Z")]
_ChainId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]
_Hash = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]  # 32 bytes
_Key = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]  # 32 bytes
_KeyOrEmpty = Annotated[str, Meta(pattern=r"\A(?:[0-9a-f]{64})?\Z")]
_Signature = Annotated[str, Meta(pattern=r"\A[0-9a-f]{128}\Z")]  # 64 bytes


class _VoteDoc(Struct):
    kind: Literal["vote", "pre_vote"]
    chain_id: _ChainId
    term: _Count
    candidate: _NodeId
    last_term: _Count
    last_height: _Count
    voter: _NodeId
    signature: _Signature


class _ElectionDoc(Struct):
    chain_id: _ChainId
    term: _Count
    candidate: _NodeId
    last_term: _Count
    last_height: _Count
    votes: Annotated[list[_VoteDoc], Meta(max_length=MAX_SIGNATURES)]


class _AckDoc(Struct):
    chain_id: _ChainId
    term: _Count
    height: _Count
    block_hash: _Hash
    signer: _NodeId
    signature: _Signature


_Acks = Annotated[list[_AckDoc], Meta(max_length=MAX_SIGNATURES)]


class _CommitDoc(Struct):
    chain_id: _ChainId
    term: _Count
    height: _Count
    block_hash: _Hash
    acks: _Acks


class _AddDoc(Struct, tag_field="op", tag="add"):
    node_id: _NodeId
    public_key: _Key


class _RemoveDoc(Struct, tag_field="op", tag="remove"):
    node_id: _NodeId
    public_key: _KeyOrEmpty  # "" allowed: the removed key need not be named


class _BlockDoc(Struct):
    height: _Count
    term: _Count
    parent_hash: _Hash
    kind: BlockKind
    payload: str  # canonical standard base64: checked when converted (_payload)
    change: _AddDoc | _RemoveDoc | None
    election: _ElectionDoc | None
    hash: _Hash


_Blocks = Annotated[list[_BlockDoc], Meta(max_length=MAX_BLOCKS)]


class _VoteRequestDoc(Struct, tag_field="kind", tag="vote_request"):
    pre_vote: bool
    chain_id: _ChainId
    term: _Count
    candidate: _NodeId
    last_term: _Count
    last_height: _Count


class _VoteResponseDoc(Struct, tag_field="kind", tag="vote_response"):
    pre_vote: bool
    term: _Count
    vote: _VoteDoc | None


class _AppendBlocksDoc(Struct, tag_field="kind", tag="append_blocks"):
    term: _Count
    leader: _NodeId
    prev_height: _Count
    prev_hash: _Hash
    blocks: _Blocks
    election: _ElectionDoc
    commit: _CommitDoc | None


class _AppendResponseDoc(Struct, tag_field="kind", tag="append_response"):
    term: _Count
    success: bool
    match_height: _Count
    acks: _Acks
    learner: bool


class _CertifiedBlocksDoc(Struct, tag_field="kind", tag="certified_blocks"):
    term: _Count
    leader: _NodeId
    blocks: _Blocks
    commit: _CommitDoc
    election: _ElectionDoc


_MessageDoc = (
    _VoteRequestDoc | _VoteResponseDoc | _AppendBlocksDoc | _AppendResponseDoc | _CertifiedBlocksDoc
)

_JSON_DECODER: Final = msgspec.json.Decoder(_MessageDoc)
_BLOCK_JSON: Final = msgspec.json.Decoder(_BlockDoc)
_COMMIT_JSON: Final = msgspec.json.Decoder(_CommitDoc)
_JSON_ENCODER: Final = msgspec.json.Encoder()


# --------------------------------------------------------------------------- errors


class _Invalid(ValueError):
    """A value the structs cannot constrain is invalid: ``args == (reason, path)``, the path
    relative to the value being converted ("$.payload")."""


_MAX_REASON = 160  # msgspec quotes an invalid enum or tag value in full: a peer's megabytes


def _codec_error(where: str, reason: str, path: str = "") -> CodecError:
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON] + "..."
    if not reason.isprintable():  # msgspec quotes an invalid tag unescaped: no raw newlines
        reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
    return CodecError(f"{where}: {reason} - at `{path}`" if path else f"{where}: {reason}")


def _msgspec_error(where: str, exc: BaseException) -> CodecError:
    """``exc`` (msgspec's "<reason> - at `$.path`") as a :class:`CodecError`."""
    reason, sep, path = str(exc).rpartition(" - at `")
    if not sep:
        return _codec_error(where, str(exc))
    return _codec_error(where, reason, path.removesuffix("`"))


def _convert(where: str, value: object, kind: Any, to: Callable[[Any], _T]) -> _T:
    """``to(msgspec.convert(value, kind))``, every failure a :class:`CodecError`."""
    try:
        doc = msgspec.convert(value, kind)
    except (msgspec.MsgspecError, RecursionError, TypeError, ValueError) as exc:
        raise _msgspec_error(where, exc) from None
    return _finish(where, doc, to)


def _parse(
    where: str, data: str | bytes | bytearray | memoryview, decoder: Any, to: Callable[[Any], _T]
) -> _T:
    """``to(decoder.decode(data))``: JSON text straight into a typed shape, every failure a
    :class:`CodecError`."""
    try:
        doc = decoder.decode(data)
    except (msgspec.MsgspecError, RecursionError, TypeError, ValueError) as exc:
        raise _msgspec_error(where, exc) from None
    return _finish(where, doc, to)


def _finish(where: str, doc: Any, to: Callable[[Any], _T]) -> _T:
    try:
        return to(doc)
    except _Invalid as exc:
        raise _codec_error(where, *exc.args) from None
    except (ValueError, TypeError) as exc:  # cannot happen (the structs' patterns): be sure
        raise _codec_error(where, str(exc)) from None


# --------------------------------------------------------------------------- struct -> value


def _vote(d: _VoteDoc) -> Vote:
    return Vote(
        kind=d.kind,
        chain_id=d.chain_id,
        term=d.term,
        candidate=d.candidate,
        last_term=d.last_term,
        last_height=d.last_height,
        voter=d.voter,
        signature=bytes.fromhex(d.signature),
    )


def _election(d: _ElectionDoc) -> ElectionCertificate:
    return ElectionCertificate(
        chain_id=d.chain_id,
        term=d.term,
        candidate=d.candidate,
        last_term=d.last_term,
        last_height=d.last_height,
        votes=tuple([_vote(v) for v in d.votes]),
    )


def _ack(d: _AckDoc) -> Ack:
    return Ack(
        chain_id=d.chain_id,
        term=d.term,
        height=d.height,
        block_hash=bytes.fromhex(d.block_hash),
        signer=d.signer,
        signature=bytes.fromhex(d.signature),
    )


def _commit(d: _CommitDoc) -> CommitCertificate:
    return CommitCertificate(
        chain_id=d.chain_id,
        term=d.term,
        height=d.height,
        block_hash=bytes.fromhex(d.block_hash),
        acks=tuple([_ack(a) for a in d.acks]),
    )


def _payload(value: str) -> bytes:
    """The bytes of canonical standard base64 ``value``; :class:`_Invalid` if it is not."""
    try:
        # Strict: the standard alphabet only, padding only at the end. (A payload is most of a
        # block's bytes: base64.b64decode(validate=True) checks with a regular expression,
        # twice as slow as the decoding itself.)
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _Invalid("not standard base64", "$.payload") from None
    # Canonical = b64encode(raw) == value. After a strict decode, only the length (padding)
    # and the unused bits of the last group can differ: every full group of four characters
    # stands for exactly one three-byte value. So the last group is re-encoded, not all of it.
    last = len(raw) - (len(raw) - 1) // 3 * 3 if raw else 0
    if len(value) != (len(raw) + 2) // 3 * 4 or (
        last and base64.b64encode(raw[-last:]).decode("ascii") != value[-4:]
    ):
        raise _Invalid("not canonical base64", "$.payload")
    return raw


def _block(d: _BlockDoc) -> Block:
    change = d.change
    return Block(
        height=d.height,
        term=d.term,
        parent_hash=bytes.fromhex(d.parent_hash),
        kind=d.kind,
        payload=_payload(d.payload),
        change=None
        if change is None
        else AuthorityChange(
            "add" if type(change) is _AddDoc else "remove",
            change.node_id,
            bytes.fromhex(change.public_key),
        ),
        election=None if d.election is None else _election(d.election),
        hash=bytes.fromhex(d.hash),
    )


def _blocks(docs: list[_BlockDoc]) -> tuple[Block, ...]:
    out = []
    for i, d in enumerate(docs):
        try:
            out.append(_block(d))
        except _Invalid as exc:
            reason, path = exc.args
            raise _Invalid(reason, f"$.blocks[{i}]{path[1:]}") from None
    return tuple(out)


def _vote_request(d: _VoteRequestDoc) -> VoteRequest:
    return VoteRequest(
        pre_vote=d.pre_vote,
        chain_id=d.chain_id,
        term=d.term,
        candidate=d.candidate,
        last_term=d.last_term,
        last_height=d.last_height,
    )


def _vote_response(d: _VoteResponseDoc) -> VoteResponse:
    return VoteResponse(
        pre_vote=d.pre_vote, term=d.term, vote=None if d.vote is None else _vote(d.vote)
    )


def _append_blocks(d: _AppendBlocksDoc) -> AppendBlocks:
    return AppendBlocks(
        term=d.term,
        leader=d.leader,
        prev_height=d.prev_height,
        prev_hash=bytes.fromhex(d.prev_hash),
        blocks=_blocks(d.blocks),
        election=_election(d.election),
        commit=None if d.commit is None else _commit(d.commit),
    )


def _append_response(d: _AppendResponseDoc) -> AppendResponse:
    return AppendResponse(
        term=d.term,
        success=d.success,
        match_height=d.match_height,
        acks=tuple([_ack(a) for a in d.acks]),
        learner=d.learner,
    )


def _certified_blocks(d: _CertifiedBlocksDoc) -> CertifiedBlocks:
    return CertifiedBlocks(
        term=d.term,
        leader=d.leader,
        blocks=_blocks(d.blocks),
        commit=_commit(d.commit),
        election=_election(d.election),
    )


_MESSAGES: Final[dict[type[Struct], Callable[[Any], Message]]] = {
    _VoteRequestDoc: _vote_request,
    _VoteResponseDoc: _vote_response,
    _AppendBlocksDoc: _append_blocks,
    _AppendResponseDoc: _append_response,
    _CertifiedBlocksDoc: _certified_blocks,
}


def _message(doc: _MessageDoc) -> Message:
    return _MESSAGES[type(doc)](doc)


# --------------------------------------------------------------------------- value -> document


def _vote_to_doc(vote: Vote) -> dict[str, Any]:
    return {
        "kind": vote.kind,
        "chain_id": vote.chain_id,
        "term": vote.term,
        "candidate": vote.candidate,
        "last_term": vote.last_term,
        "last_height": vote.last_height,
        "voter": vote.voter,
        "signature": vote.signature.hex(),
    }


def election_certificate_to_doc(cert: ElectionCertificate) -> dict[str, Any]:
    """The document of an election certificate (every vote in full)."""
    return {
        "chain_id": cert.chain_id,
        "term": cert.term,
        "candidate": cert.candidate,
        "last_term": cert.last_term,
        "last_height": cert.last_height,
        "votes": [_vote_to_doc(v) for v in cert.votes],
    }


def _ack_to_doc(ack: Ack) -> dict[str, Any]:
    return {
        "chain_id": ack.chain_id,
        "term": ack.term,
        "height": ack.height,
        "block_hash": ack.block_hash.hex(),
        "signer": ack.signer,
        "signature": ack.signature.hex(),
    }


def commit_certificate_to_doc(cert: CommitCertificate) -> dict[str, Any]:
    """The document of a commit certificate (every ack in full)."""
    return {
        "chain_id": cert.chain_id,
        "term": cert.term,
        "height": cert.height,
        "block_hash": cert.block_hash.hex(),
        "acks": [_ack_to_doc(a) for a in cert.acks],
    }


def block_to_doc(block: Block) -> dict[str, Any]:
    """The document of a block (``payload`` as base64, ``hash`` as carried, not recomputed)."""
    change = block.change
    return {
        "height": block.height,
        "term": block.term,
        "parent_hash": block.parent_hash.hex(),
        "kind": block.kind.value,
        "payload": base64.b64encode(block.payload).decode("ascii"),
        "change": None
        if change is None
        else {"op": change.op, "node_id": change.node_id, "public_key": change.public_key.hex()},
        "election": None if block.election is None else election_certificate_to_doc(block.election),
        "hash": block.hash.hex(),
    }


def encode(message: Message) -> dict[str, Any]:
    """The JSON-able document of ``message`` (see the module docstring)."""
    if isinstance(message, VoteRequest):
        return {
            "kind": "vote_request",
            "pre_vote": message.pre_vote,
            "chain_id": message.chain_id,
            "term": message.term,
            "candidate": message.candidate,
            "last_term": message.last_term,
            "last_height": message.last_height,
        }
    if isinstance(message, VoteResponse):
        return {
            "kind": "vote_response",
            "pre_vote": message.pre_vote,
            "term": message.term,
            "vote": None if message.vote is None else _vote_to_doc(message.vote),
        }
    if isinstance(message, AppendBlocks):
        return {
            "kind": "append_blocks",
            "term": message.term,
            "leader": message.leader,
            "prev_height": message.prev_height,
            "prev_hash": message.prev_hash.hex(),
            "blocks": [block_to_doc(b) for b in message.blocks],
            "election": election_certificate_to_doc(message.election),
            "commit": None if message.commit is None else commit_certificate_to_doc(message.commit),
        }
    if isinstance(message, AppendResponse):
        return {
            "kind": "append_response",
            "term": message.term,
            "success": message.success,
            "match_height": message.match_height,
            "acks": [_ack_to_doc(a) for a in message.acks],
            "learner": message.learner,
        }
    return {
        "kind": "certified_blocks",
        "term": message.term,
        "leader": message.leader,
        "blocks": [block_to_doc(b) for b in message.blocks],
        "commit": commit_certificate_to_doc(message.commit),
        "election": election_certificate_to_doc(message.election),
    }


def encode_json(message: Message) -> bytes:
    """The compact JSON of :func:`encode`'s document (what :func:`decode_json` reads)."""
    return _JSON_ENCODER.encode(encode(message))


# --------------------------------------------------------------------------- decoding


def decode_json(data: bytes | bytearray | memoryview) -> Message:
    """The message the JSON ``data`` encodes; :class:`CodecError` (only) if it is malformed.

    Decoded straight into the typed shapes: the first invalid value aborts, unknown fields are
    skipped unbuilt. Checks types, lengths and ranges; verifies no signature and no hash.
    """
    return _parse("message", data, _JSON_DECODER, _message)


def decode(doc: object) -> Message:
    """The message ``doc`` (parsed JSON data) encodes; :class:`CodecError` (only) if it is
    malformed.

    Checks types, lengths and ranges; verifies no signature and no hash.
    """
    return _convert("message", doc, _MessageDoc, _message)


def election_certificate_from_doc(value: object, where: str = "election") -> ElectionCertificate:
    """Decode an election certificate document; :class:`CodecError` if malformed (``where``
    names it in the error)."""
    return _convert(where, value, _ElectionDoc, _election)


def commit_certificate_from_doc(value: object, where: str = "commit") -> CommitCertificate:
    """Decode a commit certificate document; :class:`CodecError` if malformed (``where`` names
    it in the error)."""
    return _convert(where, value, _CommitDoc, _commit)


def block_from_doc(value: object, where: str = "block") -> Block:
    """Decode a block document; :class:`CodecError` if malformed (the hash is not checked;
    ``where`` names the block in the error)."""
    return _convert(where, value, _BlockDoc, _block)


def block_from_json(data: str | bytes, where: str = "block") -> Block:
    """:func:`block_from_doc` of the JSON text ``data``, decoded straight into the typed shape
    (one pass: no JSON data built first)."""
    return _parse(where, data, _BLOCK_JSON, _block)


def commit_certificate_from_json(data: str | bytes, where: str = "commit") -> CommitCertificate:
    """:func:`commit_certificate_from_doc` of the JSON text ``data``, in one pass."""
    return _parse(where, data, _COMMIT_JSON, _commit)
