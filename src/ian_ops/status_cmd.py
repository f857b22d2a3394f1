"""`ian status`: what an operator checks first, from the node's API — once, or as a live
dashboard (``--watch``) that survives node restarts.

``--watch`` polls the API every ``--interval`` and, when the node's event stream (WebSocket on
``ws_port``, see ``ian events``) is reachable, also right after each block, peer, sync or Tau
event — at most every :data:`DEBOUNCE_S` — so new blocks show up at once even with a long
interval. The stream URL and token are found as ``ian events`` finds them (``--ws-url``/
``IAN_WS_URL``, else the node URL's host and ``ws_port``; ``IAN_API_TOKEN``, else the data dir's
``api_token``). Without the stream (unreachable, refused, no token) it just polls; the header
says which: ``live`` or ``polling every Ns``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ian_ops import cli
from ian_ops.events_cmd import WsUrlOpt

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console, RenderableType

    from ian_ops.client import NodeClient
    from ian_ops.snapshot import Snapshot

#: at most one event-triggered poll per this many seconds
DEBOUNCE_S = 0.25
#: the event topics that change what the dashboard shows (contributions show up in blocks)
LIVE_TOPICS = ("block", "peer", "sync", "tau")


def status(
    goal: Annotated[str | None, typer.Argument(help="Show one goal in detail.")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Full-screen live dashboard (health, throughput, security, alerts); q quits.",
        ),
    ] = False,
    interval: Annotated[
        str,
        typer.Option("--interval", "-i", help="Seconds between polls with --watch, e.g. 2s, 1m."),
    ] = "2s",
    node_url: cli.NodeUrlOpt = None,
    ws_url: WsUrlOpt = None,
    data_dir: cli.DataDirOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the node's health, height, logs and contribution counters.

    With --watch: a live dashboard of the runbook's node health, throughput and security
    panels with its alert thresholds highlighted; it keeps retrying while the node is down.
    It follows the node's event stream when it can (header "live": new blocks appear at once)
    and polls every --interval either way (header "polling every 2s" without the stream).
    With --watch --json: one JSON object per poll (NDJSON).

    Example: ian status --watch --interval 5s
    """
    url = cli.find_node_url(node_url, data_dir)
    if watch:
        seconds = _interval(interval)
        feed = _event_feed(url, ws_url, data_dir)
        try:
            if json_out:
                _watch_json(url, goal, seconds, feed)
            else:
                _watch(url, goal, seconds, feed)
        finally:
            feed.close()
        return

    from ian_ops.client import NodeClient

    with NodeClient(url) as client:
        doc = client.get_json(f"/api/v1/status/{goal}" if goal else "/api/v1/status")
    if json_out:
        cli.print_json(doc)
        return
    if goal:
        _print_goal(doc)
    else:
        _print_node(doc)


# --------------------------------------------------------------------------- --watch


def _interval(text: str) -> float:
    """--interval in seconds; a bad value is a usage error (exit 2), found before any I/O."""
    from ian.errors import InputError
    from ian_ops.durations import parse_duration

    try:
        return parse_duration(text, option="--interval")
    except InputError as exc:
        cli.exit_with_error(exc.message, code=cli.EXIT_USAGE, fix=exc.fix)


def _client(url: str, interval: float) -> NodeClient:
    from ian_ops.client import NodeClient

    # A poll must not outlast the interval by much, or a hung node freezes the screen.
    return NodeClient(url, timeout=max(0.5, min(interval, 3.0)))


def _poll(client: NodeClient, goal: str | None, last: Snapshot | None) -> Snapshot:
    from ian_ops import snapshot

    return snapshot.take(client, now=time.time(), goal=goal, previous=last)


