"""What the node and its API front processes (:mod:`ian.api.front_process`) say to each other.

Two socket pairs per front, made by the node and inherited by the front:

- the *channel* (a stream): the front sends one :data:`Ask` per ``POST /api/v1/contribute`` it
  read (kind :data:`REQUEST`), and the node answers each with one :data:`Answer` (any order;
  matched by id). When the node has admitted the contribution (ban, token, rate limits, body,
  goal, parameters: nothing is evaluated for a request it refuses) and its goal's evaluator is
  costly, the answer is :data:`EVALUATE` instead: the front evaluates the pack (stateless work,
  done in parallel in the fronts) and sends the result in a second ask of the same id (kind
  :data:`EVALUATION`), which the node answers for good. A frame is a 4-byte big-endian length
  and a msgpack array, at most :func:`max_frame` bytes.
- the *hand-off* socket (``SOCK_SEQPACKET``): any other request, the connection is given to the
  node whole: one message of the bytes the front read and did not answer, carrying the
  connection's file descriptor (``SCM_RIGHTS``). The node serves it from there as if it had
  accepted it.

Light on purpose: a front imports this and msgspec, not the node.
"""

from __future__ import annotations

import struct

import msgspec

__all__ = [
    "EVALUATE",
    "EVALUATION",
    "HANDOFF_MAX_BYTES",
    "HEADER",
    "MAX_HEAD_BYTES",
    "MAX_MESSAGE_CHARS",
    "REQUEST",
    "Answer",
    "Ask",
    "Evaluated",
    "decode_answer",
    "decode_ask",
    "encode",
    "max_frame",
]

#: a request head (request line and headers), at most, on the API's port: past it the node's
#: server answers 431 (:mod:`ian.api.http_limits`) and a front hands the connection over
MAX_HEAD_BYTES = 64 * 1024

#: a frame's length prefix
HEADER = struct.Struct(">I")

#: what a front's evaluator said of the pack (:data:`ian.chain.evaluation.RawResult` without
#: the "error" kind): ("ok", (reward, risk, complexity, sharpe_ratio, max_drawdown)) or
#: ("invalid", message); None when the front did not evaluate it
Evaluated = tuple[str, tuple[float, float, float, float | None, float | None] | str] | None
#: kind (:data:`REQUEST` or :data:`EVALUATION`), request id, the client's address (as the socket
#: says), its Authorization and X-Forwarded-For headers (first of each, None when absent), the
#: body; or, for an evaluation, empty fields and the evaluation
Ask = tuple[int, int, str, str | None, str | None, bytes, Evaluated]
REQUEST = 0
EVALUATION = 1
#: the status of an :data:`Answer` that asks the front to evaluate the pack and send it back
EVALUATE = 0
#: the longest evaluator message a front sends (a longer one: the node evaluates the pack)
MAX_MESSAGE_CHARS = 4096
#: request id, status, headers (name, value; the Content-Length among them), body
Answer = tuple[int, int, list[tuple[bytes, bytes]], bytes]

#: the bytes a front hands over with a connection, at most: a request head it could not
#: finish (64 KiB) plus one read
HANDOFF_MAX_BYTES = 192 * 1024

_encoder = msgspec.msgpack.Encoder()
_ask_decoder: msgspec.msgpack.Decoder[Ask] = msgspec.msgpack.Decoder(Ask)
_answer_decoder = msgspec.msgpack.Decoder(tuple[int, int, list[tuple[bytes, bytes]], bytes])


def max_frame(max_body: int) -> int:
    """The largest frame either side accepts: a body of ``max_body``, a request head's worth of
    headers (64 KiB) and room for the rest."""
    return max_body + 256 * 1024


def encode(message: Ask | Answer) -> bytes:
    """``message`` as one frame, length prefix included."""
    payload = _encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


def decode_ask(payload: bytes) -> Ask:
    return _ask_decoder.decode(payload)


def decode_answer(payload: bytes) -> Answer:
    return _answer_decoder.decode(payload)
