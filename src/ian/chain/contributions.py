"""Contributions: the validated unit of work, its limits, and its hashes.

``contribution_hash`` is the interoperable identity of a log entry and the MMR leaf data::

    contribution_hash = sha256(canonical_json({
        "contributor_id", "goal_id", "metrics", "pack_hash" (hex), "score", "seed"
    }))
    leaf = sha256(0x00 ‖ contribution_hash)

so a third party holding a log entry can recompute its leaf and check an inclusion proof.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from ian.chain.hashing import canonical_json_str, canonical_json_text, pack_hash_from_parts
from ian.errors import InputError, PayloadTooLargeError

MAX_VERSION_CHARS = 64
MAX_PARAMETERS_BYTES = 10 * 1024 * 1024
MAX_METADATA_KEYS = 100
MAX_METADATA_BYTES = 64 * 1024
#: levels of nesting in metadata (the object itself is 1): what the API's JSON parser has always
#: let through (it stops at 200 levels of the whole request). Checked before anything recurses
#: into it, so no recursion limit, which depends on how deep the caller's stack is, decides:
#: every node decides the same.
MAX_METADATA_DEPTH = 200
MAX_CONTRIBUTOR_CHARS = 128
MAX_SEED = 2**63 - 1


# Bytes of a contribution in a P2P frame beyond its base64 parameters and metadata (its other
# fields and their JSON punctuation, generously), and of a block and a message around them.
ENTRY_OVERHEAD = 512
FRAME_OVERHEAD = 64 * 1024


def wire_size_bound(parameters_bytes: int, metadata_bytes: int = MAX_METADATA_BYTES) -> int:
    """An upper bound of a contribution's size in a P2P frame (parameters are base64)."""
    return 4 * ((parameters_bytes + 2) // 3) + metadata_bytes + ENTRY_OVERHEAD


@dataclass(slots=True)
class Contribution:
    """A submitted agent pack that passed stateless validation.

    ``parsed`` is the evaluator's parsed form of ``parameters`` and ``evaluated`` its result,
    when known (neither is part of consensus).
    """

    goal_id: str
    version: str
    parameters: bytes
    metadata: dict[str, Any]
    contributor_id: str
    seed: int
    pack_hash: bytes
    metadata_json: str = field(default="{}", compare=False)  # canonical JSON of metadata
    parsed: Any = field(default=None, compare=False)
    #: its evaluator's raw result (:data:`ian.chain.evaluation.RawResult`), when it was already
    #: evaluated on its way in (by the node's own API front, :mod:`ian.api.front_process`)
    evaluated: Any = field(default=None, compare=False)

    def wire_size(self) -> int:
        """An upper bound of this contribution's size in a P2P frame."""
        return wire_size_bound(len(self.parameters), len(self.metadata_json.encode()))

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe form carried in blocks and forwards (parameters base64)."""
        return {
            "goal_id": self.goal_id,
            "agent_pack": {
                "version": self.version,
                "parameters": base64.b64encode(self.parameters).decode("ascii"),
                "metadata": self.metadata,
            },
            "contributor_id": self.contributor_id,
            "seed": self.seed,
        }


def decode_parameters(text: str, *, max_bytes: int = MAX_PARAMETERS_BYTES) -> bytes:
    """Strict standard base64 → bytes, 1..max_bytes long."""
    # Cheap size guard before decoding: 4 base64 chars carry 3 bytes.
    if len(text) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLargeError(
            f"agent_pack.parameters is larger than {max_bytes} bytes",
            field="agent_pack.parameters",
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            "agent_pack.parameters is not valid base64", field="agent_pack.parameters"
        ) from None
    if not raw:
        raise InputError("agent_pack.parameters is empty", field="agent_pack.parameters")
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(
            f"agent_pack.parameters is {len(raw)} bytes; the limit is {max_bytes}",
            field="agent_pack.parameters",
        )
    return raw


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` has objects or arrays nested more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_text(value: str, field: str) -> None:
    """Refuse a string that is not Unicode text: a lone surrogate (``"\\ud800"`` in JSON that
    Python's parser lets through) cannot be encoded, hashed or stored."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InputError(f"{field} is not valid Unicode text", field=field) from None


def _flat_json(metadata: dict[str, Any]) -> str | None:
    """``canonical_json_text(metadata)`` for the usual shape, a flat object of strings and
    integers, without the generic encoder and the depth walk (1.8 -> 0.6 µs for a one-key
    object, of about 40 µs a follower spends applying a small contribution); None for any
    other shape.
    Byte-identical to the encoder (tested): keys sorted as it sorts them, each string as
    :func:`canonical_json_str` writes it, each integer as its ``repr``."""
    parts = []
    for key in sorted(metadata):  # mixed key types raise TypeError, as the encoder's sort does
        value = metadata[key]
        if type(key) is not str:
            return None
        if type(value) is str:
            parts.append(f"{canonical_json_str(key)}:{canonical_json_str(value)}")
        elif type(value) is int:
            parts.append(f"{canonical_json_str(key)}:{value!r}")
        else:
            return None
    return "{" + ",".join(parts) + "}"


def check_metadata(metadata: dict[str, Any]) -> str:
    """Check the limits; returns the canonical JSON text of ``metadata``."""
    if not metadata and type(metadata) is dict:
        return "{}"  # canonical_json_text({}), the common case
    if len(metadata) > MAX_METADATA_KEYS:
        raise InputError(
            f"agent_pack.metadata has {len(metadata)} keys; the limit is {MAX_METADATA_KEYS}",
            field="agent_pack.metadata",
        )
    try:
        text = _flat_json(metadata) if type(metadata) is dict else None
        if text is None:
            if _deeper_than(metadata, MAX_METADATA_DEPTH):
                raise InputError(
                    f"agent_pack.metadata is nested more than {MAX_METADATA_DEPTH} levels deep",
                    field="agent_pack.metadata",
                )
            text = canonical_json_text(metadata)
        size = len(text) if text.isascii() else len(text.encode())
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) included
        raise InputError(
            f"agent_pack.metadata is not plain JSON: {exc}", field="agent_pack.metadata"
        ) from None
    if size > MAX_METADATA_BYTES:
        raise InputError(
            f"agent_pack.metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
            field="agent_pack.metadata",
        )
    return text


def make_contribution(
    *,
    goal_id: str,
    version: str,
    parameters: bytes,
    metadata: dict[str, Any],
    contributor_id: str,
    seed: int,
) -> Contribution:
    """Build a contribution from decoded fields, checking the limits (no evaluator check)."""
    if not version or len(version) > MAX_VERSION_CHARS:
        raise InputError(
            f"agent_pack.version must be 1..{MAX_VERSION_CHARS} characters",
            field="agent_pack.version",
        )
    if not contributor_id or len(contributor_id) > MAX_CONTRIBUTOR_CHARS:
        raise InputError(
            f"contributor_id must be 1..{MAX_CONTRIBUTOR_CHARS} characters",
            field="contributor_id",
        )
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer 0..{MAX_SEED}", field="seed")
    _check_text(version, "agent_pack.version")
    _check_text(contributor_id, "contributor_id")
    metadata_json = check_metadata(metadata)
    return Contribution(
        goal_id=goal_id,
        version=version,
        parameters=parameters,
        metadata=metadata,
        contributor_id=contributor_id,
        seed=seed,
        pack_hash=pack_hash_from_parts(
            version, base64.b64encode(parameters).decode("ascii"), metadata_json
        ),
        metadata_json=metadata_json,
    )


def contribution_hash(c: Contribution, score: float, metrics_json: str) -> bytes:
    """See the module docstring for the exact encoding.

    ``metrics_json`` is ``canonical_json_text(metrics)``; the document is assembled with its
    keys already in canonical order, byte-identical to ``canonical_json(doc)`` (tested).
    """
    if not math.isfinite(score):
        raise ValueError("score must be finite")
    text = (
        f'{{"contributor_id":{canonical_json_str(c.contributor_id)},'
        f'"goal_id":{canonical_json_str(c.goal_id)},"metrics":{metrics_json},'
        f'"pack_hash":"{c.pack_hash.hex()}","score":{float(score)!r},"seed":{int(c.seed)}}}'
    )
    return hashlib.sha256(text.encode()).digest()
