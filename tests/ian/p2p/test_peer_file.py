"""peer_scores.json on disk: the fast encoder writes exactly the old writer's bytes, the fast
reader reads what the old reader read, and the streaming prune gives the full path's result
and file (and the runbook snippet's peers), never leaving a half-written file behind."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ian.p2p.peer_prune as peer_prune
from ian.errors import CorruptFileError, SchemaError
from ian.p2p.peer_book import (
    COUNTERS,
    PeerBook,
    PeerEvent,
    _plain_peers,
    decode_json,
    encode_book,
)
from ian.p2p.peer_prune import prune_file

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


# --------------------------------------------------------------------------- streaming prune


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


def _full_path(path: Path, older_than_s: float, now: float, *, dry_run: bool = False) -> Any:
    book = PeerBook.load(path, clock=Clock(now))
    result = book.prune(older_than_s, dry_run=dry_run)
    if not dry_run and book.dirty:
        book.save()
    return result


def _both(tmp_path: Path, source: Path, older_than_s: float = 30 * DAY, now: float = NOW) -> Any:
    """Prune copies of ``source`` with prune_file and with load + prune + save; the results
    and the files must be the same. Returns the result."""
    ours, theirs = tmp_path / "ours" / "peer_scores.json", tmp_path / "full" / "peer_scores.json"
    for target in (ours, theirs):
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
    result = prune_file(ours, older_than_s, clock=Clock(now))
    expected = _full_path(theirs, older_than_s, now)
    assert result == expected
    assert ours.read_bytes() == theirs.read_bytes()
    assert sorted(p.name for p in ours.parent.iterdir()) == ["peer_scores.json"]
    return result


@pytest.mark.parametrize("chunk", [300, 4096, 1 << 20])
@pytest.mark.parametrize("seed", [1, 2])
def test_streaming_prune_is_the_full_path_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, seed: int
) -> None:
    # 300 bytes: shorter than a record, so records span chunks
    monkeypatch.setattr(peer_prune, "CHUNK_BYTES", chunk)
    source = tmp_path / "source.json"
    _book(source, 400, seed=seed)
    result = _both(tmp_path, source)
    assert 0 < result.kept < 400 and result.removed == sorted(result.removed)
    kept = json.loads((tmp_path / "ours" / "peer_scores.json").read_text())
    assert list(kept["ip_bans"]) == ["2001:db8::/32"]


def test_streaming_prune_matches_the_runbook_snippet(tmp_path: Path) -> None:
    import time

    now = time.time()
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    book = _book(ours, 500, seed=9, now=now)
    banned = {r.node_id for r in book.records(banned_only=True)}
    shutil.copyfile(ours, theirs)
    code = RUNBOOK_PRUNE.replace("/data/ian/peer_scores.json", str(theirs))
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
    kept_by_snippet = set(json.loads(theirs.read_text())["peers"])

    result = prune_file(ours, 30 * DAY, clock=lambda: now)
    kept = json.loads(ours.read_text())["peers"]
    # the same rule, plus: actively banned peers are never dropped
    assert set(kept) == kept_by_snippet | banned
    assert result.kept == len(kept) and not set(result.removed) & set(kept)
    assert 0 < len(kept_by_snippet) < 500


def test_files_in_another_layout_take_the_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_prune, "CHUNK_BYTES", 2000)  # a duplicate lands in another chunk
    source = tmp_path / "source.json"
    _book(source, 120, seed=3)
    doc = json.loads(source.read_text())
    peers = doc["peers"]
    variants: dict[str, str] = {
        # what the runbook's snippet leaves behind
        "indented": json.dumps(doc, indent=2),
        # written by the earlier implementation: no ip_bans, records lacking four keys
        "legacy": json.dumps(
            {
                "version": 1,
                "saved_at": NOW - 5,
                "peers": {
                    k: {f: v for f, v in rec.items() if f not in {"score_updated_at", "addresses"}}
                    for k, rec in peers.items()
                },
            },
            separators=(",", ":"),
        ),
        # such records under today's top level: completed by the loader, so re-encoded
        "legacy records": json.dumps(
            {
                **doc,
                "peers": {
                    k: {f: v for f, v in rec.items() if f not in {"score_updated_at", "addresses"}}
                    for k, rec in peers.items()
                },
            },
            separators=(",", ":"),
        ),
        # the top level in another order
        "reordered": json.dumps(
            {"ip_bans": doc["ip_bans"], **{k: v for k, v in doc.items() if k != "ip_bans"}},
            separators=(",", ":"),
        ),
        # a duplicate id far apart (the loader keeps the first place and the last value)
        "duplicate id": json.dumps(
            {**doc, "peers": {"short": next(iter(peers.values())), **peers}},
            separators=(",", ":"),
        ).replace('"short":', '"' + list(peers)[-1] + '":', 1),
        # an id that is not 40 hex, and a reason that looks like a record boundary
        "odd id": json.dumps(
            {
                **doc,
                "peers": {
                    **dict(list(peers.items())[:50]),
                    "short": {**next(iter(peers.values())), "ban_reason": '},"' + "f" * 40},
                    **dict(list(peers.items())[50:]),
                },
            },
            separators=(",", ":"),
        ),
    }
    for name, text in variants.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        sub = tmp_path / name
        sub.mkdir()
        _both(sub, path)


def test_nothing_to_remove_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "peer_scores.json"
    _book(path, 50, seed=5)
    before = path.read_bytes()
    stat = path.stat()
    result = prune_file(path, 365 * DAY, clock=Clock(NOW - 3 * DAY))  # no ban has expired then
    assert result.removed == [] and result.kept == 50
    assert path.read_bytes() == before and path.stat().st_ino == stat.st_ino
    assert [p.name for p in tmp_path.iterdir()] == ["peer_scores.json"]


def test_dry_run_writes_nothing_and_tells_the_same(tmp_path: Path) -> None:
    path = tmp_path / "peer_scores.json"
    _book(path, 200, seed=6)
    before = path.read_bytes()
    result = prune_file(path, 30 * DAY, dry_run=True, clock=Clock())
    assert result.dry_run and result == _full_path(path, 30 * DAY, NOW, dry_run=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["peer_scores.json"]


def test_missing_file_is_an_empty_book(tmp_path: Path) -> None:
    result = prune_file(tmp_path / "peer_scores.json", DAY)
    assert (result.kept, result.removed) == (0, [])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"version":1,"saved_at":1,"peers":{"' + "a" * 40 + '":{"score":1', CorruptFileError),
        (
            '{"version":1,"saved_at":1,"peers":{"x":{"score":"high","last_seen":1}},"ip_bans":{}}',
            CorruptFileError,
        ),
        ('{"version":2,"saved_at":1,"peers":{},"ip_bans":{}}', SchemaError),
        (
            '{"version":1,"saved_at":1,"peers":{},"ip_bans":{"nope":{"banned_until":1}}}',
            CorruptFileError,
        ),
    ],
)
def test_corrupt_file_raises_the_loaders_error(
    tmp_path: Path, content: str, error: type[Exception]
) -> None:
    path = tmp_path / "peer_scores.json"
    path.write_text(content)
    with pytest.raises(error):
        prune_file(path, DAY)
    assert path.read_text() == content


def test_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    """SIGKILL while the new file is being written: peer_scores.json is the old one, whole,
    and the next prune works. The child stops itself after its third chunk (a pause, so the
    kill lands mid-write for sure) and says so on stdout."""
    path = tmp_path / "peer_scores.json"
    _book(path, 300, seed=8)
    before = path.read_bytes()
    child = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import ian.p2p.peer_prune as pp

        pp.CHUNK_BYTES = 2000
        real, calls = pp._Scan._chunk, []

        def chunk(self, buf, cut):
            calls.append(1)
            if len(calls) == 3:
                print("mid-write", flush=True)
                sys.stdin.read()  # until killed
            return real(self, buf, cut)

        pp._Scan._chunk = chunk
        pp.prune_file(Path({str(path)!r}), 30 * 86400, clock=lambda: {NOW!r})
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"mid-write\n"
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1  # the new file, half written
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert path.read_bytes() == before
    assert len(PeerBook.load(path, clock=Clock())) == 300
    result = prune_file(path, 30 * DAY, clock=Clock())
    assert result.kept == len(PeerBook.load(path, clock=Clock()))
