"""The runbook as code: every `ian` command in runbook/*.md (and README.md) is real.

1. Every `ian ...` line in a ```bash / ```sh fence (also `docker exec ... ian ...`,
   `kubectl exec ... -- ian ...` and `docker run ... ian-network/ian-node:TAG ARGS`) parses
   against the real Typer app: command path, options, arguments, and the values `ian` checks
   itself (durations, node ids, ban targets). Placeholders such as `<node_id>` are replaced by
   realistic values from :data:`DUMMY` first; an unknown placeholder fails.
2. The read-only ones run against a live `ian node run` (a seed with one follower), with
   `--data-dir` / `--node-url` pointed at it, and must exit with a documented code; `--json`
   output must parse.
3. No runbook page edits state files by hand, copies live data with tar or pipes Python.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from tests.support.nodes import IAN, NodeFactory, NodeProcess, clean_env, run_ian

from ian_ops.app import app

try:  # Typer vendors click; fall back to the stand-alone package.
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError  # type: ignore[no-redef,assignment]

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "runbook"
RUNBOOK_PAGES = sorted(RUNBOOK.glob("*.md"))
PAGES = [*RUNBOOK_PAGES, ROOT / "README.md"]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
IMAGE = "ian-network/ian-node"


def _authority_spec(seed: int) -> str:
    """A NODE_ID:PUBLIC_KEY_HEX that `ian` accepts (the id is the key's: sha256(key)[:20])."""
    from ian.identity import node_id_for

    key = bytes([seed]) * 32
    return f"{node_id_for(key)}:{key.hex()}"


#: Placeholders the pages may use inside commands, with values that parse like real ones.
DUMMY: dict[str, str] = {
    "<authority>": _authority_spec(4),
    "<authority_a>": _authority_spec(1),
    "<authority_b>": _authority_spec(2),
    "<authority_c>": _authority_spec(3),
    "<chain_id>": "0123456789abcdef" * 4,
    "<node_id>": "0123456789abcdef0123456789abcdef01234567",
    "<peer_id>": "0123456789abcdef0123456789abcdef01234567",
    "<ip>": "203.0.113.7",
    "<cidr>": "203.0.113.0/24",
    "<address>": "tcp://seed1.ian.network:9000",
    "<archive>": "/data/backups/ian-backup-0123456789ab-20250101T000000Z.tar.zst",
    "<goal_id>": "DEMO_TRADING_AGENT",
    "<pid>": "4242",
    "<pod>": "ian-node-0",
}
PLACEHOLDER = re.compile(r"<[a-z_]+>")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PUNCTUATION = set("();<>|&")

#: Leaf commands that must not run against the live node (they change state or never end),
#: unless the predicate on the arguments says the line is a read-only variant.
READ_ONLY: dict[tuple[str, ...], Any] = {
    ("status",): True,
    ("peers", "list"): True,
    ("peers", "show"): True,
    ("peers", "prune"): lambda args: "--dry-run" in args,
    ("prune",): lambda args: "--dry-run" in args,
    ("certs", "show"): True,
    ("config", "show"): True,
    ("config", "init"): lambda args: _option_value(args, "--output", "-o") == "-",
    ("tau", "status"): True,
    ("doctor",): True,
    ("node", "verify"): True,
    ("backup", "verify"): True,
    ("backup", "inspect"): True,
    ("completions",): True,
    # The node's pinned genesis; a --file of the page's own (genesis.json) is not on the node.
    ("network", "show"): lambda args: "--file" not in args and "-f" not in args,
}
#: Documented exit codes per command path (default: 0). `ian doctor`: 0 ok, 1 warnings.
EXIT_CODES: dict[tuple[str, ...], set[int]] = {("doctor",): {0, 1}}
#: Commands the runbook must show at least once (every leaf but the two foreground servers).
NOT_REQUIRED = {("node", "run"), ("tau", "serve-mock")}


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Line:
    """One shell command from a fenced block (continuation lines joined)."""

    page: str
    lineno: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.lineno}"


@dataclass(frozen=True)
class Invocation:
    line: Line
    args: tuple[str, ...]


def shell_lines(path: Path) -> Iterator[Line]:
    """Commands inside ```bash/```sh fences of ``path``, without `$ ` prompts and comments."""
    page = str(path.relative_to(ROOT))
    fence: str | None = None
    pending: list[str] = []
    start = 0
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip().lower() or "text")
            pending = []
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = lineno
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            if not stripped or stripped.startswith("#"):
                continue
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield Line(page, start, " ".join(pending))
        pending = []


def substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def tokens(text: str) -> list[str]:
    """Shell words up to the first operator (|, >, &&, ;, ...); comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[str] = []
    for token in lexer:
        if token and set(token) <= PUNCTUATION:
            break
        out.append(token)
    return out


def ian_args(words: list[str]) -> list[str] | None:
    """The arguments given to `ian` by this command line, or None when it does not run `ian`."""
    i = 0
    while i < len(words) and ENV_ASSIGNMENT.match(words[i]):
        i += 1
    words = words[i:]
    if not words:
        return None
    head = words[0]
    if head == "ian" or head.endswith("/ian"):
        return words[1:]
    if head in ("docker", "kubectl") and "exec" in words:
        rest = words[words.index("exec") + 1 :]
        if "--" in rest:  # kubectl exec POD -- ian ...
            rest = rest[rest.index("--") + 1 :]
            return rest[1:] if rest and rest[0] == "ian" else None
        for j, word in enumerate(rest):
            if word == "ian":
                return rest[j + 1 :]
        return None
    if head == "docker" and len(words) > 1 and words[1] == "run":
        for j, word in enumerate(words):
            if word.startswith(IMAGE):  # the image's entry point is `ian`
                return words[j + 1 :] or None
    return None


LOOKS_LIKE_IAN = re.compile(r"(^|[\s/])ian\s")


def runs_ian(line: Line) -> bool:
    try:
        return ian_args(tokens(PLACEHOLDER.sub("X", line.text))) is not None
    except ValueError:  # unbalanced quotes: keep it if it may be an `ian` line, to fail there
        return bool(LOOKS_LIKE_IAN.search(line.text))


def lines_running_ian() -> list[Line]:
    return [line for page in PAGES for line in shell_lines(page) if runs_ian(line)]


def invocation(line: Line, values: dict[str, str]) -> Invocation:
    text = substitute(line.text, values)
    unknown = PLACEHOLDER.findall(text)
    if unknown:
        pytest.fail(f"{line.where}: unknown placeholder(s) {unknown} in: {line.text}")
    try:
        args = ian_args(tokens(text))
    except ValueError as exc:
        pytest.fail(f"{line.where}: not a valid shell line ({exc}): {line.text}")
    assert args is not None
    return Invocation(line, tuple(args))


LINES = lines_running_ian()


# --------------------------------------------------------------------------- parsing


@dataclass
class Parsed:
    path: tuple[str, ...]
    command: Any
    params: dict[str, Any]


def _option_value(args: tuple[str, ...] | list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


HELP = {"--help", "-h", "--version"}


@functools.cache
def root_command() -> Any:
    return typer.main.get_command(app)


def parse(args: tuple[str, ...]) -> Parsed:
    """Walk the click command tree like `ian` would; raises click's UsageError.

    A line asking for --help/--version is only checked for its command path (parsing it for
    real would print the help)."""
    resilient = bool(HELP.intersection(args))
    command: Any = root_command()
    ctx = command.make_context("ian", list(args), resilient_parsing=resilient)
    path: list[str] = []
    while hasattr(command, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest or (resilient and rest[0].startswith("-")):
            if resilient or getattr(command, "invoke_without_command", False):
                break
            raise UsageError(f"`ian {' '.join(path)}` needs a sub-command")
        wanted = rest[0]
        name, sub, rest = command.resolve_command(ctx, rest)
        if name is None or sub is None:
            raise UsageError(f"no such command {wanted!r} under `ian {' '.join(path)}`")
        path.append(name)
        command = sub
        ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=resilient)
    return Parsed(tuple(path), command, dict(ctx.params))


def check_values(parsed: Parsed) -> None:
    """The values `ian` validates itself at run time (before any I/O)."""
    from ian.chain.genesis import parse_authority_spec
    from ian.p2p.peer_book import parse_ban_target
    from ian_ops.durations import parse_duration

    params = parsed.params
    for key, option in (("duration", "--for"), ("older_than", "--older-than")):
        if params.get(key) is not None:
            parse_duration(params[key], option=option)
    if parsed.path == ("status",):
        parse_duration(params["interval"], option="--interval")
    if parsed.path in (("peers", "show"), ("peers", "reset")) and params.get("node_id"):
        assert re.fullmatch(r"[0-9a-f]{40}", params["node_id"]), params["node_id"]
    if parsed.path in (("peers", "ban"), ("peers", "unban")):
        parse_ban_target(params["target"])
    if parsed.path in (("network", "authorities", "remove"),):
        assert re.fullmatch(r"[0-9a-f]{40}", params["node_id"]), params["node_id"]
    specs = {
        ("network", "init"): params.get("authority") or [],
        ("network", "authorities", "add"): [params.get("authority")],
    }.get(parsed.path, [])
    for spec in specs:
        if not spec.startswith("/"):  # a data dir on the node's host, or NODE_ID:KEY here
            parse_authority_spec(spec, _no_identity_files)
    if parsed.path == ("network", "init"):
        count = len(params["authority"])
        assert count in (1, 3, 5, 7), f"{count} authorities: a chain has 1, 3, 5 or 7"


def _no_identity_files(path: Path) -> tuple[str, bytes]:
    raise AssertionError(f"an authority spec that is neither NODE_ID:KEY nor /path: {path}")


def test_runbook_has_commands() -> None:
    assert RUNBOOK.is_dir(), "runbook/ is missing"
    pages = {p.name for p in RUNBOOK.glob("*.md")}
    expected = {
        "README.md",
        "deployment.md",
        "monitoring.md",
        "operations.md",
        "troubleshooting.md",
        "emergency.md",
        "maintenance.md",
    }
    assert expected <= pages
    assert len(LINES) >= 80, f"only {len(LINES)} `ian` commands found"


@pytest.mark.parametrize("line", LINES, ids=[line.where for line in LINES])
def test_command_parses(line: Line) -> None:
    inv = invocation(line, DUMMY)
    try:
        parsed = parse(inv.args)
        if not HELP.intersection(inv.args):
            check_values(parsed)
    except UsageError as exc:
        pytest.fail(f"{line.where}: `ian {shlex.join(inv.args)}`: {exc.format_message()}")
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        pytest.fail(f"{line.where}: `ian {shlex.join(inv.args)}`: {message}")


def _leaf_paths(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    subs = getattr(command, "commands", None)
    if subs is None:
        yield prefix
        return
    if getattr(command, "invoke_without_command", False) and prefix:
        yield prefix
    for name, sub in subs.items():
        yield from _leaf_paths(sub, (*prefix, name))


def test_every_command_is_in_the_runbook() -> None:
    shown = set()
    for line in LINES:
        try:
            shown.add(parse(invocation(line, DUMMY).args).path)
        except UsageError:
            continue
    leaves = set(_leaf_paths(root_command())) - NOT_REQUIRED
    missing = sorted(" ".join(p) for p in leaves - shown)
    assert not missing, f"commands the runbook never shows: {missing}"


# --------------------------------------------------------------------------- live, read-only


def _read_only(parsed: Parsed, args: tuple[str, ...]) -> bool:
    rule = READ_ONLY.get(parsed.path, False)
    return bool(rule(args) if callable(rule) else rule)


def _read_only_lines() -> list[Line]:
    """The read-only lines, one per distinct command (the first place it appears)."""
    out: dict[tuple[str, ...], Line] = {}
    for line in LINES:
        try:
            inv = invocation(line, DUMMY)
            parsed = parse(inv.args)
        except UsageError:
            continue  # reported by test_command_parses
        if not HELP.intersection(inv.args) and _read_only(parsed, inv.args):
            out.setdefault(inv.args, line)
    return list(out.values())


READ_ONLY_LINES = _read_only_lines()


@dataclass
class Live:
    seed: NodeProcess
    follower: NodeProcess
    archive: Path
    env: dict[str, str]

    @property
    def values(self) -> dict[str, str]:
        return {
            **DUMMY,
            "<node_id>": self.follower.node_id,
            "<peer_id>": self.follower.node_id,
            "<archive>": str(self.archive),
        }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A seed (the node the runbook's commands target) with one connected follower, and a
    backup archive of the seed for `ian backup verify/inspect`."""
    factory = NodeFactory(tmp_path_factory.mktemp("runbook"))
    try:
        seed, follower = factory.start_network(2)
        env = {k: v for k, v in seed.env.items() if k.startswith("IAN_")}
        archive = seed.data_dir.parent / "runbook-backup.tar.zst"
        made = run_ian(
            "backup", "--output", str(archive), "--data-dir", str(seed.data_dir), env=env
        )
        assert made.returncode == 0, made.stderr
        yield Live(seed, follower, archive, env)
    finally:
        factory.cleanup()


