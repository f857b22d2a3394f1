"""`ian tau status / reset / serve-mock`: watch the Tau bridge, reset its breaker, run a mock Tau.

``status`` and ``reset`` talk to the running node's API. The breaker lives only in the running
node (a node that starts has it CLOSED), so ``reset`` is online-only by nature.
"""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any

import typer

from ian_ops import cli

app = typer.Typer(
    help="The Tau Net bridge: commit status, circuit breaker reset, a mock Tau node.",
    no_args_is_help=True,
)


@app.command("status")
def status(
    node_url: cli.NodeUrlOpt = None, data_dir: cli.DataDirOpt = None, json_out: cli.JsonOpt = False
) -> None:
    """Show the Tau bridge: endpoint, circuit breaker, last commit, pending commits, errors.

    Example: ian tau status --node-url http://127.0.0.1:8000 --json
    """
    from ian_ops.target import read_client, read_node_url

    with read_client(read_node_url(node_url, data_dir)) as client:
        doc = client.get_json("/api/v1/tau")
    if json_out:
        cli.print_json(doc)
        return
    _print_status(doc)


@app.command("reset")
def reset(node_url: cli.NodeUrlOpt = None, data_dir: cli.DataDirOpt = None) -> None:
    """Close the running node's Tau circuit breaker now (admin token required).

    The token comes from IAN_API_TOKEN, else `<data-dir>/api_token`.

    Example: ian tau reset --data-dir /data
    """
    from ian_ops.target import locate

    # The breaker lives only in a running node: always online, whoever holds node.lock.
    target = locate(data_dir, node_url)
    if not target.token():
        cli.exit_with_error(
            f"no admin token: IAN_API_TOKEN is not set and {target.settings.data_dir}/api_token "
            "is missing or empty",
            code=cli.EXIT_CONFIG,
            fix="set IAN_API_TOKEN, or pass the node's --data-dir",
        )
    with target.client(admin=True) as client:
        doc = client.post_json("/api/v1/admin/tau/reset", {})
    cli.stdout().print(
        f"circuit breaker {doc['previous_state']} -> {doc['breaker_state']} "
        f"(online, via {target.url}); pending commits are retried now",
        markup=False,
        soft_wrap=True,
    )


@app.command("serve-mock")
def serve_mock(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0 = any free).")
    ] = 12345,
    mode: Annotated[
        str, typer.Option("--mode", help="Start mode: ok, fail, hang, close or long.")
    ] = "ok",
) -> None:
    """Run a mock Tau node in the foreground (Ctrl-C stops it).

    It answers each sendtx line with SUCCESS and the line's sha256. A line
    "mode fail|ok|hang|close|long" sent to the same port changes how it answers.

    Example: ian tau serve-mock --host 0.0.0.0 --port 12345
    """
    import sys

    import anyio

    from ian.tau.mock_server import MODES, MockTauServer

    if mode not in MODES:
        cli.exit_with_error(
            f"unknown mode {mode!r}", code=cli.EXIT_USAGE, fix=f"use one of {', '.join(MODES)}"
        )

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    server = MockTauServer(mode, on_event=say)  # says where it listens, then every request
    try:
        anyio.run(server.serve, host, port)
    except OSError as exc:
        cli.exit_with_error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            fix="pick another --port, or stop what uses it",
        )
    except KeyboardInterrupt:
        say("stopped")


def _print_status(doc: dict[str, Any]) -> None:
    out = cli.stdout()
    if not doc.get("enabled"):
        out.print("Tau bridge: [bold]off[/] (tau_endpoint is not set)")
        out.print("  fix: set IAN_TAU_ENDPOINT=tcp://host:port and restart the node")
        return
    state = doc["breaker_state"]
    colour = {"CLOSED": "green", "OPEN": "red", "HALF_OPEN": "yellow"}.get(state, "white")
    role = "" if doc.get("committer", True) else "  (not the committer: idle)"
    out.print(f"Tau bridge: {doc['endpoint']}  breaker [{colour}]{state}[/]{role}")
    last = doc.get("last_commit")
    if last:
        out.print(
            f"last commit: {last['goal_id']} #{last['seq']} log size {last['log_size']} "
            f"hash {last['commit_hash'][:16]}…  at {_when(last.get('at'))}",
            soft_wrap=True,
        )
    else:
        out.print("last commit: none yet")
    out.print(
        f"pending {doc['pending']}  commits {doc['commits_total']}  "
        f"failures {doc['failures_total']} (since the node started)"
    )
    if doc.get("last_error"):
        out.print(f"last error: {doc['last_error']}", markup=False, soft_wrap=True)
    if state == "OPEN":
        out.print(
            f"the breaker probes Tau again in {doc.get('retry_in_s', 0):.0f}s; "
            "`ian tau reset` closes it now"
        )


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
