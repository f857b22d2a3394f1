"""The Tau line protocol: one ``sendtx`` request, one reply line, over a fresh TCP connection.

Wire format (ASCII framing, UTF-8 payload)::

    client -> Tau   sendtx <compact JSON>\\r\\n
    Tau -> client   SUCCESS[ <detail>]\\r\\n        (anything else is a refusal)

A call succeeds iff the first reply line starts with ``SUCCESS``; the rest of that line (e.g. a
transaction hash) is returned to the caller. The reply must be a complete line, at most
:data:`MAX_REPLY_BYTES` bytes before its ``\\n``: a longer line, or a connection closed before
the line ends, is a failure even when the bytes received so far said ``SUCCESS``, because a
truncated acknowledgement cannot be trusted.

Each call opens its own connection and closes it afterwards: commits are rare (seconds to
minutes apart), so a pooled connection would only add stale-connection failure modes.

The encoding and reply parsing (:func:`encode_sendtx`, :func:`parse_reply`) do no I/O;
:func:`send_tx` is the only function here that touches a socket. Every failure is a
:class:`TauError` whose message names the endpoint and says what went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from ian.chain.hashing import canonical_json
from ian.config import PeerAddress
from ian.errors import IanError

__all__ = [
    "MAX_REPLY_BYTES",
    "TauError",
    "encode_sendtx",
    "parse_reply",
    "send_tx",
]

MAX_REPLY_BYTES = 4096
_FIX = "check that the Tau node runs and is reachable (IAN_TAU_ENDPOINT; `nc -zv HOST PORT`)"


class TauError(IanError):
    """A Tau call failed: unreachable, timed out, refused the transaction or answered badly."""

    code = "tau"


def encode_sendtx(tx: Mapping[str, Any]) -> bytes:
    """The request line for ``tx``: ``sendtx `` + compact, key-sorted JSON + CRLF.

    The JSON is the canonical encoding of :mod:`ian.chain.hashing` (no whitespace, so it cannot
    contain a line break). Raises ``ValueError``/``TypeError`` for values JSON cannot encode.
    """
    return b"sendtx " + canonical_json(dict(tx)) + b"\r\n"


def parse_reply(line: bytes, *, endpoint: str = "Tau") -> str:
    """Return the detail of a ``SUCCESS`` reply line (terminator already removed), e.g. a hash.

    Raises :class:`TauError` quoting (a bounded prefix of) any other reply.
    """
    text = line.rstrip(b"\r").decode("utf-8", errors="replace")
    if text.startswith("SUCCESS"):
        return text[len("SUCCESS") :].strip()
    shown = text if len(text) <= 200 else text[:200] + "..."
    raise TauError(f"Tau node at {endpoint} refused the transaction: {shown!r}")


async def send_tx(
    endpoint: PeerAddress,
    tx: Mapping[str, Any],
    *,
    timeout_s: float,
    max_reply_bytes: int = MAX_REPLY_BYTES,
) -> str:
    """Send ``tx`` to the Tau node at ``endpoint``; return the detail of its SUCCESS reply.

    ``timeout_s`` bounds the connection (name resolution included) and, separately, the
    exchange (send plus the reply line). Raises :class:`TauError` when the connection is
    refused or cannot be made, a timeout expires, the reply is not ``SUCCESS...``, is longer
    than ``max_reply_bytes`` or is cut off by the server closing the connection.
    """
    where = str(endpoint)
    request = encode_sendtx(tx)
    try:
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
    except TimeoutError:
        raise TauError(
            f"Tau node at {where} did not accept a connection within {_secs(timeout_s)}",
            fix=_FIX,
        ) from None
    except OSError as exc:
        # anyio reports "All connection attempts failed" with the last attempt's error as cause.
        cause = exc if exc.__cause__ is None else exc.__cause__
        if isinstance(cause, ConnectionRefusedError):
            raise TauError(f"Tau node at {where} refused the connection", fix=_FIX) from None
        reason = getattr(cause, "strerror", None) or str(cause)
        raise TauError(f"cannot connect to the Tau node at {where}: {reason}", fix=_FIX) from None
    async with stream:
        try:
            with anyio.fail_after(timeout_s):
                await stream.send(request)
                reader = BufferedByteReceiveStream(stream)
                line = await reader.receive_until(b"\n", max_reply_bytes)
        except TimeoutError:
            raise TauError(
                f"Tau node at {where} did not reply within {_secs(timeout_s)}", fix=_FIX
            ) from None
        except anyio.DelimiterNotFound:
            raise _too_long(where, max_reply_bytes) from None
        except anyio.IncompleteRead:
            raise TauError(
                f"Tau node at {where} closed the connection before completing its reply line"
            ) from None
        except (anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            raise TauError(
                f"connection to the Tau node at {where} broke: {_reason(exc)}", fix=_FIX
            ) from None
    # receive_until bounds only how far it reads ahead: a long line in one read gets through.
    if len(line) > max_reply_bytes:
        raise _too_long(where, max_reply_bytes)
    return parse_reply(line, endpoint=where)


def _too_long(where: str, limit: int) -> TauError:
    return TauError(f"Tau node at {where} sent a reply line longer than {limit} bytes")


def _secs(value: float) -> str:
    return f"{value:g}s"


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(exc) or (str(cause) if cause else type(exc).__name__)
