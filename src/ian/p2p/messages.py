"""P2P wire messages (protocol version 1): pydantic models validated on decode (block docs:
msgspec structs, see below). No I/O.

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
genesis                genesis: the genesis document (its chain id is the hello's)
peers                  peers: [{node_id, address}] (at most 50)
status                 height, head_hash (periodic height gossip)
block_announce         block: block doc (below)
get_blocks             from_height, max_blocks (1..500)
blocks                 blocks: [block doc] (at most 500)
contribution_forward   contribution: ``Contribution.to_wire()``, token (the submission token
                       when the network requires one, else null)
contribution_result    result: {...} (the sequencer's answer, as the API would return it)
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

A ``consensus`` body is checked here only as ``{"msg": object}``; the receiver decodes ``msg``
with :func:`ian.consensus.codec.decode`, which raises
:class:`~ian.consensus.errors.CodecError` for a malformed one.

Decoding failures: bytes that are not a JSON envelope of protocol version 1, or an unknown
``type``, raise :class:`ProtocolViolation`; a known type whose body does not validate raises
:class:`InvalidMessage`. A string that is not Unicode text (bad UTF-8, a lone surrogate
escape such as ``"\\ud800"``) anywhere makes the frame a :class:`ProtocolViolation`. Unknown
*fields* in a body are ignored so that a newer minor release can add optional fields without
breaking older peers.

Frames are read and written with msgspec: the envelope is parsed with its body kept as bytes
until its type is known; block-carrying bodies (``blocks``, ``block_announce``) then decode
straight into their msgspec docs, every other body into plain JSON data for its pydantic model.
Encoding hands msgspec the message's fields as they are (block docs included), so a reply of
thousands of entries is not dumped to dicts first.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeGuard

import msgspec
from msgspec import Meta, Struct
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
)

from ian.chain.blocks import Block, BlockHeader
from ian.chain.contributions import MAX_SEED, Contribution, decode_parameters, make_contribution
from ian.chain.goals import GOAL_ID_PATTERN
from ian.config import parse_peer_address
from ian.errors import IanError
from ian.p2p.errors import InvalidMessage, ProtocolViolation

__all__ = [
    "MAX_BLOCKS_PER_MESSAGE",
    "MAX_PEERS_PER_MESSAGE",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "BlockAnnounce",
    "BlockDoc",
    "Blocks",
    "Consensus",
    "ContributionDoc",
    "ContributionForward",
    "ContributionResult",
    "Envelope",
    "Error",
    "GetBlocks",
    "GetPeers",
    "Goodbye",
    "Hello",
    "Message",
    "PeerEntry",
    "Peers",
    "Ping",
    "Pong",
    "Status",
    "block_from_doc",
    "block_to_doc",
    "contribution_from_doc",
    "contribution_to_doc",
    "decode_block",
    "decode_envelope",
    "encode_block",
    "encode_envelope",
]

PROTOCOL_VERSION = 1
MAX_PEERS_PER_MESSAGE = 50
MAX_BLOCKS_PER_MESSAGE = 500
_U63 = 2**63 - 1


def _canonical_address(value: str) -> str:
    # parse_peer_address raises PeerAddressError, a ValueError, which pydantic reports.
    return str(parse_peer_address(value))


NodeId = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
Hash32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Key32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0, le=_U63)]
Address = Annotated[str, Field(max_length=300), AfterValidator(_canonical_address)]


class _Model(BaseModel):
    # strict: JSON "1" is not the integer 1, 0/1 are not booleans.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Message(_Model):
    """Base of message bodies; each subclass names its wire ``TYPE``."""

    TYPE: ClassVar[str] = ""


class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    network_id: str = Field(min_length=1, max_length=64)
    protocol_version: int = Field(ge=1, le=65535)
    node_id: NodeId
    height: Count
    head_hash: Hash32
    listen_addr: Address | None = None
    agent: str = Field(default="", max_length=128)
    sequencer: bool = False
    chain_id: Key32 | None = None


class Ping(Message):
    TYPE: ClassVar[str] = "ping"
    nonce: Count


class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    nonce: Count


class GetPeers(Message):
    TYPE: ClassVar[str] = "get_peers"


class GetGenesis(Message):
    TYPE: ClassVar[str] = "get_genesis"


class GenesisDoc(Message):
    TYPE: ClassVar[str] = "genesis"
    genesis: dict[str, Any]


class PeerEntry(_Model):
    node_id: NodeId
    address: Address


class Peers(Message):
    TYPE: ClassVar[str] = "peers"
    peers: list[PeerEntry] = Field(default_factory=list, max_length=MAX_PEERS_PER_MESSAGE)


class Status(Message):
    TYPE: ClassVar[str] = "status"
    height: Count
    head_hash: Hash32


# Block docs are msgspec structs, not pydantic models: a follower catching up decodes thousands of
# entries a second, and msgspec checks the same constraints in a fraction of the time (and turns
# into the chain's types without a dump in between). In a pydantic message they are a field of
# their own kind (_converter): validated by msgspec.convert, serialised by msgspec.to_builtins.
# Patterns are anchored with \A and \Z: msgspec searches with Python's re, where $ also
# matches before a final newline.
_WHash32 = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]
_WSignature = Annotated[str, Meta(pattern=r"\A[0-9a-f]{128}\Z")]
_WNodeId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{40}\Z")]
_WCount = Annotated[int, Meta(ge=0, le=_U63)]
_WGoalId = Annotated[str, Meta(pattern=r"\A" + GOAL_ID_PATTERN.strip("^$") + r"\Z")]


class GoalRootsDoc(Struct, frozen=True):
    leaderboard_root: _WHash32
    leaderboard_size: _WCount
    log_root: _WHash32
    log_size: _WCount


class HeaderDoc(Struct, frozen=True):
    entries_hash: _WHash32
    goals: Annotated[dict[_WGoalId, GoalRootsDoc], Meta(max_length=10_000)]
    height: Annotated[int, Meta(ge=1, le=_U63)]
    parent_hash: _WHash32
    sequencer: _WNodeId
    sequencer_key: _WHash32
    timestamp_ms: _WCount


class AgentPackDoc(Struct, frozen=True):
    version: Annotated[str, Meta(min_length=1, max_length=64)]
    parameters: Annotated[str, Meta(min_length=1)]
    metadata: dict[str, Any] = {}


class ContributionDoc(Struct, frozen=True):
    goal_id: _WGoalId
    agent_pack: AgentPackDoc
    contributor_id: Annotated[str, Meta(min_length=1, max_length=128)]
    seed: Annotated[int, Meta(ge=0, le=MAX_SEED)]


class BlockDoc(Struct, frozen=True):
    header: HeaderDoc
    hash: _WHash32
    signature: _WSignature
    entries: Annotated[list[ContributionDoc], Meta(max_length=10_000)]


def _converter(kind: Any) -> PlainValidator:
    """Validation of a pydantic field holding msgspec docs of type ``kind`` (see above)."""

    def convert(value: Any) -> Any:
        try:
            return msgspec.convert(value, kind)  # its ValidationError is a ValueError: reported
        except RecursionError:
            raise ValueError("nested too deeply") from None

    return PlainValidator(convert)


_AS_JSON_DATA = PlainSerializer(msgspec.to_builtins)
_BlockField = Annotated[BlockDoc, _converter(BlockDoc), _AS_JSON_DATA]
_BlocksField = Annotated[
    list[BlockDoc],
    _converter(Annotated[list[BlockDoc], Meta(max_length=MAX_BLOCKS_PER_MESSAGE)]),
    _AS_JSON_DATA,
]
_ContributionField = Annotated[ContributionDoc, _converter(ContributionDoc), _AS_JSON_DATA]


class BlockAnnounce(Message):
    TYPE: ClassVar[str] = "block_announce"
    block: _BlockField


class GetBlocks(Message):
    TYPE: ClassVar[str] = "get_blocks"
    from_height: Count
    max_blocks: int = Field(ge=1, le=MAX_BLOCKS_PER_MESSAGE)


class Blocks(Message):
    TYPE: ClassVar[str] = "blocks"
    blocks: _BlocksField = Field(default_factory=list)


class ContributionForward(Message):
    TYPE: ClassVar[str] = "contribution_forward"
    contribution: _ContributionField
    #: the submission token the forwarding node holds (when submissions need one)
    token: str | None = Field(default=None, max_length=512)


class ContributionResult(Message):
    TYPE: ClassVar[str] = "contribution_result"
    result: dict[str, Any]


class Error(Message):
    TYPE: ClassVar[str] = "error"
    code: str = Field(min_length=1, max_length=64)
    message: str = Field(default="", max_length=1024)


class Consensus(Message):
    """A consensus core message; ``msg`` is decoded by the receiver (:mod:`ian.consensus.codec`)."""

    TYPE: ClassVar[str] = "consensus"
    msg: dict[str, Any]


class Goodbye(Message):
    TYPE: ClassVar[str] = "goodbye"
    reason: str = Field(default="", max_length=256)


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


def _json_data(value: Any) -> Any:
    """msgspec's hook for what it cannot encode itself: a nested model (a peer entry)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise NotImplementedError(f"{type(value).__name__} is not a wire type")


