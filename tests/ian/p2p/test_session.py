"""The session state machine without sockets: handshake, every rejection path, admission."""

from __future__ import annotations

import json
from dataclasses import replace

import msgspec
import pytest

from ian.p2p.errors import FrameTooLargeError, HandshakeError, ProtocolViolation
from ian.p2p.frames import FrameDecoder, encode_frame
from ian.p2p.messages import (
    ContributionResult,
    Envelope,
    Error,
    GetPeers,
    Goodbye,
    Hello,
    Ping,
    ResultDoc,
    decode_envelope,
    encode_envelope,
)
from ian.p2p.session import (
    Direction,
    GoodbyeReceived,
    HelloReceived,
    MessageInvalid,
    MessageReceived,
    Session,
    SessionConfig,
    SessionFailed,
    SessionState,
    admission_refusal,
    keep_new_connection,
)

A = "a" * 40
B = "b" * 40
LIMIT = 4096
CFG_A = SessionConfig(node_id=A, network_id="net", max_frame_bytes=LIMIT)
CFG_B = SessionConfig(node_id=B, network_id="net", max_frame_bytes=LIMIT)


def hello(node_id: str, **kw: object) -> Hello:
    values: dict[str, object] = {
        "network_id": "net",
        "protocol_version": 1,
        "node_id": node_id,
        "height": 0,
        "head_hash": "00" * 32,
    }
    values.update(kw)
    return msgspec.convert(values, Hello)


def frame(message: object, mid: int = 1, re: int | None = None) -> bytes:
    return encode_frame(encode_envelope(Envelope(mid, re, message)), LIMIT)  # type: ignore[arg-type]


def started(cfg: SessionConfig = CFG_A, peer: str = B, **kw: object) -> Session:
    s = Session(cfg, direction=Direction.OUTBOUND, peer_node_id=peer, **kw)  # type: ignore[arg-type]
    s.start(hello(cfg.node_id))
    return s


def test_two_sessions_handshake_and_exchange() -> None:
    a = Session(CFG_A, direction=Direction.OUTBOUND, peer_node_id=B)
    b = Session(CFG_B, direction=Direction.INBOUND, peer_node_id=A)
    to_b = a.start(hello(A))
    to_a = b.start(hello(B))
    [ev_b] = b.receive_data(to_b, now=1.0)
    [ev_a] = a.receive_data(to_a, now=1.0)
    assert isinstance(ev_a, HelloReceived) and ev_a.hello.node_id == B
    assert isinstance(ev_b, HelloReceived) and ev_b.hello.node_id == A
    assert a.state is b.state is SessionState.OPEN
    mid, data = a.send(Ping(nonce=3))
    [ev] = b.receive_data(data, now=2.0)
    assert isinstance(ev, MessageReceived)
    assert ev.envelope == Envelope(mid, None, Ping(nonce=3))
    assert b.last_received == 2.0


def test_hello_and_first_messages_in_one_chunk() -> None:
    s = started()
    events = s.receive_data(frame(hello(B)) + frame(GetPeers(), 2), now=0)
    assert [type(e) for e in events] == [HelloReceived, MessageReceived]


def test_message_ids_increase() -> None:
    s = started()
    s.receive_data(frame(hello(B)), now=0)
    ids = [s.send(Ping(nonce=1))[0] for _ in range(3)]
    assert ids == sorted(set(ids))


def _failure(s: Session, data: bytes) -> SessionFailed:
    events = s.receive_data(data, now=0)
    assert isinstance(events[-1], SessionFailed), events
    assert s.state is SessionState.CLOSED
    return events[-1]


@pytest.mark.parametrize(
    ("peer_hello", "reason"),
    [
        (hello(B, network_id="other"), "network"),
        (hello(B, protocol_version=2), "version"),
    ],
)
def test_incompatible_hello_is_refused_without_blame(peer_hello: Hello, reason: str) -> None:
    failure = _failure(started(), frame(peer_hello))
    assert isinstance(failure.error, HandshakeError)
    assert failure.error.reason == reason
    assert failure.error.score_event is None


