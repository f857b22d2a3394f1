"""P2P wire messages (protocol version 1): msgspec structs, decoded straight from a frame's bytes
and checked while they are read. No I/O.

Every frame payload is one UTF-8 JSON envelope::

    {"v": 1, "type": "<message type>", "id": <int>, "re": <int | null>, "body": {...}}

``id`` is unique per sender and connection (it numbers requests); ``re`` is the ``id`` of the
request a reply answers, else null. Bodies (hex is lowercase everywhere):

=====================  =======================================================================
type                   body
=====================  =======================================================================
hello                  network_id, protocol_version, node_id, height, head_hash,
                       listen_addr (``tcp://host:port`` or null), agent, sequencer (bool),
                       chain_id (64 hex, or null before the node has pinned a genesis)
ping / pong            nonce
get_peers              {}
get_genesis            {}
genesis                genesis: the genesis document (its chain id is the hello's; at most
                       4 MiB of JSON text)
peers                  peers: [{node_id, address}] (at most 50)
status                 height, head_hash (periodic height gossip)
block_announce         block: block doc (below)
get_blocks             from_height, max_blocks (1..500)
blocks                 blocks: [block doc] (at most 500)
contribution_forward   contribution: ``Contribution.to_wire()``, token (the submission token
                       when the network requires one, else null)
contribution_result    result: the sequencer's answer, as the API would return it (accepted,
                       reason, rejection_type, score, metrics, log_index, contribution_hash)
error                  code, message (a reply that refuses a request)
consensus              msg: a consensus core message as :func:`ian.consensus.codec.encode`
                       documents it (a notification: replies are consensus messages too)
goodbye                reason
=====================  =======================================================================

Block doc: ``{"header": BlockHeader.to_doc(), "hash": hex, "signature": hex, "entries":
[Contribution.to_wire(), ...]}``. Decoding checks its *shape* only; :func:`block_from_doc`
converts it to :class:`~ian.chain.blocks.Block` (re-validating every contribution as the API
would) but does not check the hash, the signature or the chain: that is the replication layer's
job. A consensus payload is one block doc (:func:`encode_block`, :func:`decode_block`).

A body that carries no blocks, contribution or consensus message (every type but
``block_announce``, ``blocks``, ``contribution_forward``, ``consensus`` and ``genesis``) is at
most 64 KiB of JSON (:data:`SMALL_BODY_BYTES`), a ``genesis`` body 4 MiB more: a longer one is
refused before it is decoded (a newer release's optional fields have room enough).

Decoding failures: bytes that are not a JSON envelope of protocol version 1, or an unknown
``type``, raise :class:`ProtocolViolation`; a known type whose body does not validate raises
:class:`InvalidMessage`. A string that is not Unicode text (bad UTF-8, a lone surrogate
escape such as ``"\\ud800"``) anywhere makes the frame a :class:`ProtocolViolation`. Unknown
*fields* in a body are ignored so that a newer minor release can add optional fields without
breaking older peers.

A peer may send anything, so nothing it sends is turned into untyped Python data before it is
checked: the envelope and every body decode straight into these structs. Unknown fields are
skipped as text (their syntax checked, no objects built), and the first value of the wrong type
or size stops decoding (a list longer than its limit is refused once read: its items must all be
well-formed to get that far, which costs memory of the order of the frame, no more). Three values
stay JSON text (:class:`msgspec.Raw`, a view of the frame) until their reader asks for them, each
bounded in bytes first: a contribution's metadata (:func:`contribution_from_doc`), a genesis
document (the genesis exchange), and a consensus message (:func:`ian.consensus.codec.decode_json`,
once the consensus driver knows the sender is an authority). :func:`block_from_doc` can check a
block's signature before it decodes the entries. Without this, one 16 MiB frame of ``[],[],…``
cost ~400 MiB and a second of the event loop before any check ran
(``tests/integration/test_hostile_peers.py``, ``bench/hostile_bench.py``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta, Raw, Struct
from msgspec.structs import force_setattr

from ian.chain.blocks import Block, BlockHeader
from ian.chain.contributions import (
    MAX_METADATA_BYTES,
    MAX_SEED,
    Contribution,
    decode_parameters,
    make_contribution,
)
from ian.chain.goals import GOAL_ID_PATTERN
from ian.config import parse_peer_address
from ian.errors import IanError
from ian.p2p.errors import InvalidMessage, ProtocolViolation

__all__ = [
    "MAX_BLOCKS_PER_MESSAGE",
    "MAX_GENESIS_BYTES",
    "MAX_METADATA_WIRE_BYTES",
    "MAX_PEERS_PER_MESSAGE",
    "MAX_REASON_CHARS",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "SMALL_BODY_BYTES",
    "AgentPackDoc",
    "BlockAnnounce",
    "BlockDoc",
    "Blocks",
    "Consensus",
    "ContributionDoc",
    "ContributionForward",
    "ContributionResult",
    "Envelope",
    "Error",
    "GenesisDoc",
    "GetBlocks",
    "GetGenesis",
    "GetPeers",
    "Goodbye",
    "Hello",
    "Message",
    "PeerEntry",
    "Peers",
    "Ping",
    "Pong",
    "ResultDoc",
    "Status",
    "block_from_doc",
    "block_to_doc",
    "contribution_from_doc",
    "contribution_to_doc",
    "decode_block",
    "decode_envelope",
    "doc_to_data",
    "encode_block",
    "encode_envelope",
]

PROTOCOL_VERSION = 1
MAX_PEERS_PER_MESSAGE = 50
MAX_BLOCKS_PER_MESSAGE = 500
MAX_GENESIS_BYTES = 4 * 1024 * 1024
"""Most JSON text a ``genesis`` body's document may have, give or take the body's own 64 KiB
(a real one is a few KiB)."""
MAX_METADATA_WIRE_BYTES = 4 * MAX_METADATA_BYTES
"""Most JSON text a contribution's metadata may have on the wire. The API's limit is on its
canonical text; escaping every character (``\\u00e9`` for ``é``) makes at most three times as
much, so only padding goes past this."""
SMALL_BODY_BYTES = 64 * 1024
"""Most JSON text the body of a message that carries no blocks, contribution, genesis or consensus
message may have."""
_U63 = 2**63 - 1
_EMPTY_OBJECT = Raw(b"{}")

# Patterns are anchored with \A and \Z: msgspec searches with Python's re, where $ also matches
# before a final newline.
_Hash32 = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]
_Signature = Annotated[str, Meta(pattern=r"\A[0-9a-f]{128}\Z")]
_NodeId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{40}\Z")]
_Count = Annotated[int, Meta(ge=0, le=_U63)]
_GoalId = Annotated[str, Meta(pattern=r"\A" + GOAL_ID_PATTERN.strip("^$") + r"\Z")]
_Address = Annotated[str, Meta(max_length=300)]


def _is_object(value: Raw) -> bool:
    """Is ``value`` (valid JSON text) an object?"""
    with memoryview(value) as text:
        return text[:1].tobytes() == b"{"


def _object_text(value: Raw, what: str) -> None:
    """Raise ``ValueError`` (reported by msgspec as a validation error) unless ``value`` is the
    text of a JSON object (its size is bounded by its body's, see _BODY_LIMITS)."""
    if not _is_object(value):
        raise ValueError(f"{what} is not a JSON object")


def _canonical_address(struct: Struct, name: str) -> None:
    """Replace the peer address in field ``name`` by its canonical form (``ValueError`` if it
    is none: ``PeerAddressError`` is one)."""
    value = getattr(struct, name)
    if value is not None:
        force_setattr(struct, name, str(parse_peer_address(value)))


class Message(Struct, frozen=True):
    """Base of message bodies; each subclass names its wire ``TYPE``."""

    TYPE: ClassVar[str] = ""


class Hello(Message, frozen=True):
    TYPE: ClassVar[str] = "hello"
    network_id: Annotated[str, Meta(min_length=1, max_length=64)]
    protocol_version: Annotated[int, Meta(ge=1, le=65535)]
    node_id: _NodeId
    height: _Count
    head_hash: _Hash32
    listen_addr: _Address | None = None
    agent: Annotated[str, Meta(max_length=128)] = ""
    sequencer: bool = False
    chain_id: _Hash32 | None = None

    def __post_init__(self) -> None:
        _canonical_address(self, "listen_addr")


class Ping(Message, frozen=True):
    TYPE: ClassVar[str] = "ping"
    nonce: _Count


class Pong(Message, frozen=True):
    TYPE: ClassVar[str] = "pong"
    nonce: _Count


class GetPeers(Message, frozen=True):
    TYPE: ClassVar[str] = "get_peers"


class GetGenesis(Message, frozen=True):
    TYPE: ClassVar[str] = "get_genesis"


class GenesisDoc(Message, frozen=True):
    """The genesis document, as JSON text (the genesis exchange validates it)."""

    TYPE: ClassVar[str] = "genesis"
    genesis: Raw

    def __post_init__(self) -> None:
        _object_text(self.genesis, "genesis")


class PeerEntry(Struct, frozen=True):
    node_id: _NodeId
    address: _Address

    def __post_init__(self) -> None:
        _canonical_address(self, "address")


class Peers(Message, frozen=True):
    TYPE: ClassVar[str] = "peers"
    peers: Annotated[list[PeerEntry], Meta(max_length=MAX_PEERS_PER_MESSAGE)] = []


class Status(Message, frozen=True):
    TYPE: ClassVar[str] = "status"
    height: _Count
    head_hash: _Hash32


# Block docs: a follower catching up decodes thousands of entries a second, so they turn into
# the chain's types without a dump in between (see the converters below). They are not tracked
# by the garbage collector (gc=False): a batch's thousands of docs would otherwise trigger and
# fill its collections (in process, a 100,000-entry catch-up ran ~10 % faster without). That is
# safe because a doc can never be part of a reference cycle: it is frozen, and holds only text,
# numbers, other docs and the lists and dicts of them that decoding built.


class GoalRootsDoc(Struct, frozen=True, gc=False):
    leaderboard_root: _Hash32
    leaderboard_size: _Count
    log_root: _Hash32
    log_size: _Count


class HeaderDoc(Struct, frozen=True, gc=False):
    entries_hash: _Hash32
    goals: Annotated[dict[_GoalId, GoalRootsDoc], Meta(max_length=10_000)]
    height: Annotated[int, Meta(ge=1, le=_U63)]
    parent_hash: _Hash32
    sequencer: _NodeId
    sequencer_key: _Hash32
    timestamp_ms: _Count


class AgentPackDoc(Struct, frozen=True, gc=False):
    version: Annotated[str, Meta(min_length=1, max_length=64)]
    parameters: Annotated[str, Meta(min_length=1)]
    #: JSON text (a view of the frame): :func:`contribution_from_doc` checks that it is an
    #: object of at most MAX_METADATA_WIRE_BYTES, then decodes it and checks it as the API does.
    #: (Not here: a per-entry __post_init__ costs a follower's catch-up ~0.5 us an entry.)
    metadata: Raw = _EMPTY_OBJECT


class ContributionDoc(Struct, frozen=True, gc=False):
    goal_id: _GoalId
    agent_pack: AgentPackDoc
    contributor_id: Annotated[str, Meta(min_length=1, max_length=128)]
    seed: Annotated[int, Meta(ge=0, le=MAX_SEED)]


class BlockDoc(Struct, frozen=True, gc=False):
    header: HeaderDoc
    hash: _Hash32
    signature: _Signature
    entries: Annotated[list[ContributionDoc], Meta(max_length=10_000)]


class BlockAnnounce(Message, frozen=True):
    TYPE: ClassVar[str] = "block_announce"
    block: BlockDoc


class GetBlocks(Message, frozen=True):
    TYPE: ClassVar[str] = "get_blocks"
    from_height: _Count
    max_blocks: Annotated[int, Meta(ge=1, le=MAX_BLOCKS_PER_MESSAGE)]


class Blocks(Message, frozen=True):
    TYPE: ClassVar[str] = "blocks"
    blocks: Annotated[list[BlockDoc], Meta(max_length=MAX_BLOCKS_PER_MESSAGE)] = []


class ContributionForward(Message, frozen=True):
    TYPE: ClassVar[str] = "contribution_forward"
    contribution: ContributionDoc
    #: the submission token the forwarding node holds (when submissions need one)
    token: Annotated[str, Meta(max_length=512)] | None = None


_MetricName = Annotated[str, Meta(max_length=64)]
MAX_REASON_CHARS = 4096
"""Longest ``reason`` a contribution result may carry (a sequencer cuts a longer one)."""


class ResultDoc(Struct, frozen=True):
    """The sequencer's answer to a forwarded contribution (``Outcome.to_result()``)."""

    accepted: bool
    reason: Annotated[str, Meta(max_length=MAX_REASON_CHARS)] = ""
    rejection_type: Annotated[str, Meta(max_length=64)] | None = None
    score: float | None = None
    metrics: Annotated[dict[_MetricName, float], Meta(max_length=64)] | None = None
    log_index: _Count | None = None
    contribution_hash: _Hash32 | None = None


class ContributionResult(Message, frozen=True):
    TYPE: ClassVar[str] = "contribution_result"
    result: ResultDoc


class Error(Message, frozen=True):
    TYPE: ClassVar[str] = "error"
    code: Annotated[str, Meta(min_length=1, max_length=64)]
    message: Annotated[str, Meta(max_length=1024)] = ""


class Consensus(Message, frozen=True):
    """A consensus core message as JSON text: the receiver decodes it
    (:func:`ian.consensus.codec.decode_json`) once it knows the sender may send one."""

    TYPE: ClassVar[str] = "consensus"
    msg: Raw

    def __post_init__(self) -> None:
        _object_text(self.msg, "msg")


class Goodbye(Message, frozen=True):
    TYPE: ClassVar[str] = "goodbye"
    reason: Annotated[str, Meta(max_length=256)] = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Ping,
        Pong,
        GetPeers,
        Peers,
        GetGenesis,
        GenesisDoc,
        Status,
        BlockAnnounce,
        GetBlocks,
        Blocks,
        ContributionForward,
        ContributionResult,
        Error,
        Goodbye,
        Consensus,
    )
}