class _EventFeed:
    """Follows the node's event stream on a background thread and wakes the watch loop.

    The thread runs its own asyncio loop with a ``websockets`` client: subscribe to
    :data:`LIVE_TOPICS`, then one byte into a pipe per event (and per change of :attr:`live`);
    the watch loop ``select``s on :meth:`fileno` next to the keyboard. It reconnects with a
    backoff when the stream drops (a node restart) and gives up for good when the node refuses
    the subscription itself (wrong token): retrying cannot help then. ``url`` None: no stream
    at all, ``reason`` says why.
    """

    def __init__(self, url: str | None, token: str | None, reason: str | None = None) -> None:
        self.url = url
        self._token = token
        self.live = False
        self.reason = reason or "connecting to the event stream"
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> _EventFeed:
        if self.url is not None and self._token is not None:
            self._thread = threading.Thread(target=self._run, name="ian-status-events", daemon=True)
            self._thread.start()
        return self

    def fileno(self) -> int:
        return self._rfd

    def take(self) -> bool:
        """True when an event (or a change of :attr:`live`) came since the last call."""
        seen = False
        while True:
            try:
                data = os.read(self._rfd, 4096)
            except (BlockingIOError, OSError):
                return seen
            if not data:
                return seen
            seen = True

    def label(self, interval: float) -> str:
        return "live" if self.live else f"polling every {_seconds(interval)}"

    def close(self) -> None:
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                return  # it may still write into the pipe: leave it open for the exit
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread ------------------------------------------------------------------------
    def _notify(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wakeup is pending anyway
            os.write(self._wfd, b".")

    def _set(self, live: bool, reason: str | None) -> None:
        changed = live != self.live
        self.live, self.reason = live, reason or ""
        if changed:
            self._notify()  # redraw the header; when it went live, poll what was missed

    def _run(self) -> None:
        import asyncio

        with asyncio.Runner() as runner, contextlib.suppress(asyncio.CancelledError):
            self._loop = runner.get_loop()
            runner.run(self._follow())

    async def _follow(self) -> None:
        import asyncio

        # Set before the first look at _stopping: close() either sees the task and cancels
        # it, or has set _stopping before that look.
        self._task = asyncio.current_task()
        delay = 0.5
        while not self._stopping.is_set():
            try:
                refused = await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a thread must not print a traceback over the screen
                refused = None
                self._set(False, f"event stream unavailable: {type(exc).__name__}")
            else:
                if refused is not None:
                    self._set(False, f"event stream refused: {refused}")
                    return
                delay = 0.5
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _stream(self) -> str | None:
        """One connection: returns when it ends; a refusal's message when retrying is useless."""
        import asyncio
        import json

        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        from ian_ops.events_cmd import OPEN_TIMEOUT_S

        assert self.url is not None
        async with connect(
            self.url, open_timeout=OPEN_TIMEOUT_S, compression=None, close_timeout=1.0
        ) as ws:
            hello = {"type": "subscribe", "token": self._token, "topics": list(LIVE_TOPICS)}
            await ws.send(json.dumps(hello))
            ack = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S))
            if not isinstance(ack, dict) or ack.get("type") != "subscribed":
                error = (ack.get("error") if isinstance(ack, dict) else None) or {}
                if error.get("code") in ("unauthorized", "forbidden", "bad_request"):
                    return str(error.get("message") or error.get("code"))
                self._set(False, f"event stream: {error.get('message') or 'not subscribed'}")
                return None
            self._set(True, None)
            with contextlib.suppress(ConnectionClosed):
                async for _message in ws:
                    self._notify()
        self._set(False, "event stream closed")
        return None


def _seconds(interval: float) -> str:
    from ian_ops.durations import format_duration

    return f"{interval:g}s" if interval < 60 else format_duration(interval)


def _event_feed(node_url: str, ws_url: str | None, data_dir: Path | None) -> _EventFeed:
    """The event stream of the node at ``node_url``, found the way ``ian events`` finds it."""
    from ian.errors import IanError
    from ian.storage.datadir import DataDir, read_api_token
    from ian_ops.events_cmd import stream_url

    try:
        settings = cli.load_settings(data_dir)
        url = ws_url or stream_url(node_url, settings)
        if settings.api_token is not None:
            token: str | None = settings.api_token.get_secret_value()
        else:
            datadir = DataDir(settings.data_dir)
            token = read_api_token(datadir) if datadir.root.is_dir() else None
    except (IanError, ValueError) as exc:
        return _EventFeed(None, None, f"no event stream: {getattr(exc, 'message', exc)}")
    if token is None:
        return _EventFeed(None, None, "no API token for the event stream")
    return _EventFeed(url, token).start()


