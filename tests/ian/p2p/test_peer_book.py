"""PeerBook: scoring table, decay, bans, persistence format and the runbook's tooling on it."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ian.errors import CorruptFileError, InputError, NotFoundError, SchemaError
from ian.p2p.peer_book import (
    COUNTER_FOR_EVENT,
    COUNTERS,
    EVENT_WEIGHTS,
    MAX_ADDRESSES,
    PeerBook,
    PeerEvent,
    Verdict,
    decayed_score,
    parse_ban_target,
)

A = "a" * 40
B = "b" * 40
C = "c" * 40
T0 = 1_700_000_000.0

PEER_KEYS = {
    "score",
    "banned_until",
    "ban_reason",
    "rate_limit_violations",
    "invalid_messages",
    "protocol_violations",
    "first_seen",
    "last_seen",
    "last_connected",
    "addresses",
    "valid_messages",
    "valid_contributions",
    "successful_syncs",
    "invalid_contributions",
    "failed_syncs",
    "score_updated_at",
}

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


class Clock:
    """A settable clock in epoch seconds."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "peer_scores.json"


@pytest.fixture
def book(path: Path, clock: Clock) -> PeerBook:
    return PeerBook.load(path, clock=clock)


def id_of(i: int) -> str:
    return f"{i:040x}"


# --------------------------------------------------------------------------- scoring


def test_defaults_match_the_reference_weights() -> None:
    assert {e.value: w for e, w in EVENT_WEIGHTS.items()} == {
        # The earlier code credited +0.1 per message, so 50 messages cancelled a -5 charge and
        # a flooder never reached the ban threshold: talking earns nothing now.
        "valid_message": 0.0,
        "valid_contribution": 1.0,
        "successful_sync": 5.0,
        "invalid_message": -5.0,
        "invalid_contribution": -10.0,
        "rate_limit_violation": -10.0,
        "protocol_violation": -20.0,
        "failed_sync": -5.0,
    }
    assert set(COUNTER_FOR_EVENT) == set(PeerEvent)


@pytest.mark.parametrize("event", list(PeerEvent))
def test_each_event_moves_score_by_its_weight_and_counts(book: PeerBook, event: PeerEvent) -> None:
    assert book.record(A, event) is Verdict.OK  # one event never drops 100 below 30
    rec = book.get(A)
    assert rec is not None
    assert rec.score == pytest.approx(100 + EVENT_WEIGHTS[event])
    for name in COUNTERS:
        assert getattr(rec, name) == (1 if name == COUNTER_FOR_EVENT[event] else 0)


def test_thresholds_disconnect_below_30_and_ban_below_10(book: PeerBook, clock: Clock) -> None:
    verdicts = [book.record(A, PeerEvent.PROTOCOL_VIOLATION) for _ in range(4)]
    assert verdicts == [Verdict.OK, Verdict.OK, Verdict.OK, Verdict.DISCONNECT]  # 80 60 40 20
    assert book.record(A, PeerEvent.INVALID_CONTRIBUTION) is Verdict.DISCONNECT  # 10: not < 10
    assert book.ban_reason(node_id=A) is None
    assert book.record(A, PeerEvent.INVALID_MESSAGE) is Verdict.BAN  # 5
    rec = book.get(A)
    assert rec is not None and rec.banned
    assert rec.ban_reason == "score 5.0 after invalid_message"
    assert rec.banned_until == clock.now + 86400
    reason = book.ban_reason(node_id=A)
    assert reason is not None and "score 5.0 after invalid_message" in reason
    # further events while banned keep saying BAN, even positive ones
    assert book.record(A, PeerEvent.VALID_MESSAGE) is Verdict.BAN
    assert book.banned_count() == 1


def test_score_exactly_at_threshold_is_not_below(book: PeerBook) -> None:
    verdicts = [book.record(A, PeerEvent.RATE_LIMIT_VIOLATION) for _ in range(7)]
    assert book.get(A).score == 30  # type: ignore[union-attr]
    assert verdicts[-1] is Verdict.OK
    assert book.record(A, PeerEvent.FAILED_SYNC) is Verdict.DISCONNECT  # 25