def test_a_peer_of_another_chain_is_refused_without_blame() -> None:
    mine, theirs = "11" * 32, "22" * 32
    cfg = replace(CFG_A, chain_id=mine)
    failure = _failure(started(cfg), frame(hello(B, chain_id=theirs)))
    assert isinstance(failure.error, HandshakeError)
    assert failure.error.reason == "chain" and failure.error.score_event is None
    # The same chain, or a side that has no genesis yet, is fine.
    for peer_chain in (mine, None):
        s = started(cfg)
        events = s.receive_data(frame(hello(B, chain_id=peer_chain)), now=0)
        assert s.state is SessionState.OPEN, events
    s = started(CFG_A)  # this node has no chain yet: any chain id passes
    s.receive_data(frame(hello(B, chain_id=theirs)), now=0)
    assert s.state is SessionState.OPEN


def test_hello_claiming_another_id_than_the_certificate_is_a_violation() -> None:
    failure = _failure(started(peer=B), frame(hello("c" * 40)))
    assert isinstance(failure.error, ProtocolViolation)
    assert "certificate" in failure.error.message


def test_hello_from_another_node_than_dialled() -> None:
    # The certificate already proved C; we dialled B (the transport checks this first too).
    s = started(peer="c" * 40, expected_node_id=B)
    failure = _failure(s, frame(hello("c" * 40)))
    assert isinstance(failure.error, HandshakeError) and failure.error.reason == "identity"


def test_connection_to_ourselves() -> None:
    failure = _failure(started(peer=A), frame(hello(A)))
    assert isinstance(failure.error, HandshakeError) and failure.error.reason == "self"


@pytest.mark.parametrize("message", [Ping(nonce=1), GetPeers()])
def test_messages_before_hello_are_violations(message: object) -> None:
    failure = _failure(started(), frame(message))
    assert isinstance(failure.error, ProtocolViolation)
    assert "before hello" in failure.error.message


def test_invalid_hello_body_is_fatal() -> None:
    bad = json.dumps(
        {"v": 1, "type": "hello", "id": 1, "re": None, "body": {"node_id": B}}
    ).encode()
    failure = _failure(started(), encode_frame(bad, LIMIT))
    assert isinstance(failure.error, ProtocolViolation)


def test_second_hello_is_a_violation() -> None:
    s = started()
    s.receive_data(frame(hello(B)), now=0)
    failure = _failure(s, frame(hello(B), 2))
    assert "second hello" in failure.error.message


def test_unknown_type_after_handshake_is_a_violation() -> None:
    s = started()
    s.receive_data(frame(hello(B)), now=0)
    payload = b'{"v":1,"type":"teleport","id":2,"re":null,"body":{}}'
    failure = _failure(s, encode_frame(payload, LIMIT))
    assert isinstance(failure.error, ProtocolViolation)


def test_oversized_frame_is_a_violation() -> None:
    s = started()
    failure = _failure(s, (LIMIT + 1).to_bytes(4, "big"))
    assert isinstance(failure.error, FrameTooLargeError)


def test_invalid_body_after_handshake_keeps_the_session_open() -> None:
    s = started()
    s.receive_data(frame(hello(B)), now=0)
    payload = b'{"v":1,"type":"ping","id":5,"re":null,"body":{"nonce":-1}}'
    [event] = s.receive_data(encode_frame(payload, LIMIT), now=0)
    assert isinstance(event, MessageInvalid)
    assert (event.error.message_type, event.error.message_id) == ("ping", 5)
    assert s.state is SessionState.OPEN


def test_goodbye_before_hello_and_nothing_after_it() -> None:
    s = started()
    events = s.receive_data(frame(Goodbye(reason="banned")) + frame(hello(B)), now=0)
    assert events == [GoodbyeReceived("banned")]
    assert s.state is SessionState.CLOSED
    assert s.receive_data(frame(Ping(nonce=1)), now=1) == []
    assert s.close("bye") is None  # the peer already said goodbye


def test_close_emits_one_goodbye_even_after_a_failure() -> None:
    s = started()
    _failure(s, frame(Ping(nonce=1)))
    data = s.close("protocol violation")
    assert data is not None
    [payload] = FrameDecoder(LIMIT).feed(data)
    assert decode_envelope(payload).message == Goodbye(reason="protocol violation")
    assert s.close("again") is None


def test_send_is_only_allowed_when_open() -> None:
    s = started()
    with pytest.raises(RuntimeError):
        s.send(Ping(nonce=1))
    s.receive_data(frame(hello(B)), now=0)
    with pytest.raises(RuntimeError):
        s.send(hello(A))
    with pytest.raises(ValueError, match="exceeds"):
        s.send(ContributionResult(result=ResultDoc(accepted=False, reason="x" * LIMIT)))


