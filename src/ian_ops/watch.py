"""The plumbing of ``ian status --watch``: when to poll, what wakes the loop, the keyboard and
the terminal. What is shown is the caller's (:mod:`ian_ops.status_cmd` renders).

The loop is single-threaded and ``select``s on two file descriptors: the keyboard (stdin in
cbreak mode, :class:`Keys`) and a pipe that :class:`EventFeed` writes one byte into per event
from the node's event stream. The feed runs a ``websockets`` client on its own thread and
asyncio loop, because the loop itself blocks in ``select``. A poll is due ``interval`` seconds
after the last one, or :data:`DEBOUNCE_S` after it once an event came (:class:`Schedule`).

The three ways to follow (:func:`follow_screen`, :func:`follow_plain`, :func:`follow_lines`) end
on ``q`` (screen only), Ctrl-C or a closed reader, and always leave the terminal as they found
it: cooked mode, main screen, cursor shown.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console, RenderableType

#: at most one event-triggered poll per this many seconds
DEBOUNCE_S = 0.25
#: the event topics that change what the dashboard shows (contributions show up in blocks)
LIVE_TOPICS = ("block", "peer", "sync", "tau")


def seconds_text(interval: float) -> str:
    """``interval`` for the header: ``0.5s``, ``30s``, ``2m``."""
    from ian_ops.durations import format_duration

    return f"{interval:g}s" if interval < 60 else format_duration(interval)


class EventFeed:
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

    def start(self) -> EventFeed:
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
        """The header's update mode: ``live``, or ``polling every Ns``."""
        return "live" if self.live else f"polling every {seconds_text(interval)}"

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


def open_event_feed(node_url: str, ws_url: str | None, data_dir: Path | None) -> EventFeed:
    """The event stream of the node at ``node_url``, found the way ``ian events`` finds it
    (``ws_url``, else the node URL's host and ``ws_port``; the token from
    :func:`ian_ops.target.find_token`), started. Never raises: without a stream (bad config, no
    token) the feed is inert and its ``reason`` says why."""
    from ian.errors import IanError
    from ian.storage.datadir import DataDir
    from ian_ops import cli
    from ian_ops.events_cmd import stream_url
    from ian_ops.target import find_token

    try:
        settings = cli.load_settings(data_dir)
        url = ws_url or stream_url(node_url, settings)
        token = find_token(settings, DataDir(settings.data_dir))
    except (IanError, ValueError) as exc:
        return EventFeed(None, None, f"no event stream: {getattr(exc, 'message', exc)}")
    if token is None:
        return EventFeed(None, None, "no API token for the event stream")
    return EventFeed(url, token).start()


class Schedule:
    """When to poll: ``interval`` after the last poll, or ``debounce`` after it once an event
    asked for one (:attr:`pending`). Times are :func:`time.monotonic` seconds."""

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


class Keys:
    """Single key presses from stdin in cbreak mode (no echo, no line buffering) while active;
    inert when stdin is not a terminal. Restores the terminal settings on exit."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> Keys:
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


def wait(schedule: Schedule, feed: EventFeed, keys: Keys | None = None) -> str:
    """Until the next poll is due, the next second passes (to refresh ages) or a key is
    pressed; an event makes the poll due soon. Returns the keys pressed."""
    pressed, woke = (keys or Keys()).wait(min(schedule.left(), 1.0), feed.fileno())
    if woke and feed.take():
        schedule.pending = True
    return pressed


def follow_lines(
    interval: float, feed: EventFeed, poll: Callable[[], None], line: Callable[[], str]
) -> None:
    """``poll()`` then write ``line()`` to stdout, every due poll, until Ctrl-C or the reader
    goes away."""
    schedule = Schedule(interval)
    try:
        while True:
            poll()
            schedule.polled()
            sys.stdout.write(line() + "\n")
            sys.stdout.flush()
            while schedule.left() > 0:
                wait(schedule, feed)
    except (KeyboardInterrupt, BrokenPipeError):
        return


def follow_plain(
    console: Console,
    interval: float,
    feed: EventFeed,
    poll: Callable[[], None],
    frame: Callable[[], RenderableType],
) -> None:
    """Without a terminal (piped, logged): ``poll()`` and print ``frame()`` and a blank line,
    every due poll, no screen control, until Ctrl-C or the reader goes away."""
    schedule = Schedule(interval)
    try:
        while True:
            poll()
            schedule.polled()
            console.print(frame())
            console.print()
            while schedule.left() > 0:
                wait(schedule, feed)
    except (KeyboardInterrupt, BrokenPipeError):
        return


def follow_screen(
    console: Console,
    interval: float,
    feed: EventFeed,
    poll: Callable[[], None],
    frame: Callable[[], RenderableType],
) -> None:
    """Full screen: ``frame()`` redrawn at least once a second (ages move), ``poll()`` when
    due; ``q`` or Ctrl-C end it with the terminal restored (keys, alternate screen, cursor)."""
    from rich.live import Live

    schedule = Schedule(interval)
    live = Live(
        console=console,
        screen=True,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with Keys() as keys:
        try:
            poll()
            schedule.polled()
            live.update(frame())
            live.start(refresh=True)
            while True:
                if "q" in wait(schedule, feed, keys).lower():
                    return
                if schedule.left() <= 0:
                    poll()
                    schedule.polled()
                # also refreshes "unreachable for ...", ages and the header once a second
                live.update(frame(), refresh=True)
        except KeyboardInterrupt:
            return
        finally:
            # Not `with Live(...)`: a Ctrl-C landing inside Live.__enter__ would skip __exit__
            # and leave the terminal on the alternate screen with the cursor hidden.
            live.stop()
            if console.is_alt_screen:
                console.set_alt_screen(False)
            console.show_cursor(True)