def test_positive_events_never_disconnect_a_low_peer(book: PeerBook) -> None:
    for _ in range(4):
        book.record(A, PeerEvent.PROTOCOL_VIOLATION)  # 20
    assert book.record(A, PeerEvent.VALID_MESSAGE) is Verdict.OK
    assert book.record(A, PeerEvent.FAILED_SYNC) is Verdict.DISCONNECT


def test_clamped_to_0_and_200(book: PeerBook, clock: Clock) -> None:
    for _ in range(30):  # credits are capped per hour: 30 hours of useful work
        clock.advance(3600)
        for _ in range(2):
            book.record(A, PeerEvent.SUCCESSFUL_SYNC)
    assert book.get(A).score == 200  # type: ignore[union-attr]
    assert book.get(A).trusted  # type: ignore[union-attr]
    for _ in range(20):
        book.record(B, PeerEvent.PROTOCOL_VIOLATION)
    assert book.get(B).score == 0  # type: ignore[union-attr]


def test_ban_duration_follows_configuration(path: Path, clock: Clock) -> None:
    book = PeerBook.load(path, ban_seconds=600, clock=clock)
    book.configure(ban_seconds=60)
    for _ in range(5):
        book.record(A, PeerEvent.PROTOCOL_VIOLATION)
    assert book.get(A).banned_until == clock.now + 60  # type: ignore[union-attr]
    with pytest.raises(InputError):
        book.configure(ban_seconds=-1)


def test_decay_toward_100_uses_elapsed_hours(book: PeerBook, clock: Clock) -> None:
    for _ in range(2):
        book.record(A, PeerEvent.PROTOCOL_VIOLATION)  # 60
    for _ in range(2):
        book.record(B, PeerEvent.SUCCESSFUL_SYNC)  # 110
    clock.advance(10 * 3600)
    assert book.get(A).score == pytest.approx(100 - 40 * math.exp(-0.1))  # type: ignore[union-attr]
    assert book.get(B).score == pytest.approx(100 + 10 * math.exp(-0.1))  # type: ignore[union-attr]
    # decay is applied before the event, from the time of the last update
    book.record(A, PeerEvent.INVALID_MESSAGE)
    expected = 100 - 40 * math.exp(-0.1) - 5
    assert book.get(A).score == pytest.approx(expected)  # type: ignore[union-attr]
    clock.advance(5 * 3600)
    assert book.get(A).score == pytest.approx(decayed_score(expected, 5))  # type: ignore[union-attr]


def test_decay_ignores_a_clock_that_went_backwards(book: PeerBook, clock: Clock) -> None:
    book.record(A, PeerEvent.PROTOCOL_VIOLATION)
    clock.advance(-3600)
    assert book.get(A).score == pytest.approx(80)  # type: ignore[union-attr]


def test_decay_survives_a_restart(path: Path, clock: Clock) -> None:
    book = PeerBook.load(path, clock=clock)
    book.record(A, PeerEvent.PROTOCOL_VIOLATION)
    book.save()
    clock.advance(24 * 3600)
    again = PeerBook.load(path, clock=clock)
    assert again.get(A).score == pytest.approx(100 - 20 * math.exp(-0.24))  # type: ignore[union-attr]


def test_auto_ban_expires(book: PeerBook, clock: Clock) -> None:
    for _ in range(5):
        book.record(A, PeerEvent.PROTOCOL_VIOLATION)
    clock.advance(86400 - 1)
    assert book.ban_reason(node_id=A) is not None
    clock.advance(1)
    assert book.ban_reason(node_id=A) is None
    assert book.banned_count() == 0
    assert book.record(A, PeerEvent.VALID_MESSAGE) is Verdict.OK


# --------------------------------------------------------------------------- manual bans


def test_parse_ban_target() -> None:
    assert parse_ban_target(A.upper()) == ("node", A)
    assert parse_ban_target(" 10.0.0.7 ") == ("ip", "10.0.0.7")
    assert parse_ban_target("10.0.0.0/8") == ("ip", "10.0.0.0/8")
    assert parse_ban_target("2001:DB8::/32") == ("ip", "2001:db8::/32")
    with pytest.raises(InputError) as bad:
        parse_ban_target("10.0.0.5/8")
    assert "10.0.0.0/8" in (bad.value.fix or "")
    for junk in ("", "abc", "a" * 39, "10.0.0.256", "tcp://1.2.3.4:5"):
        with pytest.raises(InputError) as err:
            parse_ban_target(junk)
        assert err.value.fix


