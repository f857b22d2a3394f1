"""Length-prefixed framing: a 4-byte big-endian payload length, then the payload. No I/O.

:class:`FrameDecoder` is incremental: feed it whatever bytes arrived and it returns the frames
that are now complete. Its memory is bounded: after :meth:`FrameDecoder.feed` returns, it holds
less than ``4 + limit`` bytes (one incomplete frame), where ``limit`` is ``first_frame_bytes`` until
the first frame is complete and ``max_frame_bytes`` after. A header that announces more than the
limit raises :class:`FrameTooLargeError` at once, from the 4-byte header alone, before any of the
body is buffered, and poisons the decoder (the stream cannot be resynchronised after a bad header).

The first frame of a peer is the only one allowed before its hello (it must be the hello or a
goodbye), so ``first_frame_bytes`` bounds what an unauthenticated-by-hello peer can make us hold.
"""

from __future__ import annotations

from ian.p2p.errors import FrameTooLargeError, ProtocolViolation

__all__ = ["HEADER_BYTES", "FrameDecoder", "encode_frame"]

HEADER_BYTES = 4


def encode_frame(payload: bytes, max_frame_bytes: int) -> bytes:
    """Header + payload. Raises ``ValueError`` if the payload is larger than the limit
    (sending it would only get us disconnected)."""
    if len(payload) > max_frame_bytes:
        raise ValueError(f"frame of {len(payload)} bytes exceeds the limit of {max_frame_bytes}")
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


class FrameDecoder:
    """Incremental frame decoder; see the module docstring for its contract."""

    def __init__(self, max_frame_bytes: int, *, first_frame_bytes: int | None = None) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        if first_frame_bytes is not None and first_frame_bytes < 1:
            raise ValueError("first_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self.first_frame_bytes = (
            max_frame_bytes
            if first_frame_bytes is None
            else min(first_frame_bytes, max_frame_bytes)
        )
        self._buf = bytearray()
        self._failed = False
        self._frames_seen = 0

    @property
    def limit(self) -> int:
        """The largest payload the next frame may announce."""
        return self.first_frame_bytes if self._frames_seen == 0 else self.max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes held for the next, still incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame payload completed by it, in order."""
        if self._failed:
            raise ProtocolViolation("frame stream already failed")
        self._buf += data
        frames: list[bytes] = []
        too_large: int | None = None
        too_large_limit = 0
        pos = 0
        with memoryview(self._buf) as view:
            while len(view) - pos >= HEADER_BYTES:
                length = int.from_bytes(view[pos : pos + HEADER_BYTES], "big")
                limit = self.limit
                if length > limit:
                    too_large, too_large_limit = length, limit
                    break
                end = pos + HEADER_BYTES + length
                if end > len(view):
                    break
                frames.append(bytes(view[pos + HEADER_BYTES : end]))
                self._frames_seen += 1
                pos = end
        if too_large is not None:
            # The buffer can only be resized once the memoryview is released.
            self._failed = True
            self._buf.clear()
            raise FrameTooLargeError(
                f"peer announced a {too_large}-byte frame; the limit is {too_large_limit}"
            )
        if pos:
            # One deletion per feed keeps decoding linear in the bytes received.
            del self._buf[:pos]
        return frames
