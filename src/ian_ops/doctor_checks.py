"""The checks behind `ian doctor`: the runbook's Troubleshooting and Emergency sections.

Every check returns :class:`Check` values (a verdict, what was found, and the fix). Checks that
judge facts are pure functions of those facts (``now`` passed in); the few that must probe the
machine (bind a port, connect to a seed, stat files, open the store read-only) do only that
probe and keep the verdict logic next to it. :mod:`ian_ops.doctor_cmd` gathers the facts from
the data dir and the node's API, runs the checks in runbook order and prints them.

Verdicts: ``ok`` ✓, ``warn`` !, ``fail`` ✗, and ``skip`` (n/a: not applicable or not knowable,
e.g. an online check while the node is down). ``skip`` never changes the exit code.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ian.config import PeerAddress, Settings
    from ian.storage.datadir import DataDir

__all__ = ["FAIL", "GROUPS", "OK", "SKIP", "WARN", "Check", "NodeFacts", "exit_code", "overall"]

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
SYMBOL = {OK: "✓", WARN: "!", FAIL: "✗", SKIP: "-"}

# Runbook sections, in the order the doctor prints them.
START = "Node won't start"
REFUSED = "Connection refused"
SYNC = "Node not syncing"
BREAKER = "Circuit breaker open"
BANS = "Peer banned unexpectedly"
CORRUPTION = "Data corruption"
MAINTENANCE = "Maintenance"
GROUPS = (START, REFUSED, SYNC, BREAKER, BANS, CORRUPTION, MAINTENANCE)

NODE_DOWN = "node not running"
CONNECT_TIMEOUT_S = 1.5
CERT_CRIT_DAYS = 7.0
BACKUP_MAX_AGE_S = 86400.0
MANY_BANNED = 10
DISK_MIN_FREE = 1 << 30  # 1 GiB
DISK_HARD_MIN_FREE = 64 << 20  # 64 MiB
CLOCK_SKEW_WARN_S = 5.0
CLOCK_SKEW_FAIL_S = 60.0


@dataclass(frozen=True)
class Check:
    group: str
    id: str
    title: str
    verdict: str
    found: str
    fix: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)


def overall(checks: Iterable[Check]) -> str:
    verdicts = {c.verdict for c in checks}
    return FAIL if FAIL in verdicts else WARN if WARN in verdicts else OK


def exit_code(checks: Iterable[Check]) -> int:
    """0 all good (skips included), 1 warnings, 2 failures."""
    return {OK: 0, WARN: 1, FAIL: 2}[overall(checks)]


@dataclass(frozen=True)
class NodeFacts:
    """What is known about a running node: lock holder and what its API answered."""

    url: str
    lock_held: bool = False
    pid: int | None = None
    answers: bool = False
    status: Mapping[str, Any] | None = None
    peers: Mapping[str, Any] | None = None
    tau: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.lock_held and self.answers


def _skip_down(group: str, id_: str, title: str, node: NodeFacts) -> Check:
    why = NODE_DOWN if not node.answers else "the node's API did not say"
    return Check(group, id_, title, SKIP, why, None)


# --------------------------------------------------------------------------- the node process


def check_node(node: NodeFacts) -> Check:
    title = "node process"
    if node.lock_held and node.answers:
        return Check(START, "node", title, OK, f"running (pid {node.pid}), API at {node.url}")
    if node.lock_held:
        return Check(
            START,
            "node",
            title,
            FAIL,
            f"node.lock is held by pid {node.pid or 'unknown'} but nothing answers at "
            f"{node.url} ({node.error})",
            "check --node-url / IAN_API_PORT; if that process hangs, restart it "
            f"(kill -TERM {node.pid or '<pid>'}; ian node run)",
        )
    if node.answers:
        return Check(
            START,
            "node",
            title,
            WARN,
            f"a node answers at {node.url} but none holds this data dir's node.lock",
            "pass the --data-dir of the node you mean (online checks below use the URL)",
        )
    return Check(
        START,
        "node",
        title,
        WARN,
        f"{NODE_DOWN} (no process holds node.lock; nothing answers at {node.url}); "
        "online checks are skipped",
        "start it: ian node run",
    )


# --------------------------------------------------------------------------- configuration


def check_config(settings: Settings | None, error: str | None) -> Check:
    if settings is None:
        return Check(
            START,
            "config",
            "configuration",
            FAIL,
            error or "invalid",
            "fix the value named above in config.toml or the IAN_* environment; "
            "`ian config show` lists every setting",
        )
    toml = sorted({s for s in settings.sources().values() if s.startswith("config.toml")})
    where = toml[0] if toml else "defaults + environment"
    return Check(START, "config", "configuration", OK, f"valid ({where})")


def check_data_dir(datadir: DataDir) -> Check:
    root = datadir.root
    title = "data directory"
    if not root.exists():
        return Check(
            START,
            "data_dir",
            title,
            WARN,
            f"{root} does not exist",
            f"ian node init --data-dir {root} (the first `ian node run` also creates it)",
        )
    if not root.is_dir():
        return Check(
            START, "data_dir", title, FAIL, f"{root} is not a directory", "point at a directory"
        )
    if not os.access(root, os.W_OK | os.X_OK):
        return Check(
            START,
            "data_dir",
            title,
            FAIL,
            f"{root} is not writable by uid {os.geteuid()}",
            f"chown -R {os.geteuid()} {root}",
        )
    return Check(START, "data_dir", title, OK, f"{root} exists and is writable")


def check_permissions(datadir: DataDir) -> Check:
    from ian.storage.datadir import check_permissions as problems_of

    title = "owner and modes"
    if not datadir.root.is_dir():
        return Check(START, "permissions", title, SKIP, "no data dir")
    problems = problems_of(datadir)
    if not problems:
        return Check(START, "permissions", title, OK, "owned by this user; certs/ 0700, keys 0600")
    found, fixes = [], []
    for p in problems:
        text, _, fix = p.partition(" (fix: ")
        found.append(text)
        if fix:
            fixes.append(fix.rstrip(")"))
    return Check(START, "permissions", title, FAIL, "; ".join(found), "; ".join(fixes) or None)


def check_identity(datadir: DataDir, settings: Settings | None, now: float) -> list[Check]:
    """identity.json loads, the certificate pair matches it, and expiry is not near."""
    from datetime import UTC, datetime

    from ian.certs import load_certificate
    from ian.errors import IanError
    from ian.identity import load_identity

    if not datadir.identity_file.exists():
        found = "no identity.json yet" if datadir.root.is_dir() else "no data dir"
        return [
            Check(
                START,
                "identity",
                "identity",
                WARN if datadir.root.is_dir() else SKIP,
                found,
                "ian node init (or start the node: it creates the identity)",
            )
        ]
    try:
        identity = load_identity(datadir.identity_file)
    except IanError as exc:
        return [Check(START, "identity", "identity", FAIL, exc.message, exc.fix)]
    checks = [Check(START, "identity", "identity", OK, f"node id {identity.node_id}")]
    try:
        info = load_certificate(datadir.certs_dir, identity, check_validity=False)
    except IanError as exc:
        checks.append(Check(START, "certificate", "TLS certificate", FAIL, exc.message, exc.fix))
        return checks
    renew = float(settings.cert_renew_days) if settings is not None else 21.0
    checks.append(cert_expiry(info.days_left(datetime.fromtimestamp(now, UTC)), renew))
    return checks


def cert_expiry(days: float, renew_days: float = 21.0) -> Check:
    title = "TLS certificate"
    fix = "ian certs rotate (online: the node reloads it)"
    if days < 0:
        return Check(START, "certificate", title, FAIL, f"EXPIRED {-days:.1f} days ago", fix)
    if days < CERT_CRIT_DAYS:
        return Check(START, "certificate", title, FAIL, f"expires in {days:.1f} days", fix)
    if days < renew_days:
        return Check(START, "certificate", title, WARN, f"expires in {days:.0f} days", fix)
    return Check(START, "certificate", title, OK, f"matches the identity; {days:.0f} days left")


# --------------------------------------------------------------------------- ports


def listening_pids(port: int) -> set[int]:
    """Pids with a TCP socket listening on ``port`` (Linux /proc; only processes we may read).

    What ``ss -tlnp`` shows, without needing ss. Empty when unknown.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= 9 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return set()
    wanted = {f"socket:[{i}]" for i in inodes}
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in wanted:
                        pids.add(int(proc.name))
                        break
    return pids


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def port_in_use(host: str, port: int) -> str | None:
    """None when ``host:port`` could be bound now (as the node binds it), else the reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            return exc.strerror or str(exc)
    return None


def check_port(name: str, env: str, host: str, port: int, node: NodeFacts) -> Check:
    id_, title = f"port_{name}", f"{name} port {port}"
    if port == 0:
        return Check(START, id_, title, OK, f"{name} port 0: the node picks a free port")
    problem = port_in_use(host, port)
    if problem is None:
        return Check(START, id_, title, OK, f"{host}:{port} is free")
    fix = f"stop that process, or set {env} to a free port (`ss -tlnp | grep :{port}` shows it)"
    if problem != "in use":
        return Check(START, id_, title, FAIL, f"cannot bind {host}:{port}: {problem}", fix)
    owners = listening_pids(port)
    if node.pid is not None and node.pid in owners:
        return Check(START, id_, title, OK, f"held by this node (pid {node.pid})")
    if owners:
        who = ", ".join(f"pid {p} ({_process_name(p)})" for p in sorted(owners))
        return Check(START, id_, title, FAIL, f"{host}:{port} is in use by {who}", fix)
    if node.running:
        return Check(
            START, id_, title, OK, f"in use while this node runs (pid {node.pid}): presumably it"
        )
    return Check(START, id_, title, FAIL, f"{host}:{port} is in use by another process", fix)


# --------------------------------------------------------------------------- listen addresses


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(settings: Settings) -> Check:
    title = "listen addresses"
    p2p = f"{settings.p2p_host}:{settings.p2p_port}"
    api = f"{settings.api_host}:{settings.api_port}"
    found = f"P2P {p2p}, API {api}"
    if settings.seed_nodes and _is_loopback(settings.p2p_host):
        return Check(
            REFUSED,
            "listen",
            title,
            WARN,
            f"{found}: P2P listens on loopback only, but seeds are configured, so peers on "
            "other hosts cannot connect back",
            "set IAN_P2P_HOST=0.0.0.0 (and open the port: ufw allow 9000/tcp)",
        )
    advertise = settings.p2p_advertise
    if settings.seed_nodes and advertise and _is_loopback(_host_of(advertise)):
        return Check(
            REFUSED,
            "listen",
            title,
            WARN,
            f"{found}; p2p_advertise {advertise} is a loopback address other hosts cannot dial",
            "set IAN_P2P_ADVERTISE to an address peers can reach",
        )
    scope = "loopback only" if _is_loopback(settings.p2p_host) else "all interfaces"
    if settings.p2p_host not in ("0.0.0.0", "::") and scope != "loopback only":
        scope = "one interface"
    return Check(REFUSED, "listen", title, OK, f"{found} (P2P on {scope})")


def _host_of(address: str) -> str:
    from ian.config import parse_peer_address

    try:
        return parse_peer_address(address).host
    except ValueError:
        return ""


# --------------------------------------------------------------------------- network


def tcp_probe(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``host:port`` opens (``nc -zv``), else why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    last = "no address"
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(addr)
                return None
        except TimeoutError:
            last = f"timed out after {timeout:.1f}s"
        except OSError as exc:
            last = exc.strerror or str(exc)
    return last


def check_seeds(seeds: Sequence[PeerAddress], timeout: float = CONNECT_TIMEOUT_S) -> list[Check]:
    if not seeds:
        return [Check(SYNC, "seeds", "seeds", OK, "no seeds configured: a network of one")]
    out = []
    for seed in seeds:
        problem = tcp_probe(seed.host, seed.port, timeout)
        if problem is None:
            out.append(Check(SYNC, f"seed:{seed}", f"seed {seed}", OK, "resolves and accepts TCP"))
        else:
            out.append(
                Check(
                    SYNC,
                    f"seed:{seed}",
                    f"seed {seed}",
                    FAIL,
                    problem,
                    "check DNS and firewall rules on both sides; add more seeds "
                    "(IAN_SEED_NODES=tcp://host:port,...)",
                )
            )
    return out


def check_peers(node: NodeFacts, settings: Settings) -> Check:
    title = "peer count"
    if node.status is None:
        return _skip_down(SYNC, "peers", title, node)
    connected = int((node.status.get("peers") or {}).get("connected", 0))
    if not settings.seed_nodes:
        return Check(SYNC, "peers", title, OK, f"{connected} connected (no seeds: none needed)")
    if connected < settings.min_peers:
        return Check(
            SYNC,
            "peers",
            title,
            WARN,
            f"{connected} connected, fewer than min_peers {settings.min_peers}",
            "check the seeds above; `ian peers list` shows who is known; ian peers connect "
            "tcp://host:port dials one now",
        )
    found = f"{connected} connected (min_peers {settings.min_peers})"
    return Check(SYNC, "peers", title, OK, found)


def check_sync(node: NodeFacts, threshold: int = 10, has_seeds: bool = False) -> Check:
    title = "sync"
    st = node.status
    if st is None:
        return _skip_down(SYNC, "sync", title, node)
    lag = int(st.get("sync_lag", 0) or 0)
    state = str(st.get("consensus_state", "?"))
    found = f"{state}, height {st.get('height')} / network {st.get('network_height')}, lag {lag}"
    if state == "DIVERGED":
        return Check(
            SYNC,
            "sync",
            title,
            FAIL,
            found,
            "the node rolls back and resyncs by itself; if it stays DIVERGED: ian node resync",
        )
    if lag > threshold:
        return Check(
            SYNC,
            "sync",
            title,
            WARN,
            f"{found} (> {threshold})",
            "check peers and seeds; watch it with ian status --watch",
        )
    if state == "ISOLATED" and has_seeds:
        return Check(SYNC, "sync", title, WARN, found, "no peers: check the seeds above")
    return Check(SYNC, "sync", title, OK, found)


def check_consensus(node: NodeFacts) -> Check:
    """Leader known, a majority of the authorities reachable, not forked (several
    authorities); on a one-authority chain: the sequencer known."""
    title = "consensus"
    st = node.status
    if st is None:
        return _skip_down(SYNC, "consensus", title, node)
    authorities = [a for a in st.get("authorities") or [] if isinstance(a, Mapping)]
    leader = st.get("leader_id")
    if st.get("consensus_state") == "FORKED":
        return Check(
            SYNC,
            "consensus",
            title,
            FAIL,
            "FORKED: two certified histories; applying has stopped",
            "keep the fork-evidence-*.json files, stop writes, escalate (runbook: Fork evidence)",
        )
    if len(authorities) <= 1:
        if leader:
            return Check(SYNC, "consensus", title, OK, f"one authority: {leader}")
        return Check(
            SYNC, "consensus", title, WARN, "the sequencer is not known yet",
            "check the seeds above: a follower learns its chain from them",
        )  # fmt: skip
    reachable = sum(1 for a in authorities if a.get("reachable"))
    need = len(authorities) // 2 + 1
    found = (
        f"{st.get('role')} in term {st.get('term')}, leader {leader or 'unknown'}, "
        f"{reachable} of {len(authorities)} authorities reachable (majority {need})"
    )
    if leader is None:
        return Check(
            SYNC, "consensus", title, FAIL, found,
            "no leader: a majority of authorities must be up and connected; "
            "watch ian status --watch (runbook: Leader lost)",
        )  # fmt: skip
    if st.get("role") in ("leader", "authority") and reachable < need:
        return Check(
            SYNC, "consensus", title, WARN, found,
            "this authority reaches no majority: check the other authorities and the network "
            "between them",
        )  # fmt: skip
    return Check(SYNC, "consensus", title, OK, found)


def check_clock_skew(node: NodeFacts) -> Check:
    """Skew vs peers, when the peers API reports it (``clock_skew_s`` per connection)."""
    title = "clock skew"
    connected = (node.peers or {}).get("connected") or []
    skews = [
        float(c["clock_skew_s"])
        for c in connected
        if isinstance(c, Mapping) and isinstance(c.get("clock_skew_s"), int | float)
    ]
    if not skews:
        why = NODE_DOWN if not node.answers else "the peers API does not report clock skew"
        return Check(SYNC, "clock", title, SKIP, f"n/a: {why}")
    worst = max(skews, key=abs)
    found = f"largest skew vs {len(skews)} peers: {worst:+.1f}s"
    fix = "sync the clock (chrony / systemd-timesyncd)"
    if abs(worst) > CLOCK_SKEW_FAIL_S:
        return Check(SYNC, "clock", title, FAIL, found, fix)
    if abs(worst) > CLOCK_SKEW_WARN_S:
        return Check(SYNC, "clock", title, WARN, found, fix)
    return Check(SYNC, "clock", title, OK, found)


def check_bans(
    banned: Sequence[Mapping[str, Any]],
    ip_bans: Sequence[Mapping[str, Any]],
    known: int,
    seeds: Sequence[PeerAddress],
) -> Check:
    """Bans that look wrong: a seed banned (by id or IP), or a large share of peers banned."""
    title = "bans"
    seed_names = {str(s) for s in seeds}
    for rec in banned:
        hit = seed_names.intersection(str(a) for a in rec.get("addresses") or ())
        if hit:
            return Check(
                BANS,
                "bans",
                title,
                FAIL,
                f"seed {sorted(hit)[0]} (peer {rec.get('node_id')}) is banned: "
                f"{rec.get('ban_reason') or 'no reason recorded'}",
                f"if the seed is legitimate: ian peers unban {rec.get('node_id')}",
            )
    for ban in ip_bans:
        try:
            net = ipaddress.ip_network(str(ban.get("target")), strict=False)
        except ValueError:
            continue
        for seed in seeds:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(seed.host) in net:
                    return Check(
                        BANS,
                        "bans",
                        title,
                        FAIL,
                        f"seed {seed} is inside the IP ban {ban.get('target')}: "
                        f"{ban.get('reason') or 'no reason recorded'}",
                        f"ian peers unban {ban.get('target')}",
                    )
    n = len(banned)
    if n >= 3 and (n >= MANY_BANNED or 2 * n > known):
        return Check(
            BANS,
            "bans",
            title,
            WARN,
            f"{n} of {known} known peers are banned",
            "review them: ian peers list --sort violations; lift wrong bans with ian peers "
            "unban ID (or reset its score with ian peers reset ID); review the rate limits",
        )
    return Check(BANS, "bans", title, OK, f"{n} banned of {known} known, no seed banned")


# --------------------------------------------------------------------------- Tau


def check_tau_endpoint(settings: Settings, timeout: float = CONNECT_TIMEOUT_S) -> Check:
    from ian.config import parse_peer_address

    title = "Tau endpoint"
    if not settings.tau_endpoint:
        return Check(BREAKER, "tau", title, OK, "not configured: the Tau bridge is off")
    addr = parse_peer_address(settings.tau_endpoint)
    problem = tcp_probe(addr.host, addr.port, timeout)
    if problem is None:
        return Check(BREAKER, "tau", title, OK, f"{settings.tau_endpoint} accepts TCP")
    return Check(
        BREAKER,
        "tau",
        title,
        FAIL,
        f"{settings.tau_endpoint}: {problem}",
        "check Tau Net is up and IAN_TAU_ENDPOINT is right (nc -zv host port)",
    )


def check_breaker(node: NodeFacts) -> Check:
    title = "circuit breaker"
    tau = node.tau
    if tau is None and node.status is not None:
        tau = node.status.get("tau")
    if tau is None:
        return _skip_down(BREAKER, "breaker", title, node)
    if not tau.get("enabled"):
        return Check(BREAKER, "breaker", title, OK, "bridge off (no tau_endpoint)")
    state = str(tau.get("breaker_state"))
    error = tau.get("last_error")
    if state == "OPEN":
        return Check(
            BREAKER,
            "breaker",
            title,
            FAIL,
            f"OPEN (retry in {float(tau.get('retry_in_s') or 0):.0f}s): {error or 'Tau failing'}",
            "fix Tau connectivity (see Tau endpoint), then ian tau reset",
        )
    if state == "HALF_OPEN":
        return Check(BREAKER, "breaker", title, WARN, "HALF_OPEN: probing Tau", "ian tau status")
    return Check(BREAKER, "breaker", title, OK, f"{state}, {tau.get('pending', 0)} pending")


# --------------------------------------------------------------------------- store


def check_chain(datadir: DataDir, settings: Settings) -> list[Check]:
    """The chain: a pinned genesis that agrees with IAN_CHAIN_ID, and no fork evidence."""
    from ian.errors import IanError
    from ian.storage.datadir import read_genesis

    checks = []
    title = "genesis and chain id"
    try:
        genesis = read_genesis(datadir)
    except IanError as exc:
        checks.append(Check(CORRUPTION, "genesis", title, FAIL, exc.message, exc.fix))
        genesis = None
    else:
        if genesis is None:
            found = "no genesis pinned yet (the node takes it from its first seed, or makes one)"
            checks.append(Check(CORRUPTION, "genesis", title, OK, found))
        elif settings.chain_id is not None and genesis.chain_id() != settings.chain_id:
            checks.append(
                Check(
                    CORRUPTION,
                    "genesis",
                    title,
                    FAIL,
                    f"IAN_CHAIN_ID is {settings.chain_id[:16]}…, the pinned genesis is chain "
                    f"{genesis.chain_id()[:16]}…",
                    "set IAN_CHAIN_ID to the chain this data dir is on, or use another data dir",
                )
            )
        else:
            n = len(genesis.authorities)
            who = f"sequencer {genesis.authority_ids[0]}" if n == 1 else f"{n} authorities"
            found = f"chain {genesis.chain_id()[:16]}…, {who}"
            checks.append(Check(CORRUPTION, "genesis", title, OK, found))
    evidence = sorted(
        p.name for p in _children(datadir.root) if p.name.startswith("fork-evidence-")
    )
    title = "fork evidence"
    if evidence:
        checks.append(
            Check(
                CORRUPTION,
                "fork_evidence",
                title,
                FAIL,
                f"{len(evidence)} file(s): {', '.join(evidence[:3])}: two validly signed blocks "
                "at one height; the node stopped applying blocks",
                "keep the files, do not resync or restore; see the runbook's Fork evidence",
            )
        )
    else:
        checks.append(Check(CORRUPTION, "fork_evidence", title, OK, "none"))
    return checks


def _children(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def check_store(datadir: DataDir, settings: Settings, *, quick: bool) -> Check:
    """Quick: open read-only and compare the roots with the last block (what a start does).
    Full: replay every block from genesis (``ian node verify``)."""
    from ian.chain.genesis import goals_of
    from ian.errors import IanError
    from ian.ledger.recovery import load_chain_state, verify_store
    from ian.storage.datadir import read_genesis
    from ian.storage.store import Store

    title = "store roots" if quick else "store (full verify)"
    fix = (
        "ian node verify shows the first bad block; then restore a backup: ian restore "
        "ARCHIVE (the current data dir is kept aside)"
    )
    if not datadir.store_file.exists():
        return Check(CORRUPTION, "store", title, OK, "no store yet (created on first start)")
    started = time.perf_counter()
    try:
        store = Store(datadir.store_file, readonly=True)
    except IanError as exc:
        return Check(CORRUPTION, "store", title, FAIL, exc.message, exc.fix or fix)
    except Exception as exc:  # sqlite3 errors: a file that is not a database, torn pages
        return Check(CORRUPTION, "store", title, FAIL, f"cannot open the store: {exc}", fix)
    try:
        specs = goals_of(read_genesis(datadir), settings.all_goals())
        if quick:
            state = load_chain_state(store, specs)
            found = f"height {state.height}; roots of {len(specs)} goals match the last block"
        else:
            report = verify_store(store, specs)
            if not report.ok:
                return Check(
                    CORRUPTION,
                    "store",
                    title,
                    FAIL,
                    f"mismatch at block {report.first_bad_height}: {report.problem}",
                    fix,
                )
            found = (
                f"{report.blocks} blocks and {report.contributions} contributions verified "
                f"from genesis"
            )
    except IanError as exc:
        return Check(CORRUPTION, "store", title, FAIL, exc.message, exc.fix or fix)
    except Exception as exc:
        return Check(CORRUPTION, "store", title, FAIL, f"cannot read the store: {exc}", fix)
    finally:
        store.close()
    return Check(CORRUPTION, "store", title, OK, f"{found} ({time.perf_counter() - started:.2f}s)")


# --------------------------------------------------------------------------- maintenance


def store_bytes(datadir: DataDir) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += Path(f"{datadir.store_file}{suffix}").stat().st_size
    return total


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(datadir: DataDir) -> Check:
    usage = shutil.disk_usage(_existing(datadir.root))
    return disk_headroom(usage.free, store_bytes(datadir))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def disk_headroom(free: int, store: int) -> Check:
    """A backup snapshot needs about the store's size again; SQLite needs room to grow."""
    title = "disk headroom"
    found = f"{_size(free)} free, store {_size(store)}"
    fix = "free space (ian prune --dry-run shows what can go) or grow the volume"
    if free < max(store, DISK_HARD_MIN_FREE):
        return Check(MAINTENANCE, "disk", title, FAIL, found, fix)
    if free < max(2 * store, DISK_MIN_FREE):
        return Check(MAINTENANCE, "disk", title, WARN, found, fix)
    return Check(MAINTENANCE, "disk", title, OK, found)


def backup_age(last: float | None, now: float) -> Check:
    title = "last backup"
    if last is None:
        return Check(
            MAINTENANCE, "backup", title, WARN, "no backup recorded", "ian backup (online)"
        )
    age = now - last
    from ian_ops.durations import format_duration

    when = f"{format_duration(max(0.0, age))} ago"
    if age > BACKUP_MAX_AGE_S:
        return Check(
            MAINTENANCE,
            "backup",
            title,
            WARN,
            f"{when}: older than a day",
            "ian backup (schedule it daily)",
        )
    return Check(MAINTENANCE, "backup", title, OK, when)