def test_ban_by_node_id_with_expiry_and_unban(book: PeerBook, clock: Clock) -> None:
    info = book.ban(A.upper(), seconds=3600, reason="spam")
    assert (info.kind, info.target, info.banned_until) == ("node", A, clock.now + 3600)
    reason = book.ban_reason(node_id=A)
    assert reason is not None and "spam" in reason
    assert book.ban_reason(node_id=B) is None
    clock.advance(3600)
    assert book.ban_reason(node_id=A) is None
    book.ban(A, seconds=60, reason="again")
    assert book.unban(A) is True
    assert book.unban(A) is False
    assert book.ban_reason(node_id=A) is None


def test_ip_and_cidr_bans(book: PeerBook, clock: Clock) -> None:
    book.ban("10.0.0.0/8", seconds=100, reason="lab net")
    book.ban("192.168.1.7", seconds=200, reason="one host")
    book.ban("2001:db8::/32", seconds=100, reason="v6 net")
    assert "lab net" in (book.ban_reason(ip="10.200.3.4") or "")
    assert "lab net" in (book.ban_reason(ip="::ffff:10.1.1.1") or "")  # v4-mapped
    assert "one host" in (book.ban_reason(ip="192.168.1.7") or "")
    assert book.ban_reason(ip="192.168.1.8") is None
    assert "v6 net" in (book.ban_reason(ip="2001:db8::1") or "")
    assert book.ban_reason(ip="[2001:db8::2]") is not None
    assert book.ban_reason(ip="not an ip") is None
    assert book.ban_reason(node_id=A, ip="11.0.0.1") is None
    clock.advance(100)
    assert book.ban_reason(ip="10.200.3.4") is None
    assert book.ban_reason(ip="192.168.1.7") is not None
    assert [b.target for b in book.ip_bans()] == ["192.168.1.7"]
    assert book.unban("10.0.0.0/8") is True  # expired entries can still be removed
    assert book.unban("10.0.0.0/8") is False


def test_ban_refuses_bad_duration_and_reason(book: PeerBook) -> None:
    for seconds in (0, -5, math.inf, math.nan):
        with pytest.raises(InputError):
            book.ban(A, seconds=seconds, reason="x")
    with pytest.raises(InputError):
        book.ban(A, seconds=10, reason="  ")
    assert book.get(A) is None


def test_reset_restores_score_lifts_ban_keeps_counters(book: PeerBook) -> None:
    for _ in range(5):
        book.record(A, PeerEvent.PROTOCOL_VIOLATION)
    rec = book.reset(A)
    assert (rec.score, rec.banned, rec.banned_until, rec.protocol_violations) == (
        100,
        False,
        None,
        5,
    )
    assert book.ban_reason(node_id=A) is None
    with pytest.raises(NotFoundError):
        book.reset(B)


# --------------------------------------------------------------------------- P2P bookkeeping


def test_dial_candidates_order_and_filters(book: PeerBook, clock: Clock) -> None:
    for i, node in enumerate((A, B, C, id_of(4), id_of(5))):
        clock.now = T0 + i
        book.note_address(node, f"tcp://10.0.0.{i}:9000")
    clock.now = T0 + 10
    book.on_connected(B, "tcp://10.0.0.1:9000")
    book.ban(C, seconds=60, reason="x")
    book.record(id_of(6), PeerEvent.VALID_MESSAGE)  # no address: not dialable
    assert book.dial_candidates(10) == [
        (id_of(5), "tcp://10.0.0.4:9000"),
        (id_of(4), "tcp://10.0.0.3:9000"),
        (A, "tcp://10.0.0.0:9000"),
    ]
    assert book.dial_candidates(1) == [(id_of(5), "tcp://10.0.0.4:9000")]
    assert book.dial_candidates(0) == []
    book.on_disconnected(B)
    assert book.dial_candidates(1) == [(B, "tcp://10.0.0.1:9000")]  # seen at disconnect
    assert book.connected_ids() == []


