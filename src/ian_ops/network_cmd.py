"""`ian network init/show`: write a chain's genesis document; show one with its chain id.
`ian network authorities add/remove`: change the authority set of a running network."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.chain.genesis import Genesis

app = typer.Typer(
    help="A chain's genesis: its authorities, goals and chain id.",
    no_args_is_help=True,
)


def _identity_of(path: Path) -> tuple[str, bytes]:
    from ian.errors import GenesisError
    from ian.identity import load_identity

    if not path.is_file():
        raise GenesisError(
            f"{path.parent} has no identity.json",
            fix=f"start that node once (ian node run --data-dir {path.parent}), or give the "
            "authority as NODE_ID:PUBLIC_KEY_HEX",
        )
    identity = load_identity(path)
    return identity.node_id, identity.public_key


@app.command("init")
def init(
    authority: Annotated[
        list[str],
        typer.Option(
            "--authority",
            "-a",
            help="An authority: a data dir holding identity.json, or NODE_ID:PUBLIC_KEY_HEX "
            "(repeat; 1, 3, 5 or 7 of them).",
            show_default=False,
        ),
    ],
    network: Annotated[
        str | None,
        typer.Option(
            "--network",
            help="Network name [default: the configured network_id].",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Where to write ('-' = stdout)."),
    ] = Path("genesis.json"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    data_dir: cli.DataDirOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Write a genesis document naming the chain's authorities and goals (the goals of the
    effective configuration: built-in goals plus [[goals]] tables).

    Give the file to every node as IAN_GENESIS, or pin the printed chain id with IAN_CHAIN_ID.

    Example: ian network init -a /srv/ian-1 -a /srv/ian-2 -a /srv/ian-3 --out genesis.json
    """
    from ian.atomic import atomic_write_bytes
    from ian.chain.genesis import Genesis, parse_authority_spec
    from ian.errors import GenesisError

    settings = cli.load_settings(data_dir)
    authorities = [parse_authority_spec(spec, _identity_of) for spec in authority]
    doc = {
        "network": network if network is not None else settings.network_id,
        "created_at": datetime.now(UTC).isoformat(),
        "goals": [g.model_dump(mode="json") for g in settings.all_goals()],
        "authorities": [a.model_dump() for a in authorities],
    }
    genesis = Genesis.from_bytes(json.dumps(doc).encode(), source="the genesis")
    text = genesis.to_json()
    if str(out) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if (out.exists() or out.is_symlink()) and not force:
        raise GenesisError(f"{out} already exists", fix="pass --force to overwrite it")
    atomic_write_bytes(out, text.encode(), mode=0o644)
    _report(genesis, out, json_out=json_out, written=True)


@app.command("show")
def show(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="A genesis file [default: the data dir's genesis.json].",
            show_default=False,
        ),
    ] = None,
    data_dir: cli.DataDirOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Print a genesis document with its chain id.

    Example: ian network show --data-dir /data
    """
    from ian.chain.genesis import Genesis
    from ian.errors import GenesisError
    from ian.storage.datadir import DataDir

    if file is None:
        file = DataDir(cli.load_settings(data_dir).data_dir).genesis_file
        if not file.exists():
            raise GenesisError(
                f"{file} does not exist: this node has not pinned a genesis yet",
                fix="a node pins one on first start (IAN_GENESIS, or its own when it has no "
                "seeds); or pass --file FILE",
            )
    _report(Genesis.read(file), file, json_out=json_out, written=False)


def _report(genesis: Genesis, path: Path, *, json_out: bool, written: bool) -> None:
    if json_out:
        cli.print_json(
            {
                "chain_id": genesis.chain_id(),
                "file": str(path),
                "genesis": genesis.model_dump(mode="json"),
            }
        )
        return
    out = cli.stdout()
    if written:
        out.print(f"wrote {path}", markup=False, soft_wrap=True)
    out.print(f"chain id:    {genesis.chain_id()}", markup=False)
    out.print(f"network:     {genesis.network}", markup=False)
    out.print(f"created at:  {genesis.created_at.isoformat()}", markup=False)
    out.print(f"goals:       {', '.join(g.id for g in genesis.goals)}", markup=False)
    out.print(f"authorities: {len(genesis.authorities)}", markup=False)
    for a in genesis.authorities:
        out.print(f"  {a.node_id}  key {a.public_key}", markup=False, soft_wrap=True)


authorities_app = typer.Typer(
    help="Add or remove one authority of a running network (on its leader).",
    no_args_is_help=True,
)
app.add_typer(authorities_app, name="authorities")


@authorities_app.command("add")
def authorities_add(
    authority: Annotated[
        str,
        typer.Argument(
            help="The new authority: its data dir (holding identity.json) or "
            "NODE_ID:PUBLIC_KEY_HEX.",
            show_default=False,
        ),
    ],
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Make one more node an authority: a block of the consensus log, answered once a majority
    of the authorities stored it. Run it against the leader (`ian status` names it); start the
    new node first (with the network's genesis) so it has caught up as a follower.

    Replacing a lost authority: add the new one, then remove the old one.

    Admin calls answer on loopback only (unless admin_allow_remote): run it on the leader's
    machine or container, e.g. docker exec / kubectl exec.

    Example: ian network authorities add 3f1c…:9a2b… --data-dir /data
    """
    from ian.chain.genesis import parse_authority_spec

    new = parse_authority_spec(authority, _identity_of)
    _change(data_dir, node_url, json_out, "add", new.node_id, new.public_key)


@authorities_app.command("remove")
def authorities_remove(
    node_id: Annotated[
        str, typer.Argument(help="The node id of the authority to remove.", show_default=False)
    ],
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Remove one authority (it stays a follower until stopped). Run it against the leader; a
    leader cannot remove itself (stop it: another is elected, then remove it there).

    Example: ian network authorities remove 3f1c… --data-dir /data
    """
    from ian.errors import InputError

    wanted = node_id.strip().lower()
    if len(wanted) != 40 or any(c not in "0123456789abcdef" for c in wanted):
        raise InputError(f"a node id is 40 hex digits, got {node_id!r}")
    _change(data_dir, node_url, json_out, "remove", wanted, None)


def _change(
    data_dir: Path | None,
    node_url: str | None,
    json_out: bool,
    op: str,
    node_id: str,
    public_key: str | None,
) -> None:
    from ian_ops.target import admin_post, resolve_target

    target = resolve_target(data_dir, node_url)
    if not target.online:
        from ian.errors import NodeUnreachableError

        raise NodeUnreachableError(
            "no node is running on this data dir: authority changes are made by the running leader",
            fix="start the node, or pass --node-url of the leader",
        )
    body: dict[str, str] = {"op": op, "node_id": node_id}
    if public_key is not None:
        body["public_key"] = public_key
    doc = admin_post(target, "/api/v1/admin/authorities", body)
    if json_out:
        cli.print_json(doc)
        return
    verb = "added" if op == "add" else "removed"
    out = cli.stdout()
    out.print(f"{verb} authority {node_id} at consensus height {doc['height']}", markup=False)
    out.print(f"authorities now ({len(doc['authorities'])}):", markup=False)
    for a in doc["authorities"]:
        out.print(f"  {a}", markup=False)
