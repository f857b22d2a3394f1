"""Prune ``peer_scores.json`` without loading it: ``ian peers prune`` on a million peers.

:func:`prune_file` gives the result :meth:`PeerBook.load` + :meth:`PeerBook.prune` +
:meth:`PeerBook.save` would (same rule, same :class:`PruneResult`, same file), in a fraction of
the time and memory: the peers are read in chunks of whole records, msgspec parses only
``score``, ``last_seen``, ``score_updated_at`` and ``banned_until`` of each record into a small
struct (validated as the loader does), and the bytes of every kept record are copied unchanged
into a temp file that replaces the old one atomically (:func:`ian.atomic.atomic_writer`: a crash
at any point leaves the old file). Memory is a few chunks plus the ids; nothing is written when
nothing goes.

Streaming applies to a file in the node's own layout, the one :func:`encode_book` writes:
compact JSON with ``version`` 1, ``saved_at``, ``peers`` and ``ip_bans`` in that order, every
record with ``score_updated_at``. For such a file the result is byte for byte what the full path
writes. Any other file -- the indented one the runbook's snippet writes, records of the earlier
implementation, duplicate ids, a top level in another order, anything invalid -- takes the full
path, which rewrites it in the node's layout or raises the loader's error, as before. Records
are not re-encoded: one edited by hand in that layout keeps its spelling (numbers as written,
raw UTF-8) and, should it lack a key other than those four, stays without it (the loader fills
it in on the next load).
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from itertools import compress, repeat
from operator import attrgetter, is_not, not_
from pathlib import Path
from typing import IO, Any

import msgspec

from ian.atomic import atomic_writer
from ian.errors import InputError
from ian.p2p.peer_book import RECOVERY, PeerBook, PruneResult, decode_json, gc_paused

__all__ = ["CHUNK_BYTES", "prune_file"]

#: bytes read per step (whole records are cut out of it)
CHUNK_BYTES = 8 << 20
#: the end of the file (``ip_bans``) is looked for in this many last bytes
_TAIL_BYTES = 1 << 20

_HEADER = re.compile(rb'\{"version":1,"saved_at":(-?[0-9][-+.0-9eE]*),"peers":\{')
#: the end of one record and the start of the next: a 40-hex id whose value is an object (a
#: record holds no object, and ``"`` after ``,`` opens a string, so this is never inside one)
_BOUNDARY = re.compile(rb'\},"[0-9a-fA-F]{40}":\{')
_SPLIT_AT_BOUNDARY = re.compile(rb'\},"(?=[0-9a-fA-F]{40}":\{)')
_PEERS_END = b'},"ip_bans":'
_SEP = b'},"'


class _Seen(msgspec.Struct, gc=False):
    """What the prune rule and the loader's checks read from a record. ``score_updated_at`` is
    required: a record of the earlier implementation lacks it, and only the full path
    completes such records."""

    score: float
    last_seen: float
    score_updated_at: float
    banned_until: float | None = None


_decode_chunk = msgspec.json.Decoder(dict[str, _Seen]).decode
_get_last_seen = attrgetter("last_seen")
_get_banned_until = attrgetter("banned_until")


class _NotStreamable(Exception):
    """The file is not in the node's layout: take the full path."""


class _Unchanged(Exception):
    """Nothing to remove: drop the temp file, keep the old one."""


def prune_file(
    path: Path,
    older_than_s: float,
    *,
    dry_run: bool = False,
    ban_seconds: float = 86400,
    clock: Callable[[], float] = time.time,
) -> PruneResult:
    """Drop the peers of the file at ``path`` whose ``last_seen`` is not after
    ``now - older_than_s``, except peers banned now; expired IP/CIDR bans go too (see
    :meth:`PeerBook.prune`: offline no peer is connected). ``dry_run`` writes nothing. The
    caller holds ``node.lock`` unless ``dry_run``. A missing file is an empty book. Raises what
    :meth:`PeerBook.load` raises for a corrupt or newer file."""
    if not (math.isfinite(older_than_s) and older_than_s >= 0):
        raise InputError("older_than_s must be a non-negative number", field="older_than_s")
    path = Path(path)
    try:
        with gc_paused():
            return _stream(path, older_than_s, dry_run=dry_run, clock=clock)
    except (_NotStreamable, FileNotFoundError):
        pass
    book = PeerBook.load(path, ban_seconds=ban_seconds, clock=clock)
    result = book.prune(older_than_s, dry_run=dry_run)
    if not dry_run and book.dirty:
        book.save()
    return result