def test_addresses_gossip_does_not_refresh_last_seen(book: PeerBook, clock: Clock) -> None:
    book.note_address(A, "tcp://1.1.1.1:1")
    clock.advance(1000)
    book.note_address(A, "tcp://2.2.2.2:2")
    rec = book.get(A)
    assert rec is not None
    assert (rec.first_seen, rec.last_seen) == (T0, T0)
    assert rec.addresses == ("tcp://1.1.1.1:1", "tcp://2.2.2.2:2")
    book.on_connected(A, "tcp://2.2.2.2:2")
    rec = book.get(A)
    assert rec is not None
    assert rec.addresses == ("tcp://2.2.2.2:2", "tcp://1.1.1.1:1")
    assert rec.last_seen == rec.last_connected == T0 + 1000
    assert rec.connected and book.connected_ids() == [A]
    for i in range(20):
        book.note_address(A, f"tcp://3.3.3.{i}:3")
    assert len(book.get(A).addresses) == MAX_ADDRESSES  # type: ignore[union-attr]


def test_records_sorting_and_filters(book: PeerBook, clock: Clock) -> None:
    book.record(A, PeerEvent.SUCCESSFUL_SYNC)  # 105, 0 violations
    clock.advance(1)
    book.record(B, PeerEvent.RATE_LIMIT_VIOLATION)
    book.record(B, PeerEvent.INVALID_MESSAGE)  # 85, 2 violations
    clock.advance(1)
    book.record(C, PeerEvent.PROTOCOL_VIOLATION)  # 80, 1 violation
    book.ban(C, seconds=10, reason="x")
    assert [r.node_id for r in book.records()] == [A, B, C]
    assert [r.node_id for r in book.records(sort="violations")] == [B, C, A]
    assert [r.node_id for r in book.records(sort="last-seen")] == [C, B, A]
    assert [r.node_id for r in book.records(limit=2)] == [A, B]
    assert [r.node_id for r in book.records(banned_only=True)] == [C]
    assert book.get(B).violations == 2  # type: ignore[union-attr]
    with pytest.raises(InputError):
        book.records(sort="age")


# --------------------------------------------------------------------------- persistence


def test_missing_file_gives_empty_book(book: PeerBook, path: Path) -> None:
    assert len(book) == 0 and book.records() == []
    assert not path.exists()


def test_file_format_is_exactly_the_documented_one(
    book: PeerBook, path: Path, clock: Clock
) -> None:
    book.on_connected(A, "tcp://10.0.0.1:9000")
    book.record(A, PeerEvent.RATE_LIMIT_VIOLATION)
    book.note_address(B, "tcp://10.0.0.2:9000")
    book.ban("10.0.0.0/8", seconds=60, reason="lab")
    clock.advance(5)
    book.save()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"version", "saved_at", "peers", "ip_bans"}
    assert data["version"] == 1 and data["saved_at"] == T0 + 5
    assert set(data["peers"]) == {A, B}
    for peer in data["peers"].values():
        assert set(peer) == PEER_KEYS
        assert isinstance(peer["score"], float)
        assert isinstance(peer["last_seen"], float)
        assert peer["banned_until"] is None and peer["ban_reason"] is None
    a = data["peers"][A]
    assert a["rate_limit_violations"] == 1 and a["score"] == 90.0
    assert a["last_connected"] == T0 and a["addresses"] == ["tcp://10.0.0.1:9000"]
    assert data["peers"][B]["last_connected"] is None
    assert data["ip_bans"] == {
        "10.0.0.0/8": {"banned_until": T0 + 60, "reason": "lab", "created_at": T0}
    }
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_round_trip(book: PeerBook, path: Path, clock: Clock) -> None:
    book.on_connected(A, "tcp://h:1")
    for _ in range(5):
        book.record(A, PeerEvent.PROTOCOL_VIOLATION)
    book.ban("::1", seconds=99, reason="loop")
    book.save()
    again = PeerBook.load(path, clock=clock)
    ra, rb = again.get(A), book.get(A)
    assert ra is not None and rb is not None
    assert (ra.score, ra.banned_until, ra.ban_reason, ra.addresses) == (
        rb.score,
        rb.banned_until,
        rb.ban_reason,
        rb.addresses,
    )
    assert again.connected_ids() == []  # connections are not persisted
    assert again.banned_count() == 1
    assert again.ban_reason(ip="::1") is not None


def _write_records(path: Path, peers: dict[str, dict], **top) -> None:
    path.write_text(json.dumps({"version": 1, "saved_at": T0, "peers": peers, **top}))


