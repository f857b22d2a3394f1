"""The peer book: every peer this node knows, its score, counters, addresses and bans.

One :class:`PeerBook` per node, persisted in ``peer_scores.json`` (ARCHITECTURE.md §3)::

    {"version": 1, "saved_at": <epoch s>,
     "peers": {<node_id>: {"score", "banned_until", "ban_reason", <8 counters>,
                           "first_seen", "last_seen", "last_connected", "addresses",
                           "score_updated_at"}},
     "ip_bans": {<ip or CIDR>: {"banned_until", "reason", "created_at"}}}

All times are epoch seconds (float). Every peer always carries every key with a number in
``score``/``last_seen``, so the operator runbook's ``jq`` queries and its Python prune snippet
(``v['last_seen'] > cutoff``) keep working; IP/CIDR bans live outside ``peers`` for that reason.
``score_updated_at`` is when ``score`` was last brought up to date (decay is applied lazily).

Scoring (see :data:`EVENT_WEIGHTS`): a peer starts at 100, clamped to [0, 200]; between updates
the score decays toward 100 as ``100 + (s - 100) * exp(-0.01 * hours)``. After a *negative* event,
a score below :data:`DISCONNECT_BELOW` asks the caller to disconnect and one below
:data:`BAN_BELOW` bans the peer for ``ban_seconds``. Positive events never disconnect, so a peer
whose ban expired can earn its way back while its score recovers.

Records are plain dicts internally; callers see frozen :class:`PeerRecord` snapshots. The file
is read with msgspec (several times faster than the stdlib and lighter in memory; anything msgspec
refuses is handed to ``json``, so what loads and every error message are as before) and written
by :func:`encode_book`: exactly the bytes ``json.dumps(doc, separators=(",", ":"))`` writes,
produced by msgspec whenever that is provably the same, else by ``json``. The book is guarded by
one re-entrant lock, so it may be used from the event loop and worker threads. Nothing here does
network I/O; file I/O happens only in :meth:`PeerBook.load`, :meth:`save` and
:meth:`flush_if_due` (:mod:`ian.p2p.peer_prune` prunes a file without loading it).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import heapq
import ipaddress
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeGuard

import msgspec

from ian.atomic import atomic_write_bytes, read_bytes
from ian.errors import CorruptFileError, InputError, NotFoundError, SchemaError

__all__ = [
    "BAN_BELOW",
    "COUNTERS",
    "COUNTER_FOR_EVENT",
    "DECAY_PER_HOUR",
    "DISCONNECT_BELOW",
    "EVENT_WEIGHTS",
    "FILE_VERSION",
    "MAX_ADDRESSES",
    "MAX_SCORE",
    "MIN_SCORE",
    "NEUTRAL_SCORE",
    "RECOVERY",
    "TRUSTED_FROM",
    "BanInfo",
    "PeerBook",
    "PeerEvent",
    "PeerRecord",
    "PruneResult",
    "Verdict",
    "decayed_score",
    "decode_json",
    "encode_book",
    "parse_ban_target",
]

FILE_VERSION = 1

NEUTRAL_SCORE = 100.0
MIN_SCORE = 0.0
MAX_SCORE = 200.0
DISCONNECT_BELOW = 30.0
BAN_BELOW = 10.0
TRUSTED_FROM = 150.0
DECAY_PER_HOUR = 0.01
MAX_ADDRESSES = 8
#: positive score a peer can earn per hour (useful work: blocks served, valid contributions);
#: a flooder cannot out-earn its charges
MAX_CREDIT_PER_HOUR = 10.0
#: default cap of the book (``Settings.max_known_peers``)
MAX_KNOWN_PEERS = 10_000
FLUSH_INTERVAL_S = 2.0
#: flush_if_due waits at least this many times the last write's duration, so a huge book does
#: not spend its life rewriting itself.
FLUSH_DUTY_FACTOR = 20.0

RECOVERY = (
    "stop the node, then run `ian peers reset --all` to move the file aside; "
    "the node starts with an empty peer book"
)


class PeerEvent(enum.Enum):
    """Something a peer did that changes its score."""

    VALID_MESSAGE = "valid_message"
    VALID_CONTRIBUTION = "valid_contribution"
    SUCCESSFUL_SYNC = "successful_sync"
    INVALID_MESSAGE = "invalid_message"
    INVALID_CONTRIBUTION = "invalid_contribution"
    RATE_LIMIT_VIOLATION = "rate_limit_violation"
    PROTOCOL_VIOLATION = "protocol_violation"
    FAILED_SYNC = "failed_sync"


class Verdict(enum.Enum):
    """What the caller must do with the peer after :meth:`PeerBook.record`."""

    OK = "ok"
    DISCONNECT = "disconnect"
    BAN = "ban"


EVENT_WEIGHTS: dict[PeerEvent, float] = {
    PeerEvent.VALID_MESSAGE: 0.0,  # counted, never credited: talking is not useful work
    PeerEvent.VALID_CONTRIBUTION: 1.0,
    PeerEvent.SUCCESSFUL_SYNC: 5.0,
    PeerEvent.INVALID_MESSAGE: -5.0,
    PeerEvent.INVALID_CONTRIBUTION: -10.0,
    PeerEvent.RATE_LIMIT_VIOLATION: -10.0,
    PeerEvent.PROTOCOL_VIOLATION: -20.0,
    PeerEvent.FAILED_SYNC: -5.0,
}

COUNTER_FOR_EVENT: dict[PeerEvent, str] = {
    PeerEvent.VALID_MESSAGE: "valid_messages",
    PeerEvent.VALID_CONTRIBUTION: "valid_contributions",
    PeerEvent.SUCCESSFUL_SYNC: "successful_syncs",
    PeerEvent.INVALID_MESSAGE: "invalid_messages",
    PeerEvent.INVALID_CONTRIBUTION: "invalid_contributions",
    PeerEvent.RATE_LIMIT_VIOLATION: "rate_limit_violations",
    PeerEvent.PROTOCOL_VIOLATION: "protocol_violations",
    PeerEvent.FAILED_SYNC: "failed_syncs",
}

COUNTERS: tuple[str, ...] = tuple(COUNTER_FOR_EVENT.values())
#: counters summed by the "violations" sort order
VIOLATION_COUNTERS: tuple[str, ...] = (
    "rate_limit_violations",
    "protocol_violations",
    "invalid_messages",
    "invalid_contributions",
)
_RECORD_KEYS: tuple[str, ...] = (
    "score",
    "banned_until",
    "ban_reason",
    *COUNTERS,
    "first_seen",
    "last_seen",
    "last_connected",
    "addresses",
    "score_updated_at",
)
_NODE_ID_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_SORTS = ("score", "violations", "last-seen")


def decayed_score(score: float, hours: float) -> float:
    """``score`` after ``hours`` of decay toward 100 (negative ``hours`` count as 0)."""
    if hours <= 0:
        return score
    return NEUTRAL_SCORE + (score - NEUTRAL_SCORE) * math.exp(-DECAY_PER_HOUR * hours)


def _clamp(score: float) -> float:
    return MIN_SCORE if score < MIN_SCORE else MAX_SCORE if score > MAX_SCORE else score


def parse_ban_target(target: str) -> tuple[str, str]:
    """Classify a ban target: ``("node", <lower-case id>)`` or ``("ip", <canonical network>)``.

    A node id is 40 hex characters; an IP becomes a /32 (/128) network string without the
    prefix (``"10.1.2.3"``); a CIDR must have no host bits set. Raises :class:`InputError`.
    """
    text = target.strip() if isinstance(target, str) else ""
    if _NODE_ID_RE.match(text):
        return "node", text.lower()
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            return "ip", str(net)
        return "ip", str(ipaddress.ip_address(text))
    except ValueError:
        pass
    fix = "give a 40-hex node id, an IP (10.0.0.7, ::1) or a CIDR (10.0.0.0/8)"
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
            fix = f"host bits are set; did you mean {net}?"
        except ValueError:
            pass
    raise InputError(f"invalid ban target {target!r}", field="target", fix=fix)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A snapshot of one peer; ``score`` is decayed to the snapshot time ``as_of``."""

    node_id: str
    score: float
    banned: bool
    banned_until: float | None
    ban_reason: str | None
    valid_messages: int
    valid_contributions: int
    successful_syncs: int
    invalid_messages: int
    invalid_contributions: int
    rate_limit_violations: int
    protocol_violations: int
    failed_syncs: int
    first_seen: float
    last_seen: float
    last_connected: float | None
    addresses: tuple[str, ...]
    connected: bool
    as_of: float

    @property
    def violations(self) -> int:
        """Sum of the misbehaviour counters (the "violations" sort order)."""
        return sum(getattr(self, name) for name in VIOLATION_COUNTERS)

    @property
    def trusted(self) -> bool:
        return self.score >= TRUSTED_FROM

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (addresses as a list, plus ``violations`` and ``trusted``)."""
        data = asdict(self)
        data["addresses"] = list(self.addresses)
        data["violations"] = self.violations
        data["trusted"] = self.trusted
        return data


@dataclass(frozen=True, slots=True)
class BanInfo:
    """A ban as set by :meth:`PeerBook.ban`; ``kind`` is ``"node"`` or ``"ip"``."""

    target: str
    kind: str
    banned_until: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PruneResult:
    """Outcome of :meth:`PeerBook.prune`: how many peers stay, which ids go (sorted)."""

    kept: int
    removed: list[str]
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "removed": len(self.removed),
            "removed_ids": self.removed,
            "dry_run": self.dry_run,
        }


def _new_record(now: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"score": NEUTRAL_SCORE, "banned_until": None, "ban_reason": None}
    for name in COUNTERS:
        rec[name] = 0
    rec.update(
        first_seen=now, last_seen=now, last_connected=None, addresses=[], score_updated_at=now
    )
    return rec


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: parsing a million-peer file creates ~20 M objects, and the
    collections that triggers (all futile: JSON has no cycles) cost more than the parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _is_number(value: object) -> TypeGuard[int | float]:
    """True for an int or float that is not a bool (JSON numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- file codec

#: record fields holding a time or a score (float, int or None)
_FLOAT_FIELDS: tuple[str, ...] = (
    "score",
    "banned_until",
    "first_seen",
    "last_seen",
    "last_connected",
    "score_updated_at",
)
_get_floats = itemgetter(*_FLOAT_FIELDS)
_get_counters = itemgetter(*COUNTERS)
_get_reason = itemgetter("ban_reason")
_get_addresses = itemgetter("addresses")
_NONE_TYPE = type(None)
#: msgspec and ``repr`` spell every float in this range (and 0) alike; outside it they differ
#: (``1e-05`` vs ``0.00001``, ``1e+16`` vs ``1e16``)
_PLAIN_MIN, _PLAIN_MAX = 1e-4, 1e16


def _plain_float(value: float) -> bool:
    return value == 0 or (_PLAIN_MIN <= abs(value) < _PLAIN_MAX)


def _plain(value: object) -> bool:
    """True when msgspec encodes ``value`` exactly as ``json.dumps`` does (strings aside: the
    caller checks that the output is ASCII without DEL). A plain walk: for small values."""
    kind = type(value)
    if kind is str or kind is bool or kind is int or value is None:
        return True
    if kind is float:
        return math.isfinite(value) and _plain_float(value)  # type: ignore[arg-type]
    if kind is list:
        return all(map(_plain, value))  # type: ignore[call-overload]
    if kind is dict:
        items: dict[Any, Any] = value  # type: ignore[assignment]
        return all(type(k) is str for k in items) and all(map(_plain, items.values()))
    return False


def _plain_peers(peers: dict[str, dict[str, Any]]) -> bool:
    """:func:`_plain` for the ``peers`` map, in C-level passes (a million records in about half
    a second): every record has exactly the 16 keys, times and scores are numbers in the plain
    range (or None/0), counters integers, ``ban_reason`` a string or None, ``addresses`` a list
    of strings. Anything else (a hand-edited file) is not plain, which only means slow."""
    recs = peers.values()
    if not recs:
        return True
    try:
        if set(map(len, recs)) != {len(_RECORD_KEYS)} or set(map(type, peers)) != {str}:
            return False
        # None, 0 and False drop out; sum() refuses what is not a number
        numbers = list(filter(None, chain.from_iterable(map(_get_floats, recs))))
        if numbers and not (
            math.isfinite(sum(numbers))  # NaN or infinity anywhere
            and min(numbers) >= _PLAIN_MIN
            and max(numbers) < _PLAIN_MAX
        ):
            return False
        del numbers
        # an int sum: ints and bools only (one float makes it a float)
        if type(sum(chain.from_iterable(map(_get_counters, recs)))) is not int:
            return False
        if not set(map(type, map(_get_reason, recs))) <= {str, _NONE_TYPE}:
            return False
        addresses = list(map(_get_addresses, recs))
        if set(map(type, addresses)) != {list}:
            return False
        "".join(chain.from_iterable(addresses))  # strings only
    except (KeyError, TypeError, OverflowError):
        return False
    return True


def encode_book(saved_at: float, peers: dict[str, Any], ip_bans: dict[str, Any]) -> bytes:
    """The file's bytes: exactly ``json.dumps(doc, separators=(",", ":"), allow_nan=False)``
    plus a newline, for ``doc = {"version": 1, "saved_at", "peers", "ip_bans"}``.

    msgspec writes it (about 10x faster) when that provably gives the same bytes: numbers in
    the range where msgspec and ``repr`` agree, no NaN, only JSON types, and an ASCII result
    without DEL (``json`` escapes the rest as ``\\uXXXX``); otherwise ``json`` does. Raises
    ``ValueError`` for NaN/infinity, like ``json``.
    """
    doc = {"version": FILE_VERSION, "saved_at": saved_at, "peers": peers, "ip_bans": ip_bans}
    if _plain(saved_at) and _plain(ip_bans) and _plain_peers(peers):
        try:
            data = msgspec.json.encode(doc)
        except (TypeError, ValueError, OverflowError):  # e.g. a lone surrogate in a string
            pass
        else:
            if data.isascii() and b"\x7f" not in data:
                return data + b"\n"
    with gc_paused():
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False, check_circular=False)
    return (text + "\n").encode("utf-8")


