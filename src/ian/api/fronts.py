"""The node's side of its API fronts (``api_workers``; the fronts: :mod:`ian.api.front_process`).

One node process is bound by the GIL to about one core, and much of its work per
``POST /contribute`` is stateless: HTTP (reading, parsing, writing) and evaluating the pack.
With ``api_workers = N`` the node binds
N sockets on the API's port (SO_REUSEPORT: the kernel spreads connections evenly over them),
starts one front process on each and accepts nothing there itself. For each front it:

- answers the contribute requests the front sends over its channel with the route's own
  checks, counters and answers (:func:`ian.api.routes.contribute.admit_now` and
  :func:`~ian.api.routes.contribute.decide_soon`), after the same ban check
  :class:`ian.api.auth.BanGuard` makes: one implementation of the route, whoever holds the
  connection. An admitted pack of a costly goal is evaluated by the front before it is queued
  (see :mod:`ian.api.front_wire`);
- serves the connections the front hands over (any other request) with the API's own server:
  the descriptor becomes a connection of the node's uvicorn, fed the bytes the front read;
- starts the front again when it dies (after 0.5 s, doubling to 30 s while it keeps dying
  young), and on shutdown sends it SIGTERM, waits for it to answer what it is serving (5 s),
  then kills it.

A front holds no state, so one that dies loses only the connections it held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import msgspec
import uvicorn
from anyio.abc import (
    Process,
    TaskGroup,
    TaskStatus,
    UNIXSocketStream,
)
from anyio.streams.buffered import BufferedByteReceiveStream
from starlette.responses import Response

from ian.api import front_wire as wire
from ian.api.auth import ban_refusal
from ian.api.front_process import GRACE_S
from ian.api.http_limits import BoundedHttpToolsProtocol
from ian.api.responses import error_response
from ian.api.routes.contribute import Admitted, admit_now, decide_soon
from ian.chain.evaluation import costly_goals
from ian.errors import UnavailableError

if TYPE_CHECKING:
    from ian.node import Node

log = logging.getLogger("ian.api.fronts")

#: socket buffer of the hand-off pair: a hand-off message must fit whole
_HANDOFF_BUFFER = 4 * wire.HANDOFF_MAX_BYTES
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
#: a front that ran this long before dying was not dying young: restart it quickly
_HEALTHY_S = 10.0


class ApiFronts:
    """One front process per listening socket of ``listeners`` (the API's port, see
    :func:`ian.api.listen.listen_group`), for ``node``'s API ``server``."""

    def __init__(self, node: Node, server: uvicorn.Server, listeners: list[socket.socket]) -> None:
        self.node = node
        self.server = server
        self.listeners = listeners
        self.count = len(listeners)
        self.max_body = node.settings.max_request_bytes
        self._processes: dict[int, Process] = {}
        self._stopping = anyio.Event()
        self.started = 0  # front processes started, restarts included
        self.asks = 0  # contribute requests the fronts sent
        self.evaluated = 0  # of those, evaluated by a front
        self.handoffs = 0  # connections the fronts handed over
        #: set (and replaced) whenever a front process starts
        self.changed = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the fronts running until :meth:`stop`; started once the first ones are up."""
        async with anyio.create_task_group() as tg:
            for slot in range(self.count):
                await tg.start(self._keep, slot)
            task_status.started()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values()]

    async def stop(self) -> None:
        """SIGTERM every front, wait up to the grace period, then kill what is left."""
        self._stopping.set()
        for process in list(self._processes.values()):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(GRACE_S + 1):
            for process in list(self._processes.values()):
                await process.wait()
        for process in list(self._processes.values()):
            if process.returncode is None:
                process.kill()

    async def _keep(self, slot: int, *, task_status: TaskStatus[None]) -> None:
        backoff = _FIRST_BACKOFF_S
        while not self._stopping.is_set():
            began = time.monotonic()
            code = await self._run_one(slot, task_status)
            task_status = anyio.TASK_STATUS_IGNORED
            if self._stopping.is_set():
                return
            if time.monotonic() - began >= _HEALTHY_S:
                backoff = _FIRST_BACKOFF_S
            log.error(
                "API front %d exited with code %s; starting it again in %.1fs", slot, code, backoff
            )
            with anyio.move_on_after(backoff):  # or until stop(): it must not wait for this
                await self._stopping.wait()
            backoff = min(_MAX_BACKOFF_S, backoff * 2)

    async def _run_one(self, slot: int, task_status: TaskStatus[None]) -> int | None:
        """Start one front, serve it until it exits; its exit code."""
        channel, channel_front = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handoff, handoff_front = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (handoff, handoff_front):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _HANDOFF_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _HANDOFF_BUFFER)
        listener = self.listeners[slot]  # kept open by the node while the front restarts
        fds = (listener.fileno(), channel_front.fileno(), handoff_front.fileno())
        try:
            process = await anyio.open_process(
                [
                    sys.executable,
                    "-m",
                    "ian.api.front_process",
                    "--listen-fd",
                    str(fds[0]),
                    "--channel-fd",
                    str(fds[1]),
                    "--handoff-fd",
                    str(fds[2]),
                    "--max-body",
                    str(self.max_body),
                    "--max-parameters",
                    str(self.node.settings.max_parameters_bytes),
                    "--goals",
                    json.dumps(self._costly_goals()),
                    "--node-version",
                    self.node.version,
                    "--log-format",
                    self.node.settings.log_format,
                ],
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                pass_fds=fds,
            )
        except BaseException:
            channel.close()
            handoff.close()
            raise
        finally:
            channel_front.close()
            handoff_front.close()
        self._processes[slot] = process
        if self._stopping.is_set():  # stop() began while it started: it missed this one
            process.send_signal(signal.SIGTERM)
        self.started += 1
        self.changed.set()
        self.changed = anyio.Event()
        task_status.started()
        stream = await UNIXSocketStream.from_socket(channel)
        handoff.setblocking(False)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._adopt_connections, handoff)
                await self._serve_channel(stream, tg)
                tg.cancel_scope.cancel()
            # The front closed its channel (it is ending), or sent what it must not: either way
            # the channel closes here, which ends a front that is still running.
            await stream.aclose()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(GRACE_S + 1):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                code: int | None = await process.wait()
        finally:
            handoff.close()
            await stream.aclose()
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()
        return code

    def _costly_goals(self) -> dict[str, str]:
        """The goals whose packs a front evaluates: id -> evaluator name."""
        goals = self.node.state.goals
        return {gid: goals[gid].spec.evaluator for gid in costly_goals(goals)}

    async def _serve_channel(self, stream: UNIXSocketStream, tg: TaskGroup) -> None:
        """Answer the front's asks until it closes the channel (or breaks the protocol)."""
        reader = BufferedByteReceiveStream(stream)
        limit = wire.max_frame(self.max_body)
        out = _Answers()
        #: admitted contributions whose evaluation the front was asked for, by request id
        waiting: dict[int, Admitted] = {}
        costly = set(self._costly_goals())
        tg.start_soon(out.write_to, stream)
        try:
            await self._answer_asks(reader, limit, out, waiting, costly)
        finally:
            # The front is gone, and its clients' connections with it: what it was evaluating
            # is never decided. Each is counted as refused (unavailable), so the counters still
            # add up (received = accepted + rejected).
            for admitted in waiting.values():
                admitted.tally.refused(
                    UnavailableError("its API front stopped before it was evaluated")
                )

    async def _answer_asks(
        self,
        reader: BufferedByteReceiveStream,
        limit: int,
        out: _Answers,
        waiting: dict[int, Admitted],
        costly: set[str],
    ) -> None:
        """The loop of :meth:`_serve_channel`; returns when the channel ends or the front
        breaks the protocol."""
        while True:
            try:
                (size,) = wire.HEADER.unpack(await reader.receive_exactly(wire.HEADER.size))
                if size > limit:
                    log.error("an API front sent a %d-byte request; restarting it", size)
                    return
                ask = wire.decode_ask(await reader.receive_exactly(size))
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return
            except msgspec.MsgspecError as exc:
                log.error("an API front sent an unreadable request (%s); restarting it", exc)
                return
            kind, rid = ask[0], ask[1]

            def answer(response: Response, rid: int = rid) -> None:
                status = response.status_code
                out.add(wire.encode((rid, status, response.raw_headers, bytes(response.body))))

            admitted: Admitted | None = None  # the request's, once the node admitted it
            try:
                if kind == wire.EVALUATION:
                    admitted = waiting.pop(rid, None)
                    if admitted is None:
                        log.error("an API front sent an evaluation nobody asked for; restarting it")
                        return
                    admitted.contribution.evaluated = ask[6]
                    self.evaluated += ask[6] is not None
                    decide_soon(self.node, admitted, answer)
                    continue
                self.asks += 1
                result = self._admit(ask)
                if not isinstance(result, Admitted):
                    answer(result)
                    continue
                admitted = result
                if admitted.contribution.goal_id in costly and not admitted.contribution.metadata:
                    waiting[rid] = admitted  # the front evaluates it (see ian.api.front_wire)
                    out.add(wire.encode((rid, wire.EVALUATE, [], b"")))
                else:
                    decide_soon(self.node, admitted, answer)
            except Exception as exc:
                waiting.pop(rid, None)
                if admitted is not None:  # counted as received: now as rejected (internal)
                    answer(admitted.tally.failed(exc))
                else:
                    log.exception("unexpected error serving POST /api/v1/contribute")
                    answer(error_response(500, "internal", "internal error; see the node's log"))

    def _admit(self, ask: wire.Ask) -> Admitted | Response:
        """The node's checks for a front's request, in the order of its own path: the ban
        (:class:`ian.api.auth.BanGuard`), then the route's."""
        _, _, peer, authorization, forwarded, body, _ = ask
        refusal = ban_refusal(self.node, peer, forwarded)
        if refusal is not None:
            return refusal
        headers = {"content-length": str(len(body))}
        if authorization is not None:
            headers["authorization"] = authorization
        if forwarded is not None:
            headers["x-forwarded-for"] = forwarded
        return admit_now(self.node, peer, headers, body)

    async def _adopt_connections(self, handoff: socket.socket) -> None:
        """Serve every connection the front hands over with the node's own API server."""
        loop = asyncio.get_running_loop()
        config = self.server.config
        state = self.server.server_state

        def protocol() -> asyncio.Protocol:
            return BoundedHttpToolsProtocol(
                config=config, server_state=state, app_state=self.server.lifespan.state
            )

        while True:
            await anyio.wait_readable(handoff)
            try:
                data, fds, flags, _ = socket.recv_fds(handoff, wire.HANDOFF_MAX_BYTES + 1, 2)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data and not fds:
                return  # the front closed its end
            bad = flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC)
            if bad or len(fds) != 1 or data[:1] != b"H":
                for fd in fds:
                    os.close(fd)
                log.warning("an API front handed over a malformed connection; dropped")
                continue
            conn = socket.socket(fileno=fds[0])
            try:
                _, proto = await loop.connect_accepted_socket(protocol, conn)
            except OSError:
                conn.close()
                continue
            self.handoffs += 1
            if len(data) > 1:
                proto.data_received(data[1:])


class _Answers:
    """Answers waiting to be written to a front: as many per write as are ready."""

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._ready = anyio.Event()

    def add(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._ready.set()

    async def write_to(self, stream: UNIXSocketStream) -> None:
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            frames, self._frames = self._frames, []
            try:
                await stream.send(b"".join(frames))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