def test_liveness() -> None:
    s = Session(CFG_A, direction=Direction.OUTBOUND, peer_node_id=B, now=100.0)
    assert s.liveness(110.0, ping_interval=30, idle_timeout=60) == "ok"
    assert s.liveness(130.0, ping_interval=30, idle_timeout=60) == "ping"
    assert s.liveness(160.0, ping_interval=30, idle_timeout=60) == "dead"
    s.start(hello(A))
    s.receive_data(frame(hello(B)), now=150.0)
    assert s.liveness(160.0, ping_interval=30, idle_timeout=60) == "ok"


LOW, HIGH = "1" * 40, "f" * 40
OUT, IN = Direction.OUTBOUND, Direction.INBOUND


@pytest.mark.parametrize(
    ("local", "remote", "existing", "new", "keep_new"),
    [
        # The connection dialled by the lower id wins, seen from either end.
        (LOW, HIGH, IN, OUT, True),  # LOW dialled the new one
        (LOW, HIGH, OUT, IN, False),  # LOW dialled the existing one
        (HIGH, LOW, OUT, IN, True),  # the new one came from LOW
        (HIGH, LOW, IN, OUT, False),
        # Same dialler twice: keep what exists, on both ends.
        (LOW, HIGH, OUT, OUT, False),
        (HIGH, LOW, IN, IN, False),
    ],
)
def test_duplicate_rule(
    local: str, remote: str, existing: Direction, new: Direction, keep_new: bool
) -> None:
    assert keep_new_connection(local, remote, existing=existing, new=new) is keep_new


def test_duplicate_rule_agrees_on_both_ends() -> None:
    # Simultaneous dials: conn1 LOW->HIGH, conn2 HIGH->LOW, each end saw them in either order.
    for first_at_low, first_at_high in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        dir_at_low = {1: OUT, 2: IN}
        dir_at_high = {1: IN, 2: OUT}

        def survivor(local: str, remote: str, dirs: dict[int, Direction], first: int) -> int:
            second = 3 - first
            keep = keep_new_connection(local, remote, existing=dirs[first], new=dirs[second])
            return second if keep else first

        assert survivor(LOW, HIGH, dir_at_low, first_at_low) == survivor(
            HIGH, LOW, dir_at_high, first_at_high
        )


def _admit(**kw: object) -> str | None:
    values: dict[str, object] = {
        "local_id": LOW,
        "peer_id": HIGH,
        "direction": IN,
        "ban_reason": None,
        "existing": None,
        "peer_count": 0,
        "max_peers": 2,
    }
    values.update(kw)
    return admission_refusal(**values)  # type: ignore[arg-type]


def test_admission() -> None:
    assert _admit() is None
    assert _admit(peer_id=LOW) == "self"
    assert _admit(ban_reason="node banned") == "banned"
    assert _admit(existing=OUT) == "duplicate"  # LOW already dialled HIGH
    assert _admit(existing=IN, direction=OUT) is None  # replaces; count unchanged
    assert _admit(existing=IN, direction=OUT, peer_count=2) is None
    assert _admit(peer_count=2) == "full"


def test_frame_header_over_64_kib_before_hello_is_refused_at_once() -> None:
    big = SessionConfig(node_id=A, network_id="net", max_frame_bytes=16 * 1024 * 1024)
    assert big.max_frame_bytes_before_hello == 64 * 1024
    s = started(big)
    # Only the header of a 16 MiB - 1 frame: refused without waiting for (or buffering) a body.
    failure = _failure(s, (16 * 1024 * 1024 - 1).to_bytes(4, "big"))
    assert isinstance(failure.error, FrameTooLargeError)
    assert "65536" in failure.error.message


def test_after_hello_frames_up_to_max_frame_bytes_are_accepted() -> None:
    cfg = replace(CFG_A, max_frame_bytes_before_hello=512)
    s = started(cfg)
    [ev] = s.receive_data(frame(hello(B)), now=0)
    assert isinstance(ev, HelloReceived)
    big = frame(Error(code="x", message="m" * 1000), 2, re=1)
    assert 512 < len(big) <= LIMIT
    [ev] = s.receive_data(big, now=1)
    assert isinstance(ev, MessageReceived)