def decode_json(raw: bytes, path: Path, recovery: str) -> Any:
    """Parse a peer-book file's bytes: msgspec, or for what it refuses (NaN literals, a BOM,
    UTF-16, invalid JSON) the stdlib, whose result or :class:`CorruptFileError` message
    stands, as before msgspec."""
    if not raw.strip():
        raise CorruptFileError(f"{path} is corrupt: the file is empty", fix=recovery)
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        pass
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptFileError(f"{path} is corrupt: {exc}", fix=recovery) from exc


def read_book_json(path: Path, recovery: str) -> Any:
    """:func:`ian.atomic.read_json` with :func:`decode_json` (same errors)."""
    return decode_json(read_bytes(path), path, recovery)


class PeerBook:
    """All known peers with scores, counters, addresses and bans (node-id and IP/CIDR).

    Mutations change memory only and mark the book dirty; :meth:`save` writes atomically and
    :meth:`flush_if_due` writes when dirty and enough time has passed. The connected set is
    memory-only (reported by the P2P layer through :meth:`on_connected`/:meth:`on_disconnected`).
    """

    def __init__(
        self,
        path: Path,
        *,
        ban_seconds: float = 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """An empty book that will save to ``path``; use :meth:`load` to read an existing one."""
        self.path = Path(path)
        self._clock = clock
        self._ban_seconds = float(ban_seconds)
        self.max_known = MAX_KNOWN_PEERS
        self._credit_hour = -1
        self._credits: dict[str, float] = {}
        self._lock = threading.RLock()
        # Held from snapshot to rename: files reach the disk in the order they were taken, so a
        # slow save can never write an older book over a newer one.
        self._save_lock = threading.Lock()
        self._peers: dict[str, dict[str, Any]] = {}
        self._ip_bans: dict[str, dict[str, Any]] = {}
        self._ip_nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        self._banned_ids: set[str] = set()  # ids whose banned_until is not None (maybe expired)
        self._connected: dict[str, str] = {}
        self._dirty = False
        self._last_write = -math.inf
        self._last_write_duration = 0.0

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        ban_seconds: float = 86400,
        clock: Callable[[], float] = time.time,
    ) -> PeerBook:
        """Read ``path``; a missing file gives an empty book.

        Files written by the earlier implementation (without ``ban_reason``, ``last_connected``,
        ``addresses``, ``score_updated_at`` or ``ip_bans``) load with those filled in. Raises
        :class:`CorruptFileError` (naming the file and :data:`RECOVERY`) for torn or malformed
        content and :class:`SchemaError` for a newer ``version``.
        """
        book = cls(path, ban_seconds=ban_seconds, clock=clock)
        try:
            with gc_paused():
                data = read_book_json(book.path, RECOVERY)
                book._adopt(data)
        except FileNotFoundError:
            return book
        book._last_write = clock()
        return book

    def _corrupt(self, detail: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path} is corrupt: {detail}", fix=RECOVERY)

    def _adopt(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise self._corrupt("the top level is not an object")
        version = data.get("version")
        if version != FILE_VERSION:
            if _is_number(version) and version > FILE_VERSION:
                raise SchemaError(
                    f"{self.path} has version {version}; this node reads version {FILE_VERSION}",
                    fix="upgrade ian, or " + RECOVERY,
                )
            raise self._corrupt(f"unknown version {version!r}")
        peers = data.get("peers")
        if not isinstance(peers, dict):
            raise self._corrupt('"peers" is missing or not an object')
        full = len(_RECORD_KEYS)
        saved_at = data.get("saved_at")
        fallback = saved_at if _is_number(saved_at) else self._clock()
        banned: set[str] = set()
        for node_id, rec in peers.items():
            if not isinstance(rec, dict):
                raise self._corrupt(f"peer {node_id!r} is not an object")
            if not (_is_number(rec.get("score")) and _is_number(rec.get("last_seen"))):
                raise self._corrupt(f"peer {node_id!r} lacks a numeric score or last_seen")
            if len(rec) != full or "score_updated_at" not in rec:
                self._fill_defaults(rec, fallback)
            until = rec["banned_until"]
            if until is not None:
                if not _is_number(until):
                    raise self._corrupt(f"peer {node_id!r} has a non-numeric banned_until")
                banned.add(node_id)
        ip_bans = data.get("ip_bans", {})
        if not isinstance(ip_bans, dict):
            raise self._corrupt('"ip_bans" is not an object')
        nets = {}
        for target, info in ip_bans.items():
            try:
                nets[target] = ipaddress.ip_network(target, strict=False)
            except ValueError:
                raise self._corrupt(f"ip ban {target!r} is not an IP or CIDR") from None
            if not (isinstance(info, dict) and _is_number(info.get("banned_until"))):
                raise self._corrupt(f"ip ban {target!r} lacks a numeric banned_until")
        self._peers, self._ip_bans, self._ip_nets = peers, ip_bans, nets
        self._banned_ids = banned

    @staticmethod
    def _fill_defaults(rec: dict[str, Any], fallback: float) -> None:
        rec.setdefault("banned_until", None)
        rec.setdefault("ban_reason", None)
        for name in COUNTERS:
            rec.setdefault(name, 0)
        rec.setdefault("first_seen", rec["last_seen"])
        rec.setdefault("last_connected", None)
        rec.setdefault("addresses", [])
        rec.setdefault("score_updated_at", fallback)

    def _serialize(self) -> bytes:
        with self._lock:
            data = encode_book(self._clock(), self._peers, self._ip_bans)
            self._dirty = False
        return data

    def save(self) -> None:
        """Write the whole book atomically now (compact JSON); durable when this returns."""
        with self._save_lock:
            started = time.monotonic()
            data = self._serialize()
            try:
                atomic_write_bytes(self.path, data, mode=0o644)
            except BaseException:
                self._dirty = True
                raise
            self._last_write = self._clock()
            self._last_write_duration = time.monotonic() - started

    def flush_if_due(self) -> None:
        """Save when dirty and at least ``max(2 s, 20 x last write duration)`` since the last
        write (by the injected clock); otherwise do nothing. Cheap to call often."""
        if not self._dirty:
            return
        interval = max(FLUSH_INTERVAL_S, FLUSH_DUTY_FACTOR * self._last_write_duration)
        if self._clock() - self._last_write >= interval:
            self.save()

    @property
    def dirty(self) -> bool:
        """True when memory holds changes not yet written."""
        return self._dirty

    def configure(self, *, ban_seconds: float | None = None, max_known: int | None = None) -> None:
        """Change tunables at run time (``ban_seconds`` affects bans set from now on;
        ``max_known`` caps what peer exchange may add, a book already bigger is not cut)."""
        if ban_seconds is not None:
            if not (math.isfinite(ban_seconds) and ban_seconds > 0):
                raise InputError("ban_seconds must be a positive number", field="ban_seconds")
            self._ban_seconds = float(ban_seconds)
        if max_known is not None:
            if max_known < 1:
                raise InputError("max_known must be at least 1", field="max_known")
            self.max_known = max_known

    @property
    def ban_seconds(self) -> float:
        return self._ban_seconds

    # ------------------------------------------------------------------ P2P hot path

    def _touch(self, node_id: str, now: float) -> dict[str, Any]:
        rec = self._peers.get(node_id)
        if rec is None:
            rec = self._peers[node_id] = _new_record(now)
        return rec

    def _active_ban(self, rec: dict[str, Any], now: float) -> bool:
        until = rec["banned_until"]
        return until is not None and until > now

    def ban_reason(self, *, node_id: str | None = None, ip: str | None = None) -> str | None:
        """Why a peer may not connect now, or None when it is allowed.

        Checks the node id's ban and every IP/CIDR ban containing ``ip`` (a bare address,
        IPv4-mapped IPv6 is matched as IPv4); expired bans are ignored. An unparsable ``ip`` is
        treated as not IP-banned.
        """
        now = self._clock()
        with self._lock:
            if node_id is not None:
                rec = self._peers.get(node_id)
                if rec is not None and self._active_ban(rec, now):
                    return f"node {node_id} banned until {_fmt_time(rec['banned_until'])}: " + (
                        rec["ban_reason"] or "no reason given"
                    )
            if ip is not None and self._ip_bans:
                try:
                    addr = ipaddress.ip_address(ip.strip("[]"))
                except ValueError:
                    return None
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                for target, net in self._ip_nets.items():
                    info = self._ip_bans[target]
                    if info["banned_until"] > now and addr.version == net.version and addr in net:
                        return (
                            f"address {addr} banned by {target} until "
                            f"{_fmt_time(info['banned_until'])}: {info['reason']}"
                        )
        return None

    def on_connected(self, node_id: str, address: str) -> None:
        """The peer completed its handshake. ``address`` should be its *dialable* listen
        address (``tcp://host:port``, from hello for inbound peers); it moves to the front of
        the peer's addresses. Sets ``last_seen`` and ``last_connected``."""
        now = self._clock()
        with self._lock:
            rec = self._touch(node_id, now)
            rec["last_seen"] = now
            rec["last_connected"] = now
            if address:
                self._add_address(rec, address, front=True)
            self._connected[node_id] = address
            self._dirty = True

    def on_disconnected(self, node_id: str) -> None:
        """The connection ended (either side); updates ``last_seen``. Unknown ids are ignored."""
        now = self._clock()
        with self._lock:
            self._connected.pop(node_id, None)
            rec = self._peers.get(node_id)
            if rec is not None:
                rec["last_seen"] = now
                self._dirty = True

    def record(self, node_id: str, event: PeerEvent) -> Verdict:
        """Apply ``event`` to the peer's score and counters; return what to do with the peer.

        Decay since the last update is applied first, then the event's weight, clamped to
        [0, 200]. Credits (positive weights) are capped at :data:`MAX_CREDIT_PER_HOUR` per peer
        per clock hour, so no rate of "good" messages cancels the charges of bad ones.
        ``BAN`` when the peer is banned now (including a ban this call just set because a
        negative event left the score below :data:`BAN_BELOW`); ``DISCONNECT`` when a negative
        event left it below :data:`DISCONNECT_BELOW`; else ``OK``. Unknown peers are created.
        """
        now = self._clock()
        weight = EVENT_WEIGHTS[event]
        with self._lock:
            rec = self._touch(node_id, now)
            if weight > 0:
                weight = self._credit(node_id, weight, now)
            hours = (now - rec["score_updated_at"]) / 3600.0
            score = _clamp(decayed_score(rec["score"], hours) + weight)
            rec["score"] = score
            rec["score_updated_at"] = now
            rec["last_seen"] = now
            counter = COUNTER_FOR_EVENT[event]
            rec[counter] += 1
            self._dirty = True
            if self._active_ban(rec, now):
                return Verdict.BAN
            if weight < 0:
                if score < BAN_BELOW:
                    rec["banned_until"] = now + self._ban_seconds
                    rec["ban_reason"] = f"score {score:.1f} after {event.value}"
                    self._banned_ids.add(node_id)
                    return Verdict.BAN
                if score < DISCONNECT_BELOW:
                    return Verdict.DISCONNECT
            return Verdict.OK

    def _credit(self, node_id: str, weight: float, now: float) -> float:
        """The part of ``weight`` still allowed this clock hour (memory only, not in the file;
        the table is cleared every hour, so it holds at most this hour's credited peers)."""
        hour = int(now // 3600)
        if hour != self._credit_hour:
            self._credit_hour, self._credits = hour, {}
        used = self._credits.get(node_id, 0.0)
        allowed = max(0.0, min(weight, MAX_CREDIT_PER_HOUR - used))
        self._credits[node_id] = used + allowed
        return allowed

    def dial_candidates(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(node_id, address)`` pairs to dial: peers with an address, not
        banned now, not connected, most recently seen first; the address is the peer's most
        recent one. O(n) over the book."""
        if limit <= 0:
            return []
        now = self._clock()
        with self._lock:
            connected = self._connected
            banned = {i for i in self._banned_ids if self._peers[i]["banned_until"] > now}
            best = heapq.nlargest(
                limit,
                (
                    (rec["last_seen"], node_id)
                    for node_id, rec in self._peers.items()
                    if rec["addresses"] and node_id not in connected and node_id not in banned
                ),
            )
            return [(node_id, self._peers[node_id]["addresses"][0]) for _, node_id in best]

    def note_address(self, node_id: str, address: str) -> None:
        """Remember an address learned through peer exchange (appended, at most
        :data:`MAX_ADDRESSES` kept). A new peer gets ``first_seen = last_seen = now``; an
        existing peer's ``last_seen`` is *not* bumped, so gossip cannot keep dead peers alive.
        The book holds at most ``max_known`` peers: a new one evicts the never-connected,
        unbanned peer seen first, or is not learned."""
        if not address:
            return
        now = self._clock()
        with self._lock:
            if node_id not in self._peers and not self._make_room():
                return  # full of peers we have connected to or banned: learn nothing
            rec = self._touch(node_id, now)
            if self._add_address(rec, address, front=False):
                self._dirty = True

    def _make_room(self) -> bool:
        """Below the cap, or evict the never-connected, unbanned peer seen first. O(n) when
        full, which learning at peer-exchange pace makes rare."""
        if len(self._peers) < self.max_known:
            return True
        victim = min(
            (
                (rec["first_seen"], node_id)
                for node_id, rec in self._peers.items()
                if rec["last_connected"] is None
                and rec["banned_until"] is None
                and node_id not in self._connected
            ),
            default=None,
        )
        if victim is None:
            return False
        del self._peers[victim[1]]
        self._dirty = True
        return True

    @staticmethod
    def _add_address(rec: dict[str, Any], address: str, *, front: bool) -> bool:
        addresses: list[str] = rec["addresses"]
        if address in addresses:
            if not front or addresses[0] == address:
                return False
            addresses.remove(address)
        if front:
            addresses.insert(0, address)
        else:
            addresses.append(address)
        del addresses[MAX_ADDRESSES:]
        return True

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._peers

    def _snapshot(self, node_id: str, rec: dict[str, Any], now: float) -> PeerRecord:
        hours = (now - rec["score_updated_at"]) / 3600.0
        return PeerRecord(
            node_id=node_id,
            score=decayed_score(rec["score"], hours),
            banned=self._active_ban(rec, now),
            banned_until=rec["banned_until"],
            ban_reason=rec["ban_reason"],
            **{name: rec[name] for name in COUNTERS},
            first_seen=rec["first_seen"],
            last_seen=rec["last_seen"],
            last_connected=rec["last_connected"],
            addresses=tuple(rec["addresses"]),
            connected=node_id in self._connected,
            as_of=now,
        )

    def get(self, node_id: str) -> PeerRecord | None:
        """Snapshot of one peer (score decayed to now), or None when unknown."""
        now = self._clock()
        with self._lock:
            rec = self._peers.get(node_id)
            return None if rec is None else self._snapshot(node_id, rec, now)

    def records(
        self, *, sort: str = "score", limit: int | None = None, banned_only: bool = False
    ) -> list[PeerRecord]:
        """Snapshots of peers, best first: ``sort`` is ``"score"`` (highest first),
        ``"violations"`` (most violations first, see :data:`VIOLATION_COUNTERS`) or
        ``"last-seen"`` (most recent first); ties by node id. ``limit`` keeps the first N;
        ``banned_only`` keeps peers banned now."""
        if sort not in _SORTS:
            raise InputError(f"unknown sort {sort!r}", field="sort", fix=f"use one of {_SORTS}")
        now = self._clock()
        with self._lock:
            if banned_only:
                items: Iterable[tuple[str, dict[str, Any]]] = [
                    (i, self._peers[i])
                    for i in self._banned_ids
                    if self._active_ban(self._peers[i], now)
                ]
            else:
                items = self._peers.items()
            if sort == "score":

                def metric(rec: dict[str, Any]) -> float:
                    hours = (now - rec["score_updated_at"]) / 3600.0
                    return decayed_score(rec["score"], hours)

            elif sort == "violations":

                def metric(rec: dict[str, Any]) -> float:
                    total: float = sum(rec[name] for name in VIOLATION_COUNTERS)
                    return total

            else:

                def metric(rec: dict[str, Any]) -> float:
                    last_seen: float = rec["last_seen"]
                    return last_seen

            # Sort the raw records and snapshot only what is returned: `--top 10` of a
            # million-peer book must not build a million snapshots.
            def key(item: tuple[str, dict[str, Any]]) -> tuple[float, str]:
                return -metric(item[1]), item[0]

            if limit is not None:
                chosen = heapq.nsmallest(max(limit, 0), items, key=key)
            else:
                chosen = sorted(items, key=key)
            return [self._snapshot(i, rec, now) for i, rec in chosen]

    def has_connected_before(self) -> bool:
        """True when some peer was ever connected (this node has been part of a network)."""
        with self._lock:
            return any(rec.get("last_connected") for rec in self._peers.values())

    def connected_ids(self) -> list[str]:
        """Ids of peers connected now (as reported by the P2P layer), sorted."""
        with self._lock:
            return sorted(self._connected)

    def banned_count(self) -> int:
        """Number of node ids banned now (IP/CIDR bans are not counted; see :meth:`ip_bans`)."""
        now = self._clock()
        with self._lock:
            return sum(1 for i in self._banned_ids if self._peers[i]["banned_until"] > now)

    def ip_bans(self, *, include_expired: bool = False) -> list[BanInfo]:
        """IP/CIDR bans, sorted by target; only active ones unless ``include_expired``."""
        now = self._clock()
        with self._lock:
            return [
                BanInfo(target, "ip", info["banned_until"], info["reason"])
                for target, info in sorted(self._ip_bans.items())
                if include_expired or info["banned_until"] > now
            ]

    # ------------------------------------------------------------------ operator actions

    def ban(self, target: str, *, seconds: float, reason: str) -> BanInfo:
        """Ban a node id, an IP or a CIDR for ``seconds`` from now, replacing any earlier ban
        of the same target. Banning an unknown node id creates its record. Raises
        :class:`InputError` for a bad target, duration or empty reason."""
        kind, canonical = parse_ban_target(target)
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise InputError(
                f"ban duration must be a positive number of seconds, not {seconds!r}",
                field="seconds",
                fix="e.g. 24h",
            )
        reason = (reason or "").strip()
        if not reason:
            raise InputError("a ban needs a reason", field="reason", fix="pass --reason TEXT")
        now = self._clock()
        until = now + float(seconds)
        with self._lock:
            if kind == "node":
                rec = self._touch(canonical, now)
                rec["banned_until"] = until
                rec["ban_reason"] = reason
                self._banned_ids.add(canonical)
            else:
                self._ip_bans[canonical] = {
                    "banned_until": until,
                    "reason": reason,
                    "created_at": now,
                }
                self._ip_nets[canonical] = ipaddress.ip_network(canonical)
            self._dirty = True
        return BanInfo(canonical, kind, until, reason)

    def unban(self, target: str) -> bool:
        """Lift the ban on a node id / IP / CIDR (exact target, not containment). True when a
        ban (active or expired) was removed. The score is unchanged (see :meth:`reset`)."""
        kind, canonical = parse_ban_target(target)
        with self._lock:
            if kind == "node":
                rec = self._peers.get(canonical)
                if rec is None or rec["banned_until"] is None:
                    return False
                rec["banned_until"] = None
                rec["ban_reason"] = None
                self._banned_ids.discard(canonical)
            else:
                if self._ip_bans.pop(canonical, None) is None:
                    return False
                self._ip_nets.pop(canonical, None)
            self._dirty = True
            return True

    def reset(self, node_id: str) -> PeerRecord:
        """Give a peer a clean slate: score 100 and any node-id ban lifted. Counters are
        *kept* as history (they no longer influence the score). Raises :class:`NotFoundError`
        for an unknown id."""
        node_id = node_id.strip().lower() if _NODE_ID_RE.match(node_id.strip()) else node_id
        now = self._clock()
        with self._lock:
            rec = self._peers.get(node_id)
            if rec is None:
                raise NotFoundError(
                    f"unknown peer {node_id}", field="node_id", fix="see `ian peers list`"
                )
            rec["score"] = NEUTRAL_SCORE
            rec["score_updated_at"] = now
            rec["banned_until"] = None
            rec["ban_reason"] = None
            self._banned_ids.discard(node_id)
            self._dirty = True
            return self._snapshot(node_id, rec, now)

    def prune(self, older_than_s: float, *, dry_run: bool = False) -> PruneResult:
        """Drop peers whose ``last_seen`` is not after ``now - older_than_s`` (the runbook's
        rule), except connected peers and peers banned now. Expired IP/CIDR bans go too.
        ``dry_run`` changes nothing. Memory only: the caller saves."""
        if not (math.isfinite(older_than_s) and older_than_s >= 0):
            raise InputError("older_than_s must be a non-negative number", field="older_than_s")
        now = self._clock()
        cutoff = now - older_than_s
        with self._lock:
            connected = self._connected
            removed = [
                node_id
                for node_id, rec in self._peers.items()
                if not rec["last_seen"] > cutoff
                and node_id not in connected
                and not (rec["banned_until"] is not None and rec["banned_until"] > now)
            ]
            kept = len(self._peers) - len(removed)
            if not dry_run and removed:
                peers = self._peers
                for node_id in removed:
                    del peers[node_id]
                    self._banned_ids.discard(node_id)
                self._dirty = True
            if not dry_run:
                for target in [t for t, i in self._ip_bans.items() if i["banned_until"] <= now]:
                    del self._ip_bans[target]
                    self._ip_nets.pop(target, None)
                    self._dirty = True
        removed.sort()
        return PruneResult(kept=kept, removed=removed, dry_run=dry_run)


def _fmt_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
