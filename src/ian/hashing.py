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

__all__ = ["canonical_json", "pack_hash", "sha256"]


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON encoding of ``value`` as UTF-8 bytes (see module docstring).

    Raises ``ValueError`` for NaN/±Infinity and ``TypeError`` for values JSON cannot encode
    (including non-string keys that cannot be sorted against each other).
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256(data: bytes) -> bytes:
    """Return the 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def pack_hash(version: str, parameters: bytes, metadata: Mapping[str, Any]) -> bytes:
    """Return the 32-byte pack hash of an agent pack (encoding in the module docstring)."""
    document = {
        "metadata": dict(metadata),
        "parameters": base64.b64encode(parameters).decode("ascii"),
        "version": version,
    }
    return hashlib.sha256(canonical_json(document)).digest()