class _Schedule:
    """When to poll: ``interval`` after the last poll, or ``debounce`` after it once an event
    asked for one (:attr:`pending`)."""

    def __init__(self, interval: float, debounce: float = DEBOUNCE_S) -> None:
        self.interval = interval
        self.debounce = min(debounce, interval)
        self.last = float("-inf")
        self.pending = False

    def polled(self) -> None:
        self.last = time.monotonic()
        self.pending = False

    def left(self) -> float:
        """Seconds until the next poll is due (0 when it is)."""
        due = self.last + (self.debounce if self.pending else self.interval)
        return max(0.0, due - time.monotonic())


class _History:
    """Recent reachable snapshots (oldest first), enough to find :func:`snapshot.baseline`."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._snaps: deque[Snapshot] = deque(maxlen=1024)

    def add(self, snap: Snapshot) -> None:
        if not snap.reachable:
            return
        self._snaps.append(snap)
        # drop what is older than the newest one that is already a full window old
        while len(self._snaps) > 2 and snap.taken_at - self._snaps[1].taken_at >= self.window:
            self._snaps.popleft()

    def previous(self, current: Snapshot) -> Snapshot | None:
        from ian_ops.snapshot import baseline

        return baseline(list(self._snaps), current, self.window)


def _frame(snap: Snapshot, history: _History, feed: _EventFeed, interval: float) -> RenderableType:
    """The dashboard with the update mode ("live" / "polling every Ns") in its header."""
    from rich.console import Group
    from rich.text import Text

    from ian_ops.dashboard import render

    view = render(snap, history.previous(snap), time.time())
    tag = Text(feed.label(interval), style="bold green" if feed.live else "yellow")
    if isinstance(view, Group) and view.renderables and isinstance(view.renderables[0], Text):
        header = view.renderables[0].copy()
        header.append("  ")
        header.append_text(tag)
        view.renderables[0] = header
        return view
    return Group(tag, view)


def _wait(schedule: _Schedule, feed: _EventFeed, keys: _Keys | None = None) -> str:
    """Until the next poll is due, the next second passes (to refresh ages) or a key is
    pressed; an event makes the poll due soon. Returns the keys pressed."""
    pressed, woke = (keys or _Keys()).wait(min(schedule.left(), 1.0), feed.fileno())
    if woke and feed.take():
        schedule.pending = True
    return pressed


def _watch_json(url: str, goal: str | None, interval: float, feed: _EventFeed) -> None:
    """NDJSON: one snapshot per line until Ctrl-C (or the reader goes away)."""
    import json

    last = None
    schedule = _Schedule(interval)
    with _client(url, interval) as client:
        try:
            while True:
                last = _poll(client, goal, last)
                schedule.polled()
                doc = {**last.to_doc(), "feed": "live" if feed.live else "polling"}
                sys.stdout.write(json.dumps(doc, sort_keys=True, default=str) + "\n")
                sys.stdout.flush()
                while schedule.left() > 0:
                    _wait(schedule, feed)
        except (KeyboardInterrupt, BrokenPipeError):
            return


class _Keys:
    """Single key presses from stdin in cbreak mode (no echo, no line buffering) while active;
    inert when stdin is not a terminal. Restores the terminal settings on exit."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> _Keys:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        if not sys.stdin.isatty():
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None

    def wait(self, timeout: float, wake_fd: int | None = None) -> tuple[str, bool]:
        """Wait up to ``timeout`` seconds for a key or for ``wake_fd`` to become readable;
        return (the keys pressed, '' when none; whether ``wake_fd`` is readable)."""
        fds = [fd for fd in (self.fd, wake_fd) if fd is not None]
        if not fds:
            time.sleep(max(0.0, timeout))
            return "", False
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        woke = wake_fd is not None and wake_fd in ready
        if self.fd is None or self.fd not in ready:
            return "", woke
        data = os.read(self.fd, 64)
        return (data.decode("utf-8", "replace") if data else "q"), woke  # tty EOF: quit


