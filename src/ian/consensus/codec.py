"""JSON-able documents for the consensus core's wire messages (and its blocks and certificates).

Pure, no I/O. :func:`encode` turns a :data:`~ian.consensus.types.Message` into a document;
:func:`decode` turns any object back into a message or raises
:class:`~ian.consensus.errors.CodecError` (and nothing else). Hashes, public keys and signatures
are lowercase hex, node ids 40 lowercase hex, chain ids 64 lowercase hex, a block's ``payload``
standard base64 (canonical, padded), integers JSON integers in ``[0, 2**63)``. Every message
document names its ``kind``::

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

Decoding checks shape only: it verifies no signature and no hash (the core does). Unknown fields
are ignored, like the P2P bodies' (a newer release may add optional ones).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

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
    "block_to_doc",
    "commit_certificate_from_doc",
    "commit_certificate_to_doc",
    "decode",
    "election_certificate_from_doc",
    "election_certificate_to_doc",
    "encode",
]

MAX_BLOCKS = 512
"""Most blocks one message may carry."""
MAX_SIGNATURES = 64
"""Most votes or acks one certificate or response may carry."""

_U63 = 2**63 - 1
_HEX = frozenset("0123456789abcdef")
_BLOCK_KINDS = frozenset(k.value for k in BlockKind)
_T = TypeVar("_T")

Doc = Mapping[str, object]


# --------------------------------------------------------------------------- field readers


def _object(value: object, where: str) -> Doc:
    if not isinstance(value, dict):
        raise CodecError(f"{where}: not an object")
    return value


def _get(doc: Doc, key: str, where: str) -> object:
    if key not in doc:
        raise CodecError(f"{where}.{key}: missing")
    return doc[key]


def _int(doc: Doc, key: str, where: str) -> int:
    value = _get(doc, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{where}.{key}: not an integer")
    if not 0 <= value <= _U63:
        raise CodecError(f"{where}.{key}: out of range [0, 2**63)")
    return value


def _bool(doc: Doc, key: str, where: str) -> bool:
    value = _get(doc, key, where)
    if not isinstance(value, bool):
        raise CodecError(f"{where}.{key}: not a boolean")
    return value


def _hex_str(doc: Doc, key: str, where: str, chars: int) -> str:
    value = _get(doc, key, where)
    if not isinstance(value, str) or len(value) != chars or not _HEX.issuperset(value):
        raise CodecError(f"{where}.{key}: not {chars} lowercase hex characters")
    return value


def _bytes(doc: Doc, key: str, where: str, size: int) -> bytes:
    return bytes.fromhex(_hex_str(doc, key, where, 2 * size))


def _node_id(doc: Doc, key: str, where: str) -> str:
    return _hex_str(doc, key, where, 40)


def _chain_id(doc: Doc, key: str, where: str) -> str:
    return _hex_str(doc, key, where, 64)


def _base64(doc: Doc, key: str, where: str) -> bytes:
    value = _get(doc, key, where)
    if not isinstance(value, str):
        raise CodecError(f"{where}.{key}: not a base64 string")
    try:
        # Strict: the standard alphabet only, padding only at the end. (A payload is most of a
        # block's bytes: base64.b64decode(validate=True) checks with a regular expression,
        # twice as slow as the decoding itself.)
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise CodecError(f"{where}.{key}: not standard base64") from None
    # Canonical = b64encode(raw) == value. After a strict decode, only the length (padding)
    # and the unused bits of the last group can differ: every full group of four characters
    # stands for exactly one three-byte value. So the last group is re-encoded, not all of it.
    last = len(raw) - (len(raw) - 1) // 3 * 3 if raw else 0
    if len(value) != (len(raw) + 2) // 3 * 4 or (
        last and base64.b64encode(raw[-last:]).decode("ascii") != value[-4:]
    ):
        raise CodecError(f"{where}.{key}: not canonical base64")
    return raw


def _list(
    doc: Doc, key: str, where: str, limit: int, item: Callable[[object, str], _T]
) -> tuple[_T, ...]:
    value = _get(doc, key, where)
    if not isinstance(value, list):
        raise CodecError(f"{where}.{key}: not a list")
    if len(value) > limit:
        raise CodecError(f"{where}.{key}: {len(value)} items, at most {limit}")
    return tuple(item(v, f"{where}.{key}[{i}]") for i, v in enumerate(value))


def _optional(doc: Doc, key: str, where: str, item: Callable[[object, str], _T]) -> _T | None:
    value = _get(doc, key, where)
    return None if value is None else item(value, f"{where}.{key}")


# --------------------------------------------------------------------------- parts


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


def _vote_from_doc(value: object, where: str) -> Vote:
    doc = _object(value, where)
    kind = _get(doc, "kind", where)
    if kind != "vote" and kind != "pre_vote":
        raise CodecError(f"{where}.kind: not 'vote' or 'pre_vote'")
    return Vote(
        kind=kind,
        chain_id=_chain_id(doc, "chain_id", where),
        term=_int(doc, "term", where),
        candidate=_node_id(doc, "candidate", where),
        last_term=_int(doc, "last_term", where),
        last_height=_int(doc, "last_height", where),
        voter=_node_id(doc, "voter", where),
        signature=_bytes(doc, "signature", where, 64),
    )


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


def election_certificate_from_doc(value: object, where: str = "election") -> ElectionCertificate:
    """Decode an election certificate document; :class:`CodecError` if malformed."""
    doc = _object(value, where)
    return ElectionCertificate(
        chain_id=_chain_id(doc, "chain_id", where),
        term=_int(doc, "term", where),
        candidate=_node_id(doc, "candidate", where),
        last_term=_int(doc, "last_term", where),
        last_height=_int(doc, "last_height", where),
        votes=_list(doc, "votes", where, MAX_SIGNATURES, _vote_from_doc),
    )


def _ack_to_doc(ack: Ack) -> dict[str, Any]:
    return {
        "chain_id": ack.chain_id,
        "term": ack.term,
        "height": ack.height,
        "block_hash": ack.block_hash.hex(),
        "signer": ack.signer,
        "signature": ack.signature.hex(),
    }


def _ack_from_doc(value: object, where: str) -> Ack:
    doc = _object(value, where)
    return Ack(
        chain_id=_chain_id(doc, "chain_id", where),
        term=_int(doc, "term", where),
        height=_int(doc, "height", where),
        block_hash=_bytes(doc, "block_hash", where, 32),
        signer=_node_id(doc, "signer", where),
        signature=_bytes(doc, "signature", where, 64),
    )


def commit_certificate_to_doc(cert: CommitCertificate) -> dict[str, Any]:
    """The document of a commit certificate (every ack in full)."""
    return {
        "chain_id": cert.chain_id,
        "term": cert.term,
        "height": cert.height,
        "block_hash": cert.block_hash.hex(),
        "acks": [_ack_to_doc(a) for a in cert.acks],
    }


def commit_certificate_from_doc(value: object, where: str = "commit") -> CommitCertificate:
    """Decode a commit certificate document; :class:`CodecError` if malformed."""
    doc = _object(value, where)
    return CommitCertificate(
        chain_id=_chain_id(doc, "chain_id", where),
        term=_int(doc, "term", where),
        height=_int(doc, "height", where),
        block_hash=_bytes(doc, "block_hash", where, 32),
        acks=_list(doc, "acks", where, MAX_SIGNATURES, _ack_from_doc),
    )


def _change_from_doc(value: object, where: str) -> AuthorityChange:
    doc = _object(value, where)
    op = _get(doc, "op", where)
    if op != "add" and op != "remove":
        raise CodecError(f"{where}.op: not 'add' or 'remove'")
    node_id = _node_id(doc, "node_id", where)
    if op == "remove" and doc.get("public_key") == "":
        return AuthorityChange(op, node_id)
    return AuthorityChange(op, node_id, _bytes(doc, "public_key", where, 32))


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


def block_from_doc(value: object, where: str = "block") -> Block:
    """Decode a block document; :class:`CodecError` if malformed (the hash is not checked)."""
    doc = _object(value, where)
    kind = _get(doc, "kind", where)
    if not isinstance(kind, str) or kind not in _BLOCK_KINDS:
        raise CodecError(f"{where}.kind: not a block kind")
    return Block(
        height=_int(doc, "height", where),
        term=_int(doc, "term", where),
        parent_hash=_bytes(doc, "parent_hash", where, 32),
        kind=BlockKind(kind),
        payload=_base64(doc, "payload", where),
        change=_optional(doc, "change", where, _change_from_doc),
        election=_optional(doc, "election", where, election_certificate_from_doc),
        hash=_bytes(doc, "hash", where, 32),
    )


# --------------------------------------------------------------------------- messages


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


def _vote_request(doc: Doc, w: str) -> VoteRequest:
    return VoteRequest(
        pre_vote=_bool(doc, "pre_vote", w),
        chain_id=_chain_id(doc, "chain_id", w),
        term=_int(doc, "term", w),
        candidate=_node_id(doc, "candidate", w),
        last_term=_int(doc, "last_term", w),
        last_height=_int(doc, "last_height", w),
    )


def _vote_response(doc: Doc, w: str) -> VoteResponse:
    return VoteResponse(
        pre_vote=_bool(doc, "pre_vote", w),
        term=_int(doc, "term", w),
        vote=_optional(doc, "vote", w, _vote_from_doc),
    )


def _append_blocks(doc: Doc, w: str) -> AppendBlocks:
    return AppendBlocks(
        term=_int(doc, "term", w),
        leader=_node_id(doc, "leader", w),
        prev_height=_int(doc, "prev_height", w),
        prev_hash=_bytes(doc, "prev_hash", w, 32),
        blocks=_list(doc, "blocks", w, MAX_BLOCKS, block_from_doc),
        election=election_certificate_from_doc(_get(doc, "election", w), f"{w}.election"),
        commit=_optional(doc, "commit", w, commit_certificate_from_doc),
    )


def _append_response(doc: Doc, w: str) -> AppendResponse:
    return AppendResponse(
        term=_int(doc, "term", w),
        success=_bool(doc, "success", w),
        match_height=_int(doc, "match_height", w),
        acks=_list(doc, "acks", w, MAX_SIGNATURES, _ack_from_doc),
        learner=_bool(doc, "learner", w),
    )


def _certified_blocks(doc: Doc, w: str) -> CertifiedBlocks:
    return CertifiedBlocks(
        term=_int(doc, "term", w),
        leader=_node_id(doc, "leader", w),
        blocks=_list(doc, "blocks", w, MAX_BLOCKS, block_from_doc),
        commit=commit_certificate_from_doc(_get(doc, "commit", w), f"{w}.commit"),
        election=election_certificate_from_doc(_get(doc, "election", w), f"{w}.election"),
    )


_DECODERS: dict[str, Callable[[Doc, str], Message]] = {
    "vote_request": _vote_request,
    "vote_response": _vote_response,
    "append_blocks": _append_blocks,
    "append_response": _append_response,
    "certified_blocks": _certified_blocks,
}


def decode(doc: object) -> Message:
    """The message ``doc`` encodes; :class:`CodecError` (only) if it is malformed.

    Checks types, lengths and ranges; verifies no signature and no hash.
    """
    body = _object(doc, "message")
    kind = body.get("kind")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        shown = repr(kind[:64]) if isinstance(kind, str) else type(kind).__name__
        raise CodecError(f"message.kind: unknown message kind {shown}")
    return decoder(body, str(kind))