def test_loads_files_of_the_earlier_implementation(path: Path, clock: Clock) -> None:
    legacy = {
        "score": 42.0,
        "valid_messages": 1,
        "valid_contributions": 2,
        "successful_syncs": 3,
        "invalid_messages": 4,
        "invalid_contributions": 5,
        "rate_limit_violations": 6,
        "protocol_violations": 7,
        "failed_syncs": 8,
        "banned_until": None,
        "first_seen": T0 - 100,
        "last_seen": T0 - 10,
    }
    _write_records(path, {A: legacy})
    book = PeerBook.load(path, clock=clock)
    rec = book.get(A)
    assert rec is not None
    assert (rec.score, rec.failed_syncs, rec.addresses, rec.last_connected) == (42, 8, (), None)
    book.save()
    assert set(json.loads(path.read_text())["peers"][A]) == PEER_KEYS


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ('{"version": 1, "saved_at": 1, "peers": {"a": {"score": 1', "Expecting"),
        ("", "empty"),
        ("[]", "top level"),
        ('{"version": 1, "peers": []}', '"peers"'),
        ('{"version": 1, "peers": {"x": {"score": "high", "last_seen": 1}}}', "numeric"),
        ('{"version": 1, "peers": {"x": 5}}', "not an object"),
        (
            '{"version": 1, "peers": {"x": {"score": 1, "last_seen": 1, "banned_until": "soon"}}}',
            "banned_until",
        ),
        ('{"version": 1, "peers": {}, "ip_bans": {"nope": {"banned_until": 1}}}', "nope"),
        ('{"version": "one", "peers": {}}', "version"),
    ],
)
def test_corrupt_file_names_file_and_recovery(
    path: Path, clock: Clock, content: str, detail: str
) -> None:
    path.write_text(content)
    with pytest.raises(CorruptFileError) as err:
        PeerBook.load(path, clock=clock)
    assert str(path) in err.value.message
    assert detail in err.value.message
    assert "ian peers reset --all" in (err.value.fix or "")


def test_newer_version_is_a_schema_error(path: Path, clock: Clock) -> None:
    path.write_text('{"version": 2, "peers": {}}')
    with pytest.raises(SchemaError):
        PeerBook.load(path, clock=clock)


def test_flush_if_due_is_throttled_by_the_clock(book: PeerBook, path: Path, clock: Clock) -> None:
    book.flush_if_due()
    assert not path.exists()  # nothing to write
    book.record(A, PeerEvent.VALID_MESSAGE)
    book.flush_if_due()  # first write: due
    assert path.exists()
    first = path.read_bytes()
    book.record(A, PeerEvent.VALID_MESSAGE)
    clock.advance(1.9)
    book.flush_if_due()
    assert path.read_bytes() == first and book.dirty
    clock.advance(0.1)
    book.flush_if_due()
    assert path.read_bytes() != first and not book.dirty


# --------------------------------------------------------------------------- prune


def test_prune_keeps_connected_and_actively_banned(book: PeerBook, clock: Clock) -> None:
    for node in (A, B, C, id_of(1), id_of(2)):
        book.note_address(node, "tcp://x:1")
    book.on_connected(A, "tcp://x:1")
    book.ban(B, seconds=100 * 86400, reason="long")
    book.ban(C, seconds=10, reason="short")
    book.ban("10.0.0.0/8", seconds=10, reason="expires")
    clock.advance(31 * 86400)
    book.note_address(id_of(2), "tcp://y:1")  # gossip does not count as seen
    dry = book.prune(30 * 86400, dry_run=True)
    assert (dry.kept, dry.removed) == (2, sorted([C, id_of(1), id_of(2)]))
    assert len(book) == 5 and book.ip_bans(include_expired=True)
    result = book.prune(30 * 86400)
    assert result.removed == dry.removed and book.dirty
    assert sorted(r.node_id for r in book.records()) == [A, B]
    assert book.ip_bans(include_expired=True) == []