#: Types that expect a reply: a node without a handler for one answers ``error unsupported``.
REQUEST_TYPES = frozenset(
    {"ping", "get_peers", "get_genesis", "get_blocks", "contribution_forward"}
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded frame: the typed body plus its correlation ids."""

    id: int
    re: int | None
    message: Message

    @property
    def type(self) -> str:
        return self.message.TYPE


class _Frame(Struct):
    """A frame before its type is known: the body's JSON text kept as it is (its syntax
    checked, no objects built)."""

    type: Annotated[str, Meta(max_length=64)]
    id: _Count
    body: Raw
    v: int = 0
    re: _Count | None = None


_ENCODER = msgspec.json.Encoder()
_FRAME = msgspec.json.Decoder(_Frame)
_JSON = msgspec.json.Decoder()
_METADATA = msgspec.json.Decoder(dict[str, Any])
_BODIES = {mtype: msgspec.json.Decoder(cls) for mtype, cls in MESSAGE_TYPES.items()}
_UNBOUNDED_BODIES = {BlockAnnounce, Blocks, ContributionForward, Consensus, GenesisDoc}
#: the most bytes of JSON a body of each type may have (the others: the frame's limit)
_BODY_LIMITS = {
    cls.TYPE: SMALL_BODY_BYTES for cls in MESSAGE_TYPES.values() if cls not in _UNBOUNDED_BODIES
} | {GenesisDoc.TYPE: MAX_GENESIS_BYTES + SMALL_BODY_BYTES}


def encode_envelope(envelope: Envelope) -> bytes:
    """The UTF-8 JSON payload of ``envelope`` (compact; no framing). A body's fields are
    written in declaration order, defaults included; floats (in a result) in their shortest
    form, which reads back as the same number."""
    return _ENCODER.encode(
        {
            "v": PROTOCOL_VERSION,
            "type": envelope.message.TYPE,
            "id": envelope.id,
            "re": envelope.re,
            "body": envelope.message,
        }
    )


def decode_envelope(payload: bytes) -> Envelope:
    """Parse and validate one frame payload; see the module docstring for the error contract.

    :class:`InvalidMessage` carries ``message_type`` and ``message_id`` so a request with a bad
    body can still be answered with an error.
    """
    try:
        frame = _FRAME.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(f"malformed envelope: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"frame is not UTF-8 JSON: {exc}") from None
    if frame.v != PROTOCOL_VERSION:
        raise ProtocolViolation(f"unsupported envelope version {frame.v!r}")
    mtype, mid, body = frame.type, frame.id, frame.body
    decoder = _BODIES.get(mtype)
    if decoder is None:
        raise ProtocolViolation(f"unknown message type {mtype!r}")
    if not _is_object(body):
        raise ProtocolViolation(f"malformed {mtype} envelope: the body is not an object")
    limit = _BODY_LIMITS.get(mtype)
    if limit is not None and len(body) > limit:
        raise InvalidMessage(
            f"invalid {mtype}: the body is {len(body)} bytes; the limit is {limit}",
            message_type=mtype,
            message_id=mid,
        )
    try:
        message = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(
            f"invalid {mtype}: {exc}", message_type=mtype, message_id=mid
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:  # the body's syntax was checked: text
        raise ProtocolViolation(f"frame is not UTF-8 JSON: {exc}") from None
    return Envelope(id=mid, re=frame.re, message=message)


# --------------------------------------------------------------------------- converters


def _raw_as_data(value: object) -> object:
    if isinstance(value, Raw):
        return _JSON.decode(value)
    raise NotImplementedError(f"{type(value).__name__} is not a wire type")


def doc_to_data(doc: Struct) -> object:
    """A doc (a block doc, a message) as plain JSON data, its JSON text decoded (for evidence
    files and reports)."""
    return msgspec.to_builtins(doc, enc_hook=_raw_as_data)


def contribution_to_doc(contribution: Contribution) -> ContributionDoc:
    """The wire doc of a contribution (what ``Contribution.to_wire()`` describes; metadata as
    its canonical JSON text)."""
    c = contribution
    metadata_json = c.metadata_json
    return ContributionDoc(
        goal_id=c.goal_id,
        agent_pack=AgentPackDoc(
            version=c.version,
            parameters=base64.b64encode(c.parameters).decode("ascii"),
            metadata=_EMPTY_OBJECT if metadata_json == "{}" else Raw(metadata_json.encode()),
        ),
        contributor_id=c.contributor_id,
        seed=c.seed,
    )


def contribution_from_doc(doc: ContributionDoc) -> Contribution:
    """Re-validate a wire contribution exactly as the API would; errors are InvalidMessage."""
    pack = doc.agent_pack
    try:
        raw_metadata = pack.metadata
        metadata: dict[str, Any] = {}
        if raw_metadata != _EMPTY_OBJECT:
            if len(raw_metadata) > MAX_METADATA_WIRE_BYTES:
                raise ValueError(
                    f"agent_pack.metadata is {len(raw_metadata)} bytes of JSON; "
                    f"the limit is {MAX_METADATA_WIRE_BYTES}"
                )
            metadata = _METADATA.decode(raw_metadata)  # not an object: a ValidationError
        return make_contribution(
            goal_id=doc.goal_id,
            version=pack.version,
            parameters=decode_parameters(pack.parameters),
            metadata=metadata,
            contributor_id=doc.contributor_id,
            seed=doc.seed,
        )
    except IanError as exc:
        raise InvalidMessage(f"invalid contribution: {exc.message}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # a peer's input never stops the node
        raise InvalidMessage(f"invalid contribution: {exc}") from None


def block_to_doc(block: Block) -> BlockDoc:
    """The wire doc of ``block`` (no verification). Built field by field rather than converted
    from ``BlockHeader.to_doc()``: that conversion validates, ~15 µs a block on the path that
    serves every block (measured on one-entry blocks)."""
    h = block.header
    return BlockDoc(
        header=HeaderDoc(
            entries_hash=h.entries_hash.hex(),
            goals={
                gid: GoalRootsDoc(
                    leaderboard_root=r.leaderboard_root.hex(),
                    leaderboard_size=r.leaderboard_size,
                    log_root=r.log_root.hex(),
                    log_size=r.log_size,
                )
                for gid, r in sorted(h.goals.items())
            },
            height=h.height,
            parent_hash=h.parent_hash.hex(),
            sequencer=h.sequencer,
            sequencer_key=h.sequencer_key.hex(),
            timestamp_ms=h.timestamp_ms,
        ),
        hash=block.hash.hex(),
        signature=block.signature.hex(),
        entries=[contribution_to_doc(c) for c in block.entries],
    )


def block_from_doc(doc: BlockDoc, check: Callable[[Block], None] | None = None) -> Block:
    """Convert a validated block doc; :class:`InvalidMessage` if an entry is invalid.

    Does not verify the hash, signature, parent or roots (the replication layer does). When
    given, ``check`` first sees the block without its entries (header, hash, signature) and may
    raise: the entries, most of a block's bytes and all of its metadata, are decoded only once
    it has passed (a peer cannot make us decode blocks that nobody trusted signed).
    """
    header = BlockHeader.from_doc(msgspec.to_builtins(doc.header))
    block_hash, signature = bytes.fromhex(doc.hash), bytes.fromhex(doc.signature)
    if check is not None:
        check(Block(header=header, hash=block_hash, signature=signature, entries=()))
    return Block(
        header=header,
        hash=block_hash,
        signature=signature,
        entries=tuple(contribution_from_doc(e) for e in doc.entries),
    )


_BLOCK_DOC = msgspec.json.Decoder(BlockDoc)


def encode_block(block: Block) -> bytes:
    """``block`` as one compact JSON block doc (a consensus payload)."""
    return _ENCODER.encode(block_to_doc(block))


def decode_block(data: bytes) -> Block:
    """The block in one JSON block doc; :class:`InvalidMessage` when it is not one."""
    try:
        doc = _BLOCK_DOC.decode(data)
    except (ValueError, RecursionError) as exc:  # msgspec's errors, bad UTF-8, deep nesting
        raise InvalidMessage(f"not a block doc: {exc}") from None
    return block_from_doc(doc)
