"""An API front: a process that takes HTTP work off the node's process (``api_workers``).

The node starts its fronts (:mod:`ian.api.fronts`) and stops accepting on the API's port
itself; the fronts accept there. A front reads requests and serves exactly one kind by itself —
a plain ``POST /api/v1/contribute`` (HTTP/1.1, ``Content-Length`` within ``max_request_bytes``,
no ``Expect``, no ``Transfer-Encoding``, no upgrade, printable headers) — by sending the node
the client's address, its ``Authorization`` and ``X-Forwarded-For`` and the body, and writing
out the answer the node sends back, byte for byte what the node would have answered. Every
check (ban, token, rate limits, body, duplicates, sequencing) is the node's: a front parses HTTP
and holds no state. Any other request, or anything the front's strict reading does not accept,
and the connection is handed to the node whole (its descriptor and the bytes read so far), and
the node serves it as if it had accepted it: reads, admin, metrics, errors, 431 and 400s.

What a front holds is bounded: a request head of 64 KiB plus one read, a body of
``max_request_bytes``, per connection. It exits when the node closes its channel (the node
stopped or died) and, on SIGTERM, once the requests it is serving are answered (SIGINT is the
node's to handle). Its few log lines (a failed accept or hand-over, a refusal to start) go to
standard error, the node's, in the node's format (``--log-format``).

A front also evaluates the pack of each contribute request whose goal has a costly evaluator
(the demo back-test, any real one), once the node has admitted the request (nothing is
evaluated for a client the node refuses): evaluation is pure and stateless, so the fronts do it
in parallel, and the node takes the result (:attr:`ian.chain.contributions.Contribution.evaluated`)
instead of evaluating the pack again. The fronts are the node's own processes, running its code
(a front from another installed version refuses to start).

Run by the node as ``python -m ian.api.front_process --listen-fd N --channel-fd N
--handoff-fd N --max-body N --max-parameters N --goals JSON --node-version V --log-format F``.
No node and no web framework in here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

from ian.api import front_wire as wire
from ian.api.front_wire import MAX_HEAD_BYTES
from ian.log_setup import configure_logging

log = logging.getLogger("ian.api.front")

#: the one request line a front serves itself
_CONTRIBUTE = b"POST /api/v1/contribute HTTP/1.1"
_READ = 65536
#: a control character in a header value (the node's parser answers 400 to it)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: a header name (RFC 9110 token)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: how long, on SIGTERM, requests being served may take to be answered
GRACE_S = 5.0
#: how long a connection may stay idle between requests (uvicorn's default, the node's too)
KEEP_ALIVE_S = 5.0
#: how long a request begun may go without a byte (a slow reader holds a task and a buffer)
READ_TIMEOUT_S = 30.0
#: evaluations that take less than this on average run on the front's loop, longer ones in a
#: thread (the demo back-test takes ~0.2 ms; a thread hop cost more than that here)
INLINE_EVALUATION_S = 0.002


class Head:
    """What a front needs of a contribute request's head."""

    __slots__ = ("authorization", "close", "forwarded", "length")

    def __init__(
        self, length: int, close: bool, authorization: str | None, forwarded: str | None
    ) -> None:
        self.length = length
        self.close = close
        self.authorization = authorization
        self.forwarded = forwarded


def parse_head(head: bytes) -> Head | None:
    """The head (request line and headers, without the blank line) of a contribute request a
    front may serve; None for anything else (the node serves it, and judges it)."""
    lines = head.split(b"\r\n")
    if lines[0] != _CONTRIBUTE:
        return None
    length: int | None = None
    close = False
    authorization: str | None = None
    forwarded: str | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            return None  # obs-fold, a space before the colon, no colon...: the node's to judge
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 15:
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif name == b"connection":
            tokens = {t.strip(b" \t").lower() for t in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = close or b"close" in tokens
        elif name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"x-forwarded-for" and forwarded is None:
            forwarded = value.decode("latin-1")
    if length is None:
        return None
    return Head(length, close, authorization, forwarded)


_reasons: dict[int, bytes] = {}
_date: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n")
    return _date[1]


def render(answer: wire.Answer, close: bool) -> bytes:
    """The HTTP/1.1 response for the node's ``answer`` (as the node's server writes it)."""
    _, status, headers, body = answer
    reason = _reasons.get(status)
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        _reasons[status] = reason
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason), _date_header()]
    parts.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class PackEvaluator:
    """Evaluates the pack of a contribute body, for goals whose evaluator is costly: stateless
    work the node's process then need not do (it applies the goal's thresholds itself). The
    same code as the node's evaluation workers (:func:`ian.chain.evaluation.run_jobs`)."""

    def __init__(self, goals: dict[str, str], max_parameters: int) -> None:
        self.goals = goals  # goal id -> evaluator name
        self.max_parameters = max_parameters

    def __call__(self, body: bytes) -> wire.Evaluated:
        """The evaluation of ``body``'s pack; None when it is not one to evaluate here (another
        goal, metadata, anything the node will refuse or judge itself)."""
        if not self.goals:
            return None
        from ian.api.contribute_body import parse_plain_body
        from ian.chain.contributions import decode_parameters
        from ian.chain.evaluation import run_jobs
        from ian.errors import IanError

        fields = parse_plain_body(body)
        if fields is None:
            return None
        name = self.goals.get(fields.goal_id)
        if name is None:
            return None
        try:
            parameters = decode_parameters(fields.parameters, max_bytes=self.max_parameters)
        except IanError:
            return None
        ((kind, value),) = run_jobs([(name, parameters, {}, None)])
        if kind == "ok":
            return ("ok", value)
        if kind == "invalid" and len(value) <= wire.MAX_MESSAGE_CHARS:
            return ("invalid", value)
        return None  # an evaluator's bug, or a long message: the node evaluates it itself


