"""Consensus failures, as a branch of the one :mod:`ian.errors` hierarchy.

::

    IanError
    └── ConsensusError              anything the consensus code reports on purpose
        ├── CertificateError        an election or commit certificate does not prove its claim
        ├── CodecError              a wire or stored document is not a well-formed message
        └── InvariantViolation      the simulator caught the core breaking a safety or
                                    liveness property (``fix`` holds the replay command)
"""

from __future__ import annotations

from ian.errors import IanError

__all__ = ["CertificateError", "CodecError", "ConsensusError", "InvariantViolation"]


class ConsensusError(IanError):
    """Base of consensus failures."""

    code = "consensus"


class CertificateError(ConsensusError):
    """A certificate is forged, for another chain, a minority, or the wrong authority set."""

    code = "certificate_invalid"


class CodecError(ConsensusError):
    """A document does not decode to a consensus message (wrong shape, type, length or range)."""

    code = "consensus_codec"


class InvariantViolation(ConsensusError):
    """A simulated run broke an invariant; ``fix`` is the command that replays it."""

    code = "invariant_violation"