def _generated_file(path: Path, now: float, n: int, seed: int) -> set[str]:
    """A file written by PeerBook with peers seen 0..60 days ago (none within 1 h of the
    30-day cutoff) and some active bans on old peers. Returns the ids banned now."""
    rng = random.Random(seed)
    clock = Clock(now)
    book = PeerBook(path, clock=clock)
    banned: set[str] = set()
    for i in range(n):
        age_days = rng.uniform(0, 60)
        if abs(age_days - 30) < 1 / 24:
            age_days += 0.1
        clock.now = now - age_days * 86400
        node = id_of(i)
        book.note_address(node, f"tcp://10.{i % 250}.0.1:9000")
        book.record(node, rng.choice(list(PeerEvent)))
        if i % 17 == 0:
            book.ban(node, seconds=90 * 86400, reason="test")
            banned.add(node)
    clock.now = now
    book.save()
    return banned


def _run_runbook_prune(path: Path) -> subprocess.CompletedProcess[str]:
    code = RUNBOOK_PRUNE.replace("/data/ian/peer_scores.json", str(path))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prune_matches_the_runbook_snippet(tmp_path: Path, seed: int) -> None:
    import time

    now = time.time()
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    banned = _generated_file(ours, now, 600, seed)
    shutil.copyfile(ours, theirs)

    proc = _run_runbook_prune(theirs)
    kept_by_snippet = set(json.loads(theirs.read_text())["peers"])
    assert proc.stdout.strip() == f"Kept {len(kept_by_snippet)} peers"

    book = PeerBook.load(ours, clock=lambda: now)
    result = book.prune(30 * 86400)
    kept_by_us = {r.node_id for r in book.records()}
    # same rule, plus: actively banned peers are never dropped
    assert kept_by_us == kept_by_snippet | banned
    assert result.kept == len(kept_by_us)
    assert 0 < len(kept_by_snippet) < 600
    # and the file the snippet rewrote (indent=2) loads back
    assert len(PeerBook.load(theirs, clock=lambda: now)) == len(kept_by_snippet)


# --------------------------------------------------------------------------- runbook jq


def _jq_equivalents(data: dict) -> dict[str, object]:
    entries = [{"key": k, "value": v} for k, v in data["peers"].items()]
    by_score = sorted(entries, key=lambda e: e["value"]["score"])[::-1][0:10]
    by_rl = sorted(entries, key=lambda e: e["value"]["rate_limit_violations"])[::-1][0:5]
    return {
        "top": by_score,
        "rl": by_rl,
        "one": data["peers"][A],
        "length": len(data["peers"]),
    }


@pytest.fixture
def runbook_file(book: PeerBook, path: Path) -> Path:
    book.record(A, PeerEvent.SUCCESSFUL_SYNC)
    for i in range(15):
        node = id_of(i + 1)
        for _ in range(i % 4):
            book.record(node, PeerEvent.RATE_LIMIT_VIOLATION)
        book.record(node, PeerEvent.VALID_CONTRIBUTION)
    book.ban("10.0.0.0/8", seconds=60, reason="kept out of .peers")
    book.save()
    return path


def test_runbook_queries_in_python(runbook_file: Path) -> None:
    data = json.loads(runbook_file.read_text())
    got = _jq_equivalents(data)
    assert got["length"] == 16
    assert got["top"][0]["key"] == A  # type: ignore[index]
    assert got["rl"][0]["value"]["rate_limit_violations"] == 3  # type: ignore[index]
    assert got["one"]["score"] == 105.0  # type: ignore[index]


