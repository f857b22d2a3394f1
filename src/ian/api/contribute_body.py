"""Decoding the body of ``POST /api/v1/contribute``: msgspec for the common case, pydantic for
everything else.

:class:`ian.api.models.ContributeRequest` (pydantic, strict, unknown fields forbidden) is the
contract and the OpenAPI schema. Validating it costs tens of microseconds per request, so the
usual body — no metadata — is decoded by a msgspec struct of the same shape first. msgspec is as
strict here as the model (no coercion: ``"seed": true``, ``"5"`` or ``1.0`` fail; unknown fields
fail), and whenever it fails, or the pack carries metadata (an arbitrary JSON object, whose
decoded values feed the pack hash), the body is validated by the model itself: every error
message, and every value that reaches the chain, is the model's.
``tests/ian/api/test_contribute_body.py`` checks that both decoders agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import ValidationError

from ian.api import models as m
from ian.errors import InputError, RequestError

__all__ = ["ContributeFields", "parse_contribute_body", "parse_plain_body"]

_EMPTY_OBJECT = b"{}"


class _PackBody(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    parameters: str
    # Kept raw: only the empty object is taken on this path (see the module docstring).
    metadata: msgspec.Raw = msgspec.Raw(_EMPTY_OBJECT)


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    goal_id: str
    agent_pack: _PackBody
    contributor_id: str
    seed: int = 0


_decoder = msgspec.json.Decoder(_Body)


@dataclass(frozen=True, slots=True)
class ContributeFields:
    """The fields of a contribute request, as decoded (limits are checked by the intake)."""

    goal_id: str
    version: str
    parameters: str
    metadata: dict[str, Any]
    contributor_id: str
    seed: int


def parse_plain_body(body: bytes) -> ContributeFields | None:
    """The fields of the usual body (no metadata) by the fast decoder; None for any other body
    (:func:`parse_contribute_body` then judges it)."""
    try:
        fast = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if bytes(fast.agent_pack.metadata) != _EMPTY_OBJECT:
        return None
    pack = fast.agent_pack
    return ContributeFields(
        fast.goal_id, pack.version, pack.parameters, {}, fast.contributor_id, fast.seed
    )


def parse_contribute_body(body: bytes) -> ContributeFields:
    """The request's fields; :class:`~ian.errors.InputError` (400) naming the first problem."""
    plain = parse_plain_body(body)
    if plain is not None:
        return plain
    try:
        req = m.ContributeRequest.model_validate_json(body)
    except ValueError as exc:
        raise _validation_to_input(exc) from None
    pack_in = req.agent_pack
    return ContributeFields(
        req.goal_id,
        pack_in.version,
        pack_in.parameters,
        pack_in.metadata,
        req.contributor_id,
        req.seed,
    )


def _validation_to_input(exc: ValueError) -> RequestError:
    """The InputError (400) naming the first problem of a failed body validation."""
    if not isinstance(exc, ValidationError) or not exc.errors():
        return InputError("request body is not valid", code="malformed")
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return InputError("request body is not valid JSON", code="malformed")
    field = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "missing":
        return InputError(f"{field} is required", field=field)
    if first["type"] == "extra_forbidden":
        return InputError(f"{field} is not a known field", field=field)
    return InputError(f"{field or 'request body'}: {first['msg']}", field=field)