def _point_at(parsed: Parsed, args: tuple[str, ...], live: Live) -> list[str]:
    """``args`` with --data-dir/--node-url replaced by (or extended with) the live node's, and
    the archive argument replaced by a real backup of it."""
    accepted = {opt for p in parsed.command.params for opt in getattr(p, "opts", ())}
    wanted = {"--data-dir": str(live.seed.data_dir), "--node-url": live.seed.api_url}
    out = list(args)
    if "archive" in parsed.params:  # any archive the page names: the live node's backup
        out[out.index(str(parsed.params["archive"]))] = str(live.archive)
    for option, value in wanted.items():
        if option not in accepted:
            continue
        if option in out:
            out[out.index(option) + 1] = value
        else:
            out += [option, value]
    return out


def _first_line(args: list[str], env: dict[str, str], timeout: float = 15.0) -> str:
    """Run a never-ending command (`--watch --json`) until its first stdout line."""
    proc = subprocess.Popen(
        [str(IAN), *args],
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert time.monotonic() < deadline, "no output in time"
        return line
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.integration
@pytest.mark.parametrize("line", READ_ONLY_LINES, ids=[line.where for line in READ_ONLY_LINES])
def test_read_only_command_against_live_node(line: Line, live: Live) -> None:
    inv = invocation(line, live.values)
    parsed = parse(inv.args)
    args = _point_at(parsed, inv.args, live)
    shown = f"{line.where}: `ian {shlex.join(args)}`"
    if parsed.params.get("watch"):
        if "--json" not in args:
            args.append("--json")  # the full-screen view needs a terminal; NDJSON does not
        first = _first_line(args, live.env)
        doc = json.loads(first)
        assert doc["reachable"] is True, f"{shown}: {first}"
        return
    done = run_ian(*args, env=live.env, timeout=60)
    allowed = EXIT_CODES.get(parsed.path, {0})
    assert done.returncode in allowed, (
        f"{shown} exited {done.returncode} (allowed {sorted(allowed)})\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    if "--json" in args:
        try:
            json.loads(done.stdout)
        except ValueError as exc:
            pytest.fail(f"{shown}: --json output is not JSON ({exc}):\n{done.stdout}")


def test_read_only_commands_cover_the_basics() -> None:
    paths = set()
    for line in READ_ONLY_LINES:
        paths.add(parse(invocation(line, DUMMY).args).path)
    for path in [
        ("status",),
        ("peers", "list"),
        ("peers", "show"),
        ("certs", "show"),
        ("config", "show"),
        ("tau", "status"),
        ("doctor",),
        ("node", "verify"),
        ("backup", "verify"),
    ]:
        assert path in paths, f"no read-only `ian {' '.join(path)}` in the runbook"


# --------------------------------------------------------------------------- safety


FORBIDDEN = ["vim ", "tar -czvf", "tar -xzvf", "tar -tzvf", "python3 -c", "python -c"]
EDITORS = {"vim", "vi", "nano", "emacs", "sed", "tee", "truncate", "rm", "mv", "cp"}


@pytest.mark.parametrize("page", RUNBOOK_PAGES, ids=[p.name for p in RUNBOOK_PAGES])
def test_no_manual_state_editing(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for needle in FORBIDDEN:
        assert needle not in text, f"{page.name} contains {needle!r}"
    for line in shell_lines(page):
        words = tokens(PLACEHOLDER.sub("X", line.text))
        full = shlex.shlex(PLACEHOLDER.sub("X", line.text), posix=True, punctuation_chars=True)
        full.whitespace_split = True
        everything = list(full)
        head = next((w for w in words if not ENV_ASSIGNMENT.match(w)), "")
        assert not any("peer_scores.json" in w for w in everything), (
            f"{line.where}: touches peer_scores.json by hand (use `ian peers ...`): {line.text}"
        )
        if any("node_state.json" in w for w in everything):
            assert head == "jq" and ">" not in everything, (
                f"{line.where}: node_state.json may only be read (jq): {line.text}"
            )
        if head in EDITORS:
            assert not any(w.startswith("/data") for w in words[1:]), (
                f"{line.where}: `{head}` on the data directory (use an `ian` command): {line.text}"
            )
        for i, word in enumerate(everything[:-1]):
            if word in (">", ">>") and everything[i + 1].startswith("/data"):
                pytest.fail(f"{line.where}: writes into the data directory: {line.text}")


# --------------------------------------------------------------------------- named sections

#: Where alerts, dashboards and `ian doctor` send the operator: "runbook: X" and the like.
SECTION_REFERENCES = [
    re.compile(r'[Rr]unbook: "([^"]+)"'),
    re.compile(r'runbook\'s "([^"]+)" section'),
    re.compile(r"\([Rr]unbook: ([^)\"]+)\)"),
    re.compile(r"see the runbook's ([A-Z][A-Za-z ]+)"),
]
REFERRING_FILES = [
    ROOT / "deploy" / "prometheus" / "rules.yml",
    *sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")),
    ROOT / "src" / "ian_ops" / "doctor_checks.py",
]


def test_sections_named_by_alerts_dashboards_and_doctor_exist() -> None:
    headings = [
        line.lstrip("#").strip().lower()
        for page in RUNBOOK_PAGES
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    ]
    named: dict[str, set[str]] = {}
    for path in REFERRING_FILES:
        text = path.read_text(encoding="utf-8")
        for pattern in SECTION_REFERENCES:
            for m in pattern.finditer(text):
                named.setdefault(m.group(1).strip(), set()).add(path.name)
    assert {"Leader lost", "Fork evidence"} <= set(named), named
    missing = {
        ref: sorted(where)
        for ref, where in named.items()
        if not any(h.startswith(ref.lower()) for h in headings)
    }
    assert not missing, f"runbook sections named but missing: {missing}"
