"""Canonical encodings and the content hashes built on them (ARCHITECTURE §8).

These definitions are interoperable: a third party must be able to recompute every hash from
this docstring alone.

Canonical JSON
    ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False)`` encoded as UTF-8. Object keys must be strings and are sorted by Unicode
    code point; there is no whitespace; non-ASCII characters are written literally (UTF-8), not
    as ``\\u`` escapes; NaN and ±Infinity are refused. Floats are written with Python's
    shortest round-trip ``repr`` (``0.1`` -> ``0.1``, ``1.0`` -> ``1.0``, ``1e16`` ->
    ``1e+16``), so the encoding of a given value is deterministic. Integers and floats differ
    (``1`` vs ``1.0``): callers that mean a float must pass a float.

Pack hash
    The hash of an agent pack (version, parameters, metadata) is::

        sha256(canonical_json({
            "metadata": metadata,                       # the JSON object as submitted
            "parameters": base64(parameters),           # RFC 4648 standard alphabet, padded
            "version": version,
        }))

    i.e. the SHA-256 of the UTF-8 bytes of the compact, key-sorted JSON document
    ``{"metadata":{...},"parameters":"<base64>","version":"<version>"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "canonical_json",
    "canonical_json_str",
    "canonical_json_text",
    "pack_hash",
    "pack_hash_from_parts",
    "sha256",
]


# One encoder for the process: json.dumps with options builds a new encoder per call, which
# costs more than the encoding itself on the hot path.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json_text(value: Any) -> str:
    """:func:`canonical_json` as a ``str`` (before UTF-8 encoding)."""
    return _CANONICAL.encode(value)


def canonical_json_str(text: str) -> str:
    """:func:`canonical_json_text` of a string, without the generic encoder for the common case:
    printable ASCII with no ``"`` or ``\\`` is written as it is between quotes (the encoder
    escapes only ``"``, ``\\`` and control characters; anything else goes through it). Tested
    against the encoder."""
    if (
        type(text) is str
        and text.isascii()
        and text.isprintable()
        and '"' not in text
        and "\\" not in text
    ):
        return f'"{text}"'
    return _CANONICAL.encode(text)


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON encoding of ``value`` as UTF-8 bytes (see module docstring).

    Raises ``ValueError`` for NaN/±Infinity and ``TypeError`` for values JSON cannot encode
    (including non-string keys that cannot be sorted against each other).
    """
    return _CANONICAL.encode(value).encode()


def sha256(data: bytes) -> bytes:
    """Return the 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def pack_hash(version: str, parameters: bytes, metadata: Mapping[str, Any]) -> bytes:
    """Return the 32-byte pack hash of an agent pack (encoding in the module docstring)."""
    return pack_hash_from_parts(
        version, base64.b64encode(parameters).decode("ascii"), canonical_json_text(dict(metadata))
    )


def pack_hash_from_parts(version: str, parameters_b64: str, metadata_json: str) -> bytes:
    """:func:`pack_hash` when the canonical metadata JSON and the base64 are already at hand.

    The keys are in canonical order, so the document is byte-identical to
    ``canonical_json({"metadata", "parameters", "version"})``.
    """
    document = (
        f'{{"metadata":{metadata_json},"parameters":"{parameters_b64}",'
        f'"version":{canonical_json_str(version)}}}'
    )
    return hashlib.sha256(document.encode()).digest()