def test_runbook_queries_with_jq(runbook_file: Path) -> None:
    assert shutil.which("jq"), "jq is missing: `make tools` installs it (apt-get install jq)"

    def jq(query: str) -> object:
        out = subprocess.run(
            ["jq", "-c", query, str(runbook_file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return json.loads(out.stdout)

    expected = _jq_equivalents(json.loads(runbook_file.read_text()))
    top = jq(".peers | to_entries | sort_by(.value.score) | reverse | .[0:10]")
    rl = jq(".peers | to_entries | sort_by(.value.rate_limit_violations) | reverse | .[0:5]")
    assert [e["score"] for e in (x["value"] for x in top)] == [  # type: ignore[union-attr]
        e["value"]["score"]
        for e in expected["top"]  # type: ignore[union-attr]
    ]
    assert [x["value"]["rate_limit_violations"] for x in rl] == [  # type: ignore[union-attr]
        e["value"]["rate_limit_violations"]
        for e in expected["rl"]  # type: ignore[union-attr]
    ]
    assert jq(f'.peers["{A}"]') == expected["one"]
    assert jq(".peers | length") == 16


def test_hand_edited_ban_from_the_runbook_is_enforced(path: Path, clock: Clock) -> None:
    book = PeerBook.load(path, clock=clock)
    book.record(A, PeerEvent.VALID_MESSAGE)
    book.save()
    data = json.loads(path.read_text())
    data["peers"][A]["banned_until"] = T0 + 3600  # "Set banned_until to future timestamp"
    path.write_text(json.dumps(data, indent=2))
    again = PeerBook.load(path, clock=clock)
    assert "no reason given" in (again.ban_reason(node_id=A) or "")
    assert again.banned_count() == 1


def test_a_slow_save_never_writes_an_older_book_over_a_newer_one(
    book: PeerBook, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two saves racing (the flush timer and a ban's immediate save): the file ends with the
    newer book, whatever order the writes would have finished in."""
    import threading

    import ian.p2p.peer_book as peer_book_mod

    real_write = peer_book_mod.atomic_write_bytes
    first_started, release_first = threading.Event(), threading.Event()
    calls = [0]

    def write(target: Path, data: bytes, *, mode: int = 0o644) -> None:
        calls[0] += 1
        if calls[0] == 1:  # the older snapshot: stalls on a slow disk
            first_started.set()
            assert release_first.wait(10)
        real_write(target, data, mode=mode)

    monkeypatch.setattr(peer_book_mod, "atomic_write_bytes", write)
    slow = threading.Thread(target=book.save)
    slow.start()
    assert first_started.wait(10)
    book.ban("ab" * 20, seconds=3600, reason="flooding")
    fast = threading.Thread(target=book.save)
    fast.start()
    fast.join(0.2)  # it must wait for the slow one (a bounded look, not a sleep-for-an-event)
    release_first.set()
    slow.join(10)
    fast.join(10)
    assert not slow.is_alive() and not fast.is_alive()
    saved = json.loads(path.read_text())
    assert saved["peers"]["ab" * 20]["ban_reason"] == "flooding"


def test_credit_is_capped_per_hour_so_a_flooder_cannot_out_earn_its_charges(
    book: PeerBook, clock: Clock
) -> None:
    for _ in range(1000):
        book.record(A, PeerEvent.VALID_MESSAGE)
    assert book.get(A).score == 100  # type: ignore[union-attr]
    assert book.get(A).valid_messages == 1000  # type: ignore[union-attr]  # still counted
    for _ in range(100):  # +1 each, but at most +10 an hour
        book.record(A, PeerEvent.VALID_CONTRIBUTION)
    assert book.get(A).score == 110  # type: ignore[union-attr]
    verdicts = []
    for _ in range(21):  # every charge lands in full: 110 - 21 x 5 < 10
        book.record(A, PeerEvent.VALID_CONTRIBUTION)
        verdicts.append(book.record(A, PeerEvent.INVALID_MESSAGE))
    assert verdicts[-1] is Verdict.BAN and book.get(A).banned  # type: ignore[union-attr]
    clock.advance(3600)  # a new hour: credit again
    book.record(B, PeerEvent.SUCCESSFUL_SYNC)
    assert book.get(B).score == 105  # type: ignore[union-attr]


def test_the_book_is_capped_and_gossip_evicts_never_connected_peers_first(
    book: PeerBook, clock: Clock
) -> None:
    book.configure(max_known=3)
    book.on_connected(A, "tcp://10.0.0.1:9000")
    book.ban(B, seconds=600, reason="test")
    book.note_address(C, "tcp://10.0.0.3:9000")
    clock.advance(1)
    d, e = "d" * 40, "e" * 40
    book.note_address(d, "tcp://10.0.0.4:9000")  # full: C (never connected, oldest) goes
    assert C not in book and d in book and A in book and B in book
    book.note_address(e, "tcp://10.0.0.5:9000")  # d goes; A (connected) and B (banned) stay
    assert d not in book and e in book and len(book) == 3
    book.on_connected(e, "tcp://10.0.0.5:9000")
    book.note_address("f" * 40, "tcp://10.0.0.6:9000")  # nothing evictable: not learned
    assert "f" * 40 not in book and len(book) == 3
    with pytest.raises(InputError):
        book.configure(max_known=0)