_ENCODER = msgspec.json.Encoder(enc_hook=_json_data)


def encode_envelope(envelope: Envelope) -> bytes:
    """The UTF-8 JSON payload of ``envelope`` (compact; no framing).

    The body is the message's fields as they are, in declaration order: the bytes of
    ``model_dump(mode="json")``, without building that copy (every field is a JSON value, a
    msgspec doc or a model). Floats (in a genesis document, a result) are written in their
    shortest form, which reads back as the same number."""
    message = envelope.message
    body = {name: getattr(message, name) for name in type(message).model_fields}
    return _ENCODER.encode(
        {
            "v": PROTOCOL_VERSION,
            "type": message.TYPE,
            "id": envelope.id,
            "re": envelope.re,
            "body": body,
        }
    )


class _Frame(Struct):
    """A frame before its type is known: any JSON value per envelope field (checked by
    :func:`decode_envelope`), the body's JSON text kept as it is (its syntax checked)."""

    v: Any = None
    type: Any = None
    id: Any = None
    re: Any = None
    body: msgspec.Raw = msgspec.Raw(b"")


class _BlocksBody(Struct):
    blocks: Annotated[list[BlockDoc], Meta(max_length=MAX_BLOCKS_PER_MESSAGE)] = []


class _BlockAnnounceBody(Struct):
    block: BlockDoc