class _Sink:
    """Where kept records go: for a real run a thread writes them to the temp file while the
    next chunk is parsed (a write releases the GIL); a dry run writes nothing. Use as a
    context manager: leaving it waits until everything is written, or, when the block
    raised, stops the thread; an error of the thread is raised there."""

    def __init__(self, fh: IO[bytes] | None) -> None:
        self._fh = fh
        self._first = True
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=12)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if fh is not None:
            self._thread = threading.Thread(target=self._drain, name="peer-prune-writer")
            self._thread.start()

    def _drain(self) -> None:
        assert self._fh is not None
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._fh.write(data)
                except BaseException as exc:  # raised in the caller's thread
                    self._error = exc

    def write(self, data: bytes) -> None:
        if self._thread is not None:
            if self._error is not None:
                raise self._error
            self._queue.put(data)

    def records(self, pieces: list[bytes | bytearray]) -> None:
        if pieces:
            self.write(b'"' if self._first else b',"')
            self.write(_SEP.join(pieces))
            self.write(b"}")
            self._first = False

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        if exc_info[0] is not None:
            self._error = self._error or RuntimeError("stopped")  # drop what is queued
        self._queue.put(None)
        self._thread.join()
        if exc_info[0] is None and self._error is not None:
            raise self._error


def _stream(
    path: Path, older_than_s: float, *, dry_run: bool, clock: Callable[[], float]
) -> PruneResult:
    now = clock()
    with path.open("rb") as src:
        size = src.seek(0, 2)
        src.seek(0)
        head = src.read(min(size, 4096))
        match = _HEADER.match(head)
        if match is None:
            raise _NotStreamable("not the node's layout")
        try:
            saved_at = json.loads(match.group(1))
        except ValueError:
            raise _NotStreamable("saved_at") from None
        start = match.end()
        tail_at = max(start - 1, size - _TAIL_BYTES)
        src.seek(tail_at)
        tail = src.read()
        cut = tail.rfind(_PEERS_END)
        if cut < 0:
            raise _NotStreamable("no ip_bans after the peers")
        end = tail_at + cut  # the peers' closing brace
        ip_bans = _ip_bans(path, b"{" + tail[cut + 2 :])
        expired = [t for t, info in ip_bans.items() if info["banned_until"] <= now]
        scan = _Scan(now, now - older_than_s, saved_at)
        if dry_run:
            scan.run(src, start, end, _Sink(None))
            return scan.result(dry_run=True)
        try:
            with atomic_writer(path, mode=0o644) as out, _Sink(out) as sink:
                sink.write(b'{"version":1,"saved_at":' + _dumps(clock()) + b',"peers":{')
                scan.run(src, start, end, sink)
                if not scan.removed and not expired:
                    raise _Unchanged
                for target in expired:
                    del ip_bans[target]
                sink.write(b'},"ip_bans":' + _dumps(ip_bans) + b"}\n")
        except _Unchanged:
            pass
        return scan.result(dry_run=False)


