"""`ian events`: tail the node's event stream (WebSocket on ``ws_port``, ARCHITECTURE §4).

The stream URL is ``--ws-url``, else ``ws://<host of the node URL>:<ws_port>/events`` where the
node URL is ``--node-url``/``IAN_NODE_URL`` (default loopback) and ``ws_port`` comes from the
effective config (``IAN_WS_PORT``, default 9001). The token is ``IAN_API_TOKEN``, else the data
dir's ``api_token`` file. One line per event, or with ``--json`` each envelope as a JSON line;
status lines go to stderr. Ctrl-C ends it with exit 0.

Exit codes: 6 when the stream cannot be reached or the connection is lost, 7 when the node
refuses the subscription (token, topics, too many clients), 1 when the node dropped this
client for reading too slowly.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.config import Settings

TopicsOpt = Annotated[
    str | None,
    typer.Option(
        "--topics",
        help="Comma-separated topics: contribution, block, peer, sync, tau (default: all).",
        show_default=False,
    ),
]
WsUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--ws-url",
        envvar="IAN_WS_URL",
        help="Event stream URL, e.g. ws://host:9001/events (env IAN_WS_URL; default: the node "
        "URL's host and the configured ws_port).",
        show_default=False,
    ),
]

OPEN_TIMEOUT_S = 5.0


def events(
    topics: TopicsOpt = None,
    node_url: cli.NodeUrlOpt = None,
    ws_url: WsUrlOpt = None,
    data_dir: cli.DataDirOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Follow the node's events live: contributions, blocks, peers, sync, Tau.

    Example: ian events --topics block,contribution --json
    """
    import asyncio

    from ian.errors import DataDirError, InputError
    from ian.events import TOPICS
    from ian_ops.target import locate

    wanted = [t.strip() for t in (topics or "").split(",") if t.strip()]
    unknown = sorted(set(wanted) - TOPICS)
    if unknown:
        raise InputError(
            f"unknown topic(s) {', '.join(unknown)}",
            fix=f"choose from {', '.join(sorted(TOPICS))}",
        )
    target = locate(data_dir, node_url)
    url = ws_url or stream_url(target.url, target.settings)
    token = target.token()
    if token is None:
        raise DataDirError(
            "no API token for the event stream",
            fix=f"set IAN_API_TOKEN, or pass --data-dir of the node "
            f"({target.datadir.api_token_file})",
        )
    try:
        asyncio.run(_tail(url, token, wanted, json_out=json_out))
    except KeyboardInterrupt:
        return


def stream_url(node_url: str, settings: Settings) -> str:
    """``ws://<node URL host>:<ws_port>/events`` (``wss`` when the node URL is https)."""
    parts = urlsplit(node_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{host}:{settings.ws_port}/events"


async def _tail(url: str, token: str, topics: list[str], *, json_out: bool) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import (
        ConnectionClosed,
        InvalidHandshake,
        InvalidStatus,
        InvalidURI,
    )

    from ian.errors import NodeUnreachableError

    unreachable_fix = "is `ian node run` running? check --ws-url, --node-url and IAN_WS_PORT"
    try:
        ws = await connect(url, open_timeout=OPEN_TIMEOUT_S, compression=None, max_size=None)
    except InvalidURI as exc:
        raise NodeUnreachableError(f"bad event stream URL {url!r}: {exc}") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 503:
            from ian.errors import NodeRefusedError

            raise NodeRefusedError(
                f"the node at {url} refused the stream: too many event stream clients",
                http_status=503,
            ) from None
        raise NodeUnreachableError(
            f"{url} is not an IAN event stream (HTTP {status})", fix=unreachable_fix
        ) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise NodeUnreachableError(
            f"cannot reach the event stream at {url}: {exc}", fix=unreachable_fix
        ) from None
    async with ws:
        await ws.send(json.dumps({"type": "subscribe", "token": token, "topics": topics}))
        error: dict[str, Any] | None = None
        try:
            async for raw in ws:
                doc = json.loads(raw)
                kind = doc.get("type") if "topic" not in doc else None
                if kind == "subscribed":
                    sys.stderr.write(f"subscribed to {', '.join(doc['topics'])} at {url}\n")
                    sys.stderr.flush()
                elif kind == "error":
                    error = doc.get("error") or {}
                elif json_out:
                    sys.stdout.write(raw if isinstance(raw, str) else raw.decode())
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                else:
                    sys.stdout.write(format_event(doc) + "\n")
                    sys.stdout.flush()
        except ConnectionClosed:
            pass
        _raise_for_close(url, ws.close_code, ws.close_reason or "", error)


def _raise_for_close(url: str, code: int | None, reason: str, error: dict[str, Any] | None) -> None:
    from ian import errors

    message = (error or {}).get("message") or reason or "no reason given"
    if code in (4401, 4403):
        raise errors.NodeRefusedError(
            f"the node refused the event stream: {message}",
            http_status=401 if code == 4401 else 403,
            fix="use the node's token: IAN_API_TOKEN or --data-dir of the node",
        )
    if code == 4400:
        raise errors.NodeRefusedError(
            f"the node refused the subscription: {message}", http_status=400
        )
    if code in (4408, 1013):
        raise errors.NodeRefusedError(f"the node closed the stream: {message}", http_status=503)
    if code == 1008:
        raise errors.IanError(
            f"the node dropped this stream: {message}",
            fix="read faster (e.g. fewer topics, or --json to a file)",
        )
    raise errors.NodeUnreachableError(
        f"the event stream at {url} closed (code {code}): {message}",
        fix="the node stopped or restarted; run the command again",
    )


def format_event(doc: dict[str, Any]) -> str:
    """One human line for an event envelope."""
    when = datetime.fromtimestamp(float(doc.get("ts", 0))).strftime("%H:%M:%S.%f")[:-3]
    topic, kind, data = doc.get("topic", "?"), doc.get("type", "?"), doc.get("data") or {}
    head = f"{when} #{doc.get('seq', '?')} {topic}/{kind}"
    return f"{head}  {_summary(topic, kind, data)}".rstrip()


def _short(value: Any, n: int = 12) -> str:
    return str(value)[:n] if value else "-"


def _summary(topic: str, kind: str, d: dict[str, Any]) -> str:
    if topic == "contribution":
        text = f"{d.get('goal_id')}"
        if d.get("log_index") is not None:
            text += f" #{d['log_index']}"
        if d.get("score") is not None:
            text += f" score {d['score']:.6g}"
        if kind == "rejected":
            text += f" ({d.get('rejection_type') or 'rejected'}) {d.get('reason', '')}"
        return text
    if topic == "block":
        goals = ", ".join(
            f"{g} size {v.get('log_size')}" for g, v in (d.get("goals") or {}).items()
        )
        entries = d.get("entries")
        return f"height {d.get('height')} {_short(d.get('hash'))} {entries} entries; {goals}"
    if topic == "peer":
        text = f"{_short(d.get('node_id'))} {d.get('address') or ''}".rstrip()
        return f"{text} ({d['reason']})" if d.get("reason") else text
    if topic in ("sync", "tau") and "state" in d:
        return f"{d['state']} (was {d.get('previous') or '-'})" + (
            f" height {d['height']}/{d['network_height']}" if "network_height" in d else ""
        )
    if topic == "tau" and "goal_id" in d:
        text = f"{d['goal_id']} #{d.get('seq')} log size {d.get('log_size')}"
        return text + (f": {d['error']}" if d.get("error") else f" {_short(d.get('commit_hash'))}")
    return " ".join(f"{k}={v}" for k, v in d.items())