_FRAME = msgspec.json.Decoder(_Frame)
_JSON = msgspec.json.Decoder()
_BLOCKS_BODY = msgspec.json.Decoder(_BlocksBody)
_ANNOUNCE_BODY = msgspec.json.Decoder(_BlockAnnounceBody)


def _typed_body(mtype: str, body: msgspec.Raw) -> Message | None:
    """The message of a block-carrying ``body``, decoded and checked by msgspec with the same
    constraints as its model's fields (None for the other types); raises msgspec's errors."""
    if mtype == Blocks.TYPE:
        return Blocks.model_construct(blocks=_BLOCKS_BODY.decode(body).blocks)
    if mtype == BlockAnnounce.TYPE:
        return BlockAnnounce.model_construct(block=_ANNOUNCE_BODY.decode(body).block)
    return None


def _is_int(value: object) -> TypeGuard[int]:
    """True for an int (not a bool) in ``[0, 2**63)``: a valid envelope id or version."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U63


def decode_envelope(payload: bytes) -> Envelope:
    """Parse and validate one frame payload; see the module docstring for the error contract.

    :class:`InvalidMessage` carries ``message_type`` and ``message_id`` so a request with a bad
    body can still be answered with an error.
    """
    try:
        frame = _FRAME.decode(payload)
    except msgspec.ValidationError:
        raise ProtocolViolation("frame is not a JSON object") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"frame is not UTF-8 JSON: {exc}") from None
    version = frame.v
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolViolation(f"unsupported envelope version {version!r}")
    mtype, mid, re, body = frame.type, frame.id, frame.re, frame.body
    if not isinstance(mtype, str):
        raise ProtocolViolation("envelope has no type")
    cls = MESSAGE_TYPES.get(mtype)
    if cls is None:
        raise ProtocolViolation(f"unknown message type {mtype[:64]!r}")
    if not _is_int(mid) or not (re is None or _is_int(re)) or bytes(memoryview(body)[:1]) != b"{":
        raise ProtocolViolation(f"malformed {mtype} envelope (id, re or body)")
    try:
        message = _typed_body(mtype, body)
        if message is None:
            message = cls.model_validate(_JSON.decode(body))
    except ValidationError as exc:
        raise InvalidMessage(
            f"invalid {mtype}: {_summary(exc)}", message_type=mtype, message_id=mid
        ) from None
    except msgspec.ValidationError as exc:
        raise InvalidMessage(
            f"invalid {mtype}: {exc}", message_type=mtype, message_id=mid
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:  # the body's syntax was checked: text
        raise ProtocolViolation(f"frame is not UTF-8 JSON: {exc}") from None
    return Envelope(id=mid, re=re, message=message)


def _summary(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


# --------------------------------------------------------------------------- converters


def contribution_to_doc(contribution: Contribution) -> ContributionDoc:
    """The wire doc of a contribution (what ``Contribution.to_wire()`` describes)."""
    c = contribution
    return ContributionDoc(
        goal_id=c.goal_id,
        agent_pack=AgentPackDoc(
            version=c.version,
            parameters=base64.b64encode(c.parameters).decode("ascii"),
            metadata=c.metadata,
        ),
        contributor_id=c.contributor_id,
        seed=c.seed,
    )


def contribution_from_doc(doc: ContributionDoc) -> Contribution:
    """Re-validate a wire contribution exactly as the API would; errors are InvalidMessage."""
    pack = doc.agent_pack
    try:
        return make_contribution(
            goal_id=doc.goal_id,
            version=pack.version,
            parameters=decode_parameters(pack.parameters),
            metadata=dict(pack.metadata),
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


def block_from_doc(doc: BlockDoc) -> Block:
    """Convert a validated block doc; :class:`InvalidMessage` if an entry is invalid.

    Does not verify the hash, signature, parent or roots (the replication layer does).
    """
    header = BlockHeader.from_doc(msgspec.to_builtins(doc.header))
    return Block(
        header=header,
        hash=bytes.fromhex(doc.hash),
        signature=bytes.fromhex(doc.signature),
        entries=tuple(contribution_from_doc(e) for e in doc.entries),
    )


_BLOCK_DOC = msgspec.json.Decoder(BlockDoc)


def encode_block(block: Block) -> bytes:
    """``block`` as one compact JSON block doc (a consensus payload)."""
    return msgspec.json.encode(block_to_doc(block))


def decode_block(data: bytes) -> Block:
    """The block in one JSON block doc; :class:`InvalidMessage` when it is not one."""
    try:
        doc = _BLOCK_DOC.decode(data)
    except (ValueError, RecursionError) as exc:  # msgspec's errors, bad UTF-8, deep nesting
        raise InvalidMessage(f"not a block doc: {exc}") from None
    return block_from_doc(doc)
