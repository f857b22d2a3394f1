"""Frame codec: round-trips, arbitrary chunking, hard size limit, bounded memory, fuzzing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ian.p2p.errors import FrameTooLargeError, ProtocolViolation
from ian.p2p.frames import HEADER_BYTES, FrameDecoder, encode_frame

LIMIT = 1024


def test_encode_prefixes_big_endian_length() -> None:
    assert encode_frame(b"abc", LIMIT) == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"", LIMIT) == b"\x00\x00\x00\x00"


def test_encode_refuses_over_limit() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(b"x" * (LIMIT + 1), LIMIT)


def test_truncated_frame_waits_for_the_rest() -> None:
    dec = FrameDecoder(LIMIT)
    wire = encode_frame(b"hello", LIMIT)
    assert dec.feed(wire[:2]) == []
    assert dec.feed(wire[2:7]) == []
    assert dec.buffered == 7
    assert dec.feed(wire[7:]) == [b"hello"]
    assert dec.buffered == 0


def test_several_frames_in_one_chunk() -> None:
    dec = FrameDecoder(LIMIT)
    wire = b"".join(encode_frame(p, LIMIT) for p in (b"a", b"", b"ccc"))
    assert dec.feed(wire + b"\x00") == [b"a", b"", b"ccc"]
    assert dec.buffered == 1


def test_exact_limit_is_accepted() -> None:
    dec = FrameDecoder(LIMIT)
    assert dec.feed(encode_frame(b"x" * LIMIT, LIMIT)) == [b"x" * LIMIT]


def test_over_limit_header_fails_before_the_body_arrives() -> None:
    dec = FrameDecoder(LIMIT)
    # Only the header: the decoder must not wait for (or buffer) 4 GiB of body.
    with pytest.raises(FrameTooLargeError):
        dec.feed(b"\xff\xff\xff\xff")
    assert dec.buffered == 0
    # The stream cannot be resynchronised: every later feed fails too.
    with pytest.raises(ProtocolViolation):
        dec.feed(encode_frame(b"ok", LIMIT))


def test_limit_plus_one_is_refused() -> None:
    dec = FrameDecoder(LIMIT)
    with pytest.raises(FrameTooLargeError):
        dec.feed((LIMIT + 1).to_bytes(4, "big"))


def _reference(data: bytes, limit: int) -> tuple[list[bytes], bool]:
    """Whole-buffer parse: frames, and whether an over-limit header occurs."""
    frames, pos = [], 0
    while len(data) - pos >= HEADER_BYTES:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if length > limit:
            return frames, True
        if pos + 4 + length > len(data):
            break
        frames.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, False


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_round_trip_under_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(p, 300) for p in payloads)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    dec = FrameDecoder(300)
    got: list[bytes] = []
    for start, end in itertools.pairwise(points):
        got += dec.feed(wire[start:end])
        assert dec.buffered < HEADER_BYTES + 300
    assert got == payloads
    assert dec.buffered == 0


@settings(max_examples=500, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=200), max_size=40),
    limit=st.integers(min_value=1, max_value=64),
)
def test_random_bytes_never_crash_and_memory_stays_bounded(chunks: list[bytes], limit: int) -> None:
    dec = FrameDecoder(limit)
    got: list[bytes] = []
    failed = False
    for chunk in chunks:
        try:
            got += dec.feed(chunk)
        except FrameTooLargeError:
            failed = True
            break
        # After every feed at most one incomplete frame is held.
        assert dec.buffered < HEADER_BYTES + limit
    expected, over = _reference(b"".join(chunks), limit)
    assert failed == over
    if not failed:
        assert got == expected
    else:
        # Frames completed in earlier feeds were delivered before the bad header.
        assert got == expected[: len(got)]


def test_first_frame_has_its_own_limit_then_the_normal_one_applies() -> None:
    dec = FrameDecoder(LIMIT, first_frame_bytes=16)
    assert dec.limit == 16
    # The first frame and a larger second one in one chunk: the second is judged by LIMIT.
    wire = encode_frame(b"x" * 16, LIMIT) + encode_frame(b"y" * LIMIT, LIMIT)
    assert dec.feed(wire) == [b"x" * 16, b"y" * LIMIT]
    assert dec.limit == LIMIT


def test_first_frame_over_its_limit_fails_on_the_header_alone() -> None:
    dec = FrameDecoder(LIMIT, first_frame_bytes=16)
    with pytest.raises(FrameTooLargeError, match="limit is 16"):
        dec.feed((17).to_bytes(HEADER_BYTES, "big"))
    assert dec.buffered == 0


def test_partial_first_frame_is_bounded_by_its_limit() -> None:
    dec = FrameDecoder(LIMIT, first_frame_bytes=16)
    assert dec.feed(encode_frame(b"z" * 16, LIMIT)[:-1]) == []
    assert dec.buffered < HEADER_BYTES + 16