class Front:
    def __init__(
        self,
        listener: socket.socket,
        channel: socket.socket,
        handoff: socket.socket,
        max_body: int,
        evaluate: Callable[[bytes], wire.Evaluated],
    ) -> None:
        self.listener = listener
        self.channel = channel
        self.handoff = handoff
        self.max_body = max_body
        self.evaluate = evaluate
        self._asks: dict[int, asyncio.Future[wire.Answer]] = {}
        self._next_id = 0
        self._writer: asyncio.StreamWriter | None = None
        #: connection tasks, and whether each is idle (waiting for a request to begin)
        self._connections: dict[asyncio.Task[None], bool] = {}
        self._stopping = False
        #: one thread: evaluation is CPU work under the GIL; more threads would not add cores
        self._evaluating = ThreadPoolExecutor(1, thread_name_prefix="ian-front-evaluation")
        #: the recent time of one evaluation on the loop (moving average), in seconds
        self._evaluation_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader, self._writer = await asyncio.open_unix_connection(
            sock=self.channel, limit=wire.max_frame(self.max_body)
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        answers = asyncio.create_task(self._read_answers(reader))
        accepting = asyncio.create_task(self._accept())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({answers, accepting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        accepting.cancel()
        self.listener.close()
        if not answers.done():  # SIGTERM: answer what is being served, then go
            self._stopping = True
            for task, idle in list(self._connections.items()):
                if idle:
                    task.cancel()
            if self._connections:
                await asyncio.wait(set(self._connections), timeout=GRACE_S)
        for task in list(self._connections):
            task.cancel()
        answers.cancel()
        stopped.cancel()

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        """Answers from the node, to whoever asked; returns when the node closes the channel."""
        limit = wire.max_frame(self.max_body)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (size,) = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))
                if size > limit:
                    log.error("front %d: the node sent an answer of %d bytes; stopping", _PID, size)
                    return
                answer = wire.decode_answer(await reader.readexactly(size))
                waiter = self._asks.pop(answer[0], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)

    async def _ask(self, peer: str, head: Head, body: bytes) -> wire.Answer:
        """The node's answer to a contribute request (evaluating the pack when it asks)."""
        assert self._writer is not None
        self._next_id += 1
        rid = self._next_id
        loop = asyncio.get_running_loop()
        try:
            waiter: asyncio.Future[wire.Answer] = loop.create_future()
            self._asks[rid] = waiter
            auth, forwarded = head.authorization, head.forwarded
            self._writer.write(wire.encode((wire.REQUEST, rid, peer, auth, forwarded, body, None)))
            await self._writer.drain()
            answer = await waiter
            if answer[1] != wire.EVALUATE:
                return answer
            # Admitted by the node: evaluate here. Quick evaluations run on this loop (a thread
            # hop costs more than they do); slow ones in a thread, so that the loop keeps
            # reading, answering and handing over meanwhile.
            if self._evaluation_s < INLINE_EVALUATION_S:
                evaluated, took = self._timed_evaluation(body)
            else:
                evaluated, took = await loop.run_in_executor(
                    self._evaluating, self._timed_evaluation, body
                )
            self._evaluation_s += (took - self._evaluation_s) / 8
            waiter = loop.create_future()
            self._asks[rid] = waiter
            self._writer.write(wire.encode((wire.EVALUATION, rid, "", None, None, b"", evaluated)))
            await self._writer.drain()
            return await waiter
        finally:
            self._asks.pop(rid, None)

    def _timed_evaluation(self, body: bytes) -> tuple[wire.Evaluated, float]:
        began = time.perf_counter()
        evaluated = self.evaluate(body)
        return evaluated, time.perf_counter() - began

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self.listener)
            except OSError as exc:  # EMFILE and the like: the node's server would log and wait
                log.warning("front %d: accept failed: %s", _PID, exc)
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(OSError):  # reset already: the first read says so
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(conn, str(address[0])))
            self._connections[task] = True
            task.add_done_callback(self._connections.pop)

    def _idle(self, idle: bool) -> None:
        task = asyncio.current_task()
        if task in self._connections:
            self._connections[task] = idle

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        kept = True
        try:
            while True:
                searched = 0
                while (end := buf.find(b"\r\n\r\n", max(0, searched - 3))) < 0:
                    if len(buf) > MAX_HEAD_BYTES or b"\n\n" in buf:  # too long, or bare LFs
                        kept = not await self._hand_off(conn, buf)
                        return
                    searched = len(buf)
                    if buf:
                        data = await self._recv(conn, _READ)
                    else:  # between requests: an idle connection is closed, as by the node
                        self._idle(True)
                        try:
                            async with asyncio.timeout(KEEP_ALIVE_S):
                                data = await loop.sock_recv(conn, _READ)
                        except TimeoutError:
                            return
                        self._idle(False)
                    if not data:
                        return
                    buf += data
                head = parse_head(bytes(buf[:end])) if end <= MAX_HEAD_BYTES else None
                if head is None or head.length > self.max_body:
                    kept = not await self._hand_off(conn, buf)
                    return
                total = end + 4 + head.length
                while len(buf) < total:
                    data = await self._recv(conn, max(_READ, total - len(buf)))
                    if not data:
                        return
                    buf += data
                body = bytes(buf[end + 4 : total])
                del buf[:total]
                answer = await self._ask(peer, head, body)
                # The node's server closes the connection after a 500 (the app raised); so here.
                close = head.close or self._stopping or answer[1] == 500
                await loop.sock_sendall(conn, render(answer, close))
                if close:
                    return
        except (OSError, TimeoutError):  # ConnectionError; a read past READ_TIMEOUT_S
            return
        finally:
            if kept:
                conn.close()

    @staticmethod
    async def _recv(conn: socket.socket, size: int) -> bytes:
        """The next bytes of a request begun: at most :data:`READ_TIMEOUT_S` apart."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await asyncio.get_running_loop().sock_recv(conn, size)

    async def _hand_off(self, conn: socket.socket, data: bytearray) -> bool:
        """Give ``conn`` and the ``data`` read from it to the node; False if that failed."""
        message = b"H" + bytes(data)
        for _ in range(200):  # a full hand-off socket: the node is reading, wait a little
            try:
                socket.send_fds(self.handoff, [message], [conn.fileno()])
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            except OSError as exc:
                log.warning("front %d: handing a connection to the node failed: %s", _PID, exc)
                return False
            conn.close()
            return True
        return False


_PID = os.getpid()


def _installed_version() -> str:
    from importlib.metadata import version

    try:
        return version("ian-node")
    except Exception:
        return "0+unknown"  # as ian.node.package_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ian.api.front_process")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--handoff-fd", type=int, required=True)
    parser.add_argument("--max-body", type=int, required=True)
    parser.add_argument("--max-parameters", type=int, required=True)
    parser.add_argument(
        "--goals", default="{}", help="JSON: goal id -> evaluator name, the goals to evaluate"
    )
    parser.add_argument("--node-version", default=None, help="the node's ian-node version")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    configure_logging("INFO", args.log_format)
    installed = _installed_version()
    if args.node_version is not None and args.node_version != installed:
        # Its evaluations are taken as the node's: the code must be the node's.
        log.error(
            "front %d: the installed ian-node is %s, the running node is %s; restart the node",
            _PID,
            installed,
            args.node_version,
        )
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the node's; it stops the fronts
    listener = socket.socket(fileno=args.listen_fd)
    listener.setblocking(False)
    channel = socket.socket(fileno=args.channel_fd)
    handoff = socket.socket(fileno=args.handoff_fd)
    handoff.setblocking(False)
    evaluate = PackEvaluator(json.loads(args.goals), args.max_parameters)
    front = Front(listener, channel, handoff, args.max_body, evaluate)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with the node's dependencies
        asyncio.run(front.run())
    else:
        uvloop.run(front.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