def _dumps(value: Any) -> bytes:
    """The old writer's spelling of ``value`` (compact ``json.dumps``)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _ip_bans(path: Path, raw: bytes) -> dict[str, Any]:
    """``ip_bans`` from the end of the file, checked as the loader checks it."""
    import ipaddress

    try:
        doc = decode_json(raw, path, RECOVERY)
    except Exception:
        raise _NotStreamable("tail") from None
    if not isinstance(doc, dict) or set(doc) - {"ip_bans"}:
        raise _NotStreamable("more than ip_bans after the peers")
    ip_bans = doc.get("ip_bans", {})
    if not isinstance(ip_bans, dict):
        raise _NotStreamable("ip_bans")
    for target, info in ip_bans.items():
        try:
            ipaddress.ip_network(target, strict=False)
        except ValueError:
            raise _NotStreamable("ip ban target") from None
        until = info.get("banned_until") if isinstance(info, dict) else None
        if not (isinstance(until, (int, float)) and not isinstance(until, bool)):
            raise _NotStreamable("ip ban")
    return ip_bans


class _Scan:
    """One pass over the peers: which records stay (their bytes go to the sink), which go."""

    def __init__(self, now: float, cutoff: float, saved_at: object) -> None:
        self.now = now
        self.cutoff = cutoff
        numeric = isinstance(saved_at, (int, float)) and not isinstance(saved_at, bool)
        self.fallback = saved_at if numeric else now
        self.kept = 0
        self.removed: list[str] = []
        self.seen: set[str] = set()

    def result(self, *, dry_run: bool) -> PruneResult:
        self.removed.sort()
        return PruneResult(kept=self.kept, removed=self.removed, dry_run=dry_run)

    def run(self, src: IO[bytes], start: int, end: int, sink: _Sink) -> None:
        """Read bytes ``start:end`` of ``src`` (the records inside ``"peers":{...}``)."""
        if end == start:
            return
        src.seek(start)
        if src.read(1) != b'"':
            raise _NotStreamable("peers")
        left = end - start - 1
        carry = b""  # the start of a record cut by the chunk's end, after its opening quote
        while left > 0:
            data = src.read(min(CHUNK_BYTES, left))
            if not data:
                raise _NotStreamable("the file shrank")
            left -= len(data)
            # '{"' + records: the brace makes the chunk an object for the decoder, and with
            # the quote every record sits between separators '},"' (see _chunk)
            buf = bytearray(b'{"')
            buf += carry
            buf += data
            del data
            if left > 0:
                cut = _last_boundary(buf)
                if cut < 0:  # a record longer than a chunk: read on
                    carry = bytes(buf[2:])
                    continue
                carry = bytes(buf[cut + 3 :])
            else:
                cut, carry = len(buf) - 1, b""
                buf += b',"'  # as if a record followed
            sink.records(self._chunk(buf, cut))

    def _chunk(self, buf: bytearray, cut: int) -> list[bytes | bytearray]:
        """The kept records of ``buf[1:cut + 1]`` (``"id":{...},"id":{...}``; ``buf[0]`` is
        ``{`` and ``buf[cut:cut + 3]`` the separator ``},"`` after the last record), each as
        it is between separators: ``id":{...`` without the opening quote and closing brace."""
        after = buf[cut + 1]
        buf[cut + 1] = 0x7D  # "}": the chunk alone is an object
        try:
            with memoryview(buf) as view:
                seen = _decode_chunk(view[: cut + 2])
        except msgspec.DecodeError:
            raise _NotStreamable("a record the loader would refuse") from None
        finally:
            buf[cut + 1] = after
        pieces: list[bytes | bytearray] = list(buf.split(_SEP))
        # what follows the separator at the cut is not this chunk's
        del pieces[len(pieces) - 1 - buf.count(_SEP, cut + 1) :]
        pieces[0] = pieces[0][2:]  # '{"'
        if len(pieces) != len(seen):  # a string holding '},"', or a duplicate id
            pieces = list(_SPLIT_AT_BOUNDARY.split(bytes(buf[2:cut])))
            if len(pieces) != len(seen):
                raise _NotStreamable("duplicate ids")
        before = len(self.seen)
        self.seen.update(seen)
        if len(self.seen) != before + len(seen):
            raise _NotStreamable("duplicate ids")
        # The rule, in C-level passes: last seen after the cutoff, or banned now.
        recs = seen.values()
        keep = list(map(self.cutoff.__lt__, map(_get_last_seen, recs)))
        untils = list(map(_get_banned_until, recs))
        for i in compress(range(len(untils)), map(is_not, untils, repeat(None))):
            if untils[i] > self.now:
                keep[i] = True
        kept = list(compress(pieces, keep))
        self.removed.extend(compress(seen, map(not_, keep)))
        self.kept += len(kept)
        return kept


def _last_boundary(buf: bytes | bytearray) -> int:
    """Index of the ``}`` ending the last record of ``buf`` that has a whole record start
    after it, or -1."""
    at = buf.rfind(_SEP)
    while at >= 0 and not _BOUNDARY.match(buf, at):
        at = buf.rfind(_SEP, 0, at)
    return at