def _watch(url: str, goal: str | None, interval: float, feed: _EventFeed) -> None:
    from rich.live import Live

    console = cli.stdout()
    if not console.is_terminal:
        _watch_plain(console, url, goal, interval, feed)
        return
    history = _History(interval)
    schedule = _Schedule(interval)
    live = Live(
        console=console,
        screen=True,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with _client(url, interval) as client, _Keys() as keys:
        try:
            last = _poll(client, goal, None)
            schedule.polled()
            history.add(last)
            live.update(_frame(last, history, feed, interval))
            live.start(refresh=True)
            while True:
                if "q" in _wait(schedule, feed, keys).lower():
                    return
                if schedule.left() <= 0:
                    last = _poll(client, goal, last)
                    schedule.polled()
                    history.add(last)
                # also refreshes "unreachable for ...", ages and the header once a second
                live.update(_frame(last, history, feed, interval), refresh=True)
        except KeyboardInterrupt:
            return
        finally:
            # Not `with Live(...)`: a Ctrl-C landing inside Live.__enter__ would skip __exit__
            # and leave the terminal on the alternate screen with the cursor hidden.
            live.stop()
            if console.is_alt_screen:
                console.set_alt_screen(False)
            console.show_cursor(True)


def _watch_plain(
    console: Console, url: str, goal: str | None, interval: float, feed: _EventFeed
) -> None:
    """--watch without a terminal (piped, logged): one frame per poll, no screen control."""
    last = None
    history = _History(interval)
    schedule = _Schedule(interval)
    with _client(url, interval) as client:
        try:
            while True:
                last = _poll(client, goal, last)
                schedule.polled()
                history.add(last)
                console.print(_frame(last, history, feed, interval))
                console.print()
                while schedule.left() > 0:
                    _wait(schedule, feed)
        except (KeyboardInterrupt, BrokenPipeError):
            return


# --------------------------------------------------------------------------- one-shot


def _print_node(doc: dict[str, Any]) -> None:
    from rich.table import Table

    out = cli.stdout()
    c = doc["contributions"]
    out.print(f"[bold]node[/] {doc['node_id']}  ({doc['role']}, v{doc['version']})")
    out.print(
        f"height {doc['height']}  network {doc['network_height']}  lag {doc['sync_lag']}  "
        f"{doc['consensus_state']}  peers {doc['peers']['connected']}  "
        f"uptime {_duration(doc['uptime_seconds'])}"
    )
    out.print(
        f"contributions: {c['received']} received, {c['accepted']} accepted, "
        f"{c['rejected']} rejected"
    )
    table = Table("goal", "log size", "log root", "leaderboard", "accepted", "rejected")
    for gid, g in sorted(doc["goals"].items()):
        table.add_row(
            gid,
            str(g["log_size"]),
            g["log_root"][:16] + "…",
            str(g["leaderboard_size"]),
            str(g["contributions"]["accepted"]),
            str(g["contributions"]["rejected"]),
        )
    out.print(table)


def _print_goal(g: dict[str, Any]) -> None:
    out = cli.stdout()
    out.print(f"[bold]{g['goal_id']}[/] {g['name']}")
    out.print(f"log size {g['log_size']}  root {g['log_root']}")
    out.print(f"leaderboard {g['leaderboard_size']}  root {g['leaderboard_root']}")
    leader = g.get("active_policy")
    if leader:
        out.print(
            f"leader: #{leader['log_index']} score {leader['score']:.6g} "
            f"by {leader['contributor_id']}"
        )
    c = g["contributions"]
    out.print(
        f"contributions: {c['received']} received, {c['accepted']} accepted, "
        f"{c['rejected']} rejected"
    )


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h}h" if d else f"{h}h{m}m" if h else f"{m}m{s}s"
