"""The ``trivial`` evaluator: metrics derived from ``sha256(parameters)``, for benchmarks and tests.

It accepts any non-empty bytes and costs one hash: ``reward`` in [0, 1), ``risk`` in [0, 0.5),
``complexity`` in [0, 10), no optional metrics. Each value is a 53-bit field of the digest
(bits 255..203, 202..150, 149..97 counting from the least significant) times 2**-53, then times
the range's width: identical on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ian.errors import InputError
from ian.evaluators import Metrics

_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0  # 2**-53, exact
_MASK53 = (1 << 53) - 1


class TrivialEvaluator:
    """Hash-based metrics; ``check`` returns the parameter bytes unchanged."""

    name = "trivial"
    costly = False  # one hash: cheaper than sending it to a worker process

    def check(self, parameters: bytes, metadata: Mapping[str, Any]) -> bytes:
        """Accept any non-empty ``bytes``; raise ``InputError`` otherwise."""
        if not isinstance(parameters, bytes | bytearray):
            raise InputError("parameters must be bytes", field="agent_pack.parameters")
        if not parameters:
            raise InputError("parameters must not be empty", field="agent_pack.parameters")
        return bytes(parameters)

    def evaluate(self, parsed: object) -> Metrics:
        """Metrics from ``sha256(parsed)``; ``parsed`` is what :meth:`check` returned."""
        if not isinstance(parsed, bytes):
            raise TypeError("trivial evaluator expects the bytes returned by check()")
        # Three disjoint 53-bit fields of the digest, each scaled into [0, 1) exactly.
        bits = int.from_bytes(hashlib.sha256(parsed).digest(), "big")
        return Metrics(
            reward=(bits >> 203) * _TWO_POW_MINUS_53,
            risk=((bits >> 150) & _MASK53) * _TWO_POW_MINUS_53 * 0.5,
            complexity=((bits >> 97) & _MASK53) * _TWO_POW_MINUS_53 * 10.0,
        )
