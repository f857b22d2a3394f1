"""The HTTP/1.1 protocol the API serves with: uvicorn's httptools protocol, with the request
head (request line and headers) bounded in bytes.

httptools buffers a header until it is complete, so a client sending one 64 MiB header made
the node hold 64 MiB per connection. Here the bytes received while a request head is still
incomplete are counted; past :data:`MAX_HEAD_BYTES` the client gets ``431 Request Header Fields
Too Large`` (the standard answer, RFC 6585) and the connection is closed: a connection holds at
most that much head plus one read (the event loop's read size) before it is dropped. Bodies
are bounded elsewhere (``max_request_bytes``).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ian.api.front_wire import MAX_HEAD_BYTES  # nginx allows 4 x 8 KiB by default

__all__ = ["MAX_HEAD_BYTES", "BoundedHttpToolsProtocol"]


def _too_large() -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "header_too_large",
                "message": f"request line and headers are larger than {MAX_HEAD_BYTES} bytes",
                "field": None,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that refuses a request head over :data:`MAX_HEAD_BYTES`."""

    _in_head = True
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._head_bytes = 0
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head:
            return
        # Still inside a request head after this chunk: count it whole. (A chunk in which a
        # head completed is not counted; one that also ended the previous request counts its
        # tail too, which only a pipelining client with big bodies could notice.)
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self.transport.write(_too_large())
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_begin(self) -> None:
        self._in_head = True  # a new request (first or next on a keep-alive connection)
        self._head_bytes = 0
        super().on_message_begin()
