"""peer_scores.json on disk: the fast encoder writes exactly the old writer's bytes, the fast
reader reads what the old reader read."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ian.p2p.peer_book import (
    COUNTERS,
    PeerBook,
    PeerEvent,
    _plain_peers,
    decode_json,
    encode_book,
)

NOW = 1_700_000_000.0
DAY = 86400.0
SRC = Path(__file__).resolve().parents[3] / "src"

# Copied verbatim from OPERATOR_RUNBOOK.md ("Cleaning Up Old Data"); only the path differs.
RUNBOOK_PRUNE = """
import json, time
with open('/data/ian/peer_scores.json') as f:
    data = json.load(f)

cutoff = time.time() - 30*24*3600
data['peers'] = {k:v for k,v in data['peers'].items() if v['last_seen'] > cutoff}

with open('/data/ian/peer_scores.json', 'w') as f:
    json.dump(data, f, indent=2)
print(f'Kept {len(data[\"peers\"])} peers')
"""


def old_writer(saved_at: float, peers: dict[str, Any], ip_bans: dict[str, Any]) -> bytes:
    """PeerBook's writer before msgspec, verbatim."""
    doc = {"version": 1, "saved_at": saved_at, "peers": peers, "ip_bans": ip_bans}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False, check_circular=False)
    return (text + "\n").encode("utf-8")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def id_of(i: int) -> str:
    return f"{i:040x}"


# --------------------------------------------------------------------------- the encoder

FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-4, 9.99e-5, 1e-5, 3.5e-7, 1e16, 9999999999999998.0, 1e22]),
    st.floats(min_value=0, max_value=200),
    st.floats(min_value=1.6e9, max_value=1.9e9),
)
TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.text(
    st.characters(min_codepoint=0, max_codepoint=0x80), max_size=12
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | FLOATS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "score": draw(FLOATS),
        "banned_until": draw(st.none() | FLOATS),
        "ban_reason": draw(st.none() | TEXT),
    }
    for name in COUNTERS:
        rec[name] = draw(st.integers(min_value=0, max_value=2**70))
    rec.update(
        first_seen=draw(FLOATS),
        last_seen=draw(FLOATS),
        last_connected=draw(st.none() | FLOATS),
        addresses=draw(st.lists(TEXT, max_size=3)),
        score_updated_at=draw(FLOATS),
    )
    if draw(st.booleans()):  # a hand-edited record: any key, any JSON value
        rec[draw(TEXT)] = draw(JSONISH)
    return rec


@settings(max_examples=300, deadline=None)
@given(
    saved_at=FLOATS,
    peers=st.dictionaries(TEXT, records(), max_size=4),
    ip_bans=st.dictionaries(TEXT, st.dictionaries(TEXT, JSONISH, max_size=3), max_size=2),
)
def test_encoder_writes_the_old_writers_bytes(
    saved_at: float, peers: dict[str, Any], ip_bans: dict[str, Any]
) -> None:
    assert encode_book(saved_at, peers, ip_bans) == old_writer(saved_at, peers, ip_bans)


def test_encoder_takes_the_fast_path_for_what_the_node_writes(tmp_path: Path) -> None:
    book = _book(tmp_path / "peer_scores.json", 300, seed=4)
    assert _plain_peers(book._peers)
    # out of the plain range, a lone surrogate, NaN: the old writer decides (same bytes or error)
    odd = json.loads(json.dumps(book._peers))
    first = next(iter(odd.values()))
    for value in (1e-5, 2e16, -0.5):
        first["score"] = value
        assert not _plain_peers(odd)
        assert encode_book(NOW, odd, {}) == old_writer(NOW, odd, {})
    first["score"], first["ban_reason"] = 50.0, "\ud800 é \x7f"
    assert encode_book(NOW, odd, {}) == old_writer(NOW, odd, {})
    first["score"] = math.nan
    with pytest.raises(ValueError):
        encode_book(NOW, odd, {})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": NaN, "b": -Infinity}',
        b'{"a": "\\ud800"}',
        '{"\u00e9": [1, 2.5, 1e400]}'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b'{"big": 123456789012345678901234567890, "tiny": 1e-400}',
    ],
)
def test_reader_reads_what_json_reads(raw: bytes, tmp_path: Path) -> None:
    expected = json.loads(raw)
    got = decode_json(raw, tmp_path / "f", "r")
    assert json.dumps(got) == json.dumps(expected)


def _book(path: Path, n: int, *, seed: int, now: float = NOW) -> PeerBook:
    """A book as the node writes it: peers seen 0..60 days ago (none within an hour of the
    30-day cutoff), events, addresses, some bans (active and expired, by id and by IP),
    reasons with quotes, braces, non-ASCII. Saved at ``now``."""
    rng = random.Random(seed)
    clock = Clock(now)
    book = PeerBook(path, clock=clock)
    reasons = ['said "hi"},"x', "zu schnell: \u00fc\u2028", "plain", 'tab\there \\ "']
    for i in range(n):
        age = rng.uniform(0, 60)
        if abs(age - 30) < 1 / 24:
            age += 0.1
        clock.now = now - age * DAY
        node = id_of(i * 2654435761 % 16**40)  # distinct, not in order
        book.note_address(node, f"tcp://10.{i % 250}.{i % 7}.1:{9000 + i}")
        for _ in range(rng.randrange(3)):
            book.record(node, rng.choice(list(PeerEvent)))
        if rng.random() < 0.3:
            book.on_connected(node, f"tcp://h{i}.example:9000")
        if i % 11 == 0:
            days = rng.choice([1, 90])
            book.ban(node, seconds=days * DAY, reason=rng.choice(reasons))
    clock.now = now - 2 * DAY
    book.ban("10.0.0.0/8", seconds=DAY, reason="expired")
    book.ban("2001:db8::/32", seconds=10 * DAY, reason="still on")
    clock.now = now
    book.save()
    return book
