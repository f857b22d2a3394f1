"""`ian node ...`: run, initialise and check the node on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.chain.genesis import Genesis
    from ian.ledger.consensus_verify import CertifiedReport
    from ian.storage.datadir import DataDir
    from ian.storage.store import Store

app = typer.Typer(help="Run, initialise and verify the node.", no_args_is_help=True)


@app.command("run")
def run(
    data_dir: cli.DataDirOpt = None,
    api_port: Annotated[int | None, typer.Option(help="HTTP API port [env IAN_API_PORT].")] = None,
    p2p_port: Annotated[int | None, typer.Option(help="P2P port [env IAN_P2P_PORT].")] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level [env IAN_LOG_LEVEL].")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text or json [env IAN_LOG_FORMAT].")
    ] = None,
) -> None:
    """Run the node in the foreground (the container entry point).

    Creates the data directory, identity and certificate on first start. SIGTERM or Ctrl-C
    shut down gracefully; SIGHUP reloads the certificate and log level.

    Example: IAN_DATA_DIR=/data ian node run
    """
    from functools import partial

    import anyio

    from ian.log_setup import configure_logging
    from ian.node import Node

    settings = cli.load_settings(
        data_dir, api_port=api_port, p2p_port=p2p_port, log_level=log_level, log_format=log_format
    )
    configure_logging(
        settings.log_level,
        settings.log_format,
        settings.log_file,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )
    node = Node.open(settings)
    anyio.run(partial(node.run, freeze_gc=True), backend_options={"use_uvloop": True})


@app.command("init")
def init(data_dir: cli.DataDirOpt = None, json_out: cli.JsonOpt = False) -> None:
    """Create the data directory, identity, certificate and API token (idempotent).

    Example: ian node init --data-dir /data
    """
    from ian.storage.datadir import init_data_dir
    from ian.storage.lock import NodeLock

    settings = cli.load_settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with NodeLock(settings.data_dir / "node.lock"):
        result = init_data_dir(settings.data_dir, cert_valid_days=settings.cert_valid_days)
    doc = {
        "data_dir": str(settings.data_dir),
        "node_id": result.identity.node_id,
        "public_key": result.identity.public_key.hex(),
        "authority_spec": f"{result.identity.node_id}:{result.identity.public_key.hex()}",
        "created": result.created,
        "cert_not_after": result.cert.not_after.isoformat(),
    }
    if json_out:
        cli.print_json(doc)
        return
    out = cli.stdout()
    if result.created:
        out.print(f"initialised {settings.data_dir} (created: {', '.join(result.created)})")
    else:
        out.print(f"{settings.data_dir} is already initialised; nothing changed")
    out.print(f"node id: {result.identity.node_id}")
    out.print(f"as an authority (ian network init -a): {doc['authority_spec']}", markup=False)


@app.command("verify")
def verify(data_dir: cli.DataDirOpt = None, json_out: cli.JsonOpt = False) -> None:
    """Recompute every root from the store and compare (the data corruption drill).

    Also checks every block's signature, and that the chain's authority (from the pinned
    genesis.json) signed it. With several authorities: the consensus log's hash links, every
    commit certificate (a majority of the authorities in force signed it), and that every
    block in the store is a certified one signed by an authority. Works while the node runs
    (read-only). Exit code 0 when everything matches, 1 otherwise.

    Example: ian node verify --data-dir /data
    """
    from ian.chain.genesis import goals_of, sole_authority
    from ian.ledger.recovery import verify_store
    from ian.storage.datadir import DataDir, read_genesis
    from ian.storage.store import Store

    settings = cli.load_settings(data_dir)
    dd = DataDir(settings.data_dir)
    if not dd.store_file.exists():
        cli.exit_with_error(
            f"no store at {dd.store_file}", code=cli.EXIT_DATA_DIR, fix="check --data-dir"
        )
    genesis = read_genesis(dd)
    specs = goals_of(genesis, settings.all_goals())
    signer = sole_authority(genesis)
    store = Store(dd.store_file, readonly=True)
    try:
        if json_out:
            report = verify_store(store, specs, sequencer=signer)
        else:
            from rich.progress import Progress

            with Progress(console=cli.stderr(), transient=True) as progress:
                task = progress.add_task("verifying blocks", total=None)
                report = verify_store(
                    store,
                    specs,
                    sequencer=signer,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
        certified = _verify_certificates(dd, genesis, store) if report.ok else None
    finally:
        store.close()
    if certified is not None and not certified.ok:
        report.ok = False
        report.problem = certified.problem
    if json_out:
        doc = report.to_doc()
        if certified is not None:
            doc["certificates"] = certified.to_doc()
        cli.print_json(doc)
    elif report.ok:
        cli.stdout().print(
            f"ok: {report.blocks} blocks and {report.contributions} contributions verified"
        )
        for gid, roots in sorted(report.roots.items()):
            cli.stdout().print(f"  {gid}: log size {roots['log_size']} root {roots['log_root']}")
        if certified is not None:
            cli.stdout().print(
                f"  certified: {certified.chain_blocks} blocks under {certified.certificates} "
                f"commit certificates (consensus height {certified.certified_height})"
            )
    elif certified is not None and not certified.ok:
        cli.stdout().print(f"NOT CERTIFIED: {certified.problem}")
    else:
        cli.stdout().print(f"MISMATCH at block {report.first_bad_height}: {report.problem}")
    if not report.ok:
        raise typer.Exit(cli.EXIT_FAILURE)


def _verify_certificates(
    dd: DataDir, genesis: Genesis | None, store: Store
) -> CertifiedReport | None:
    """The consensus-log half of verify (several authorities), or None on a one-authority
    chain."""
    from ian.ledger.consensus_verify import verify_certified_chain
    from ian.storage.consensus_log import ConsensusLog

    if genesis is None or len(genesis.authorities) == 1:
        return None
    if not dd.consensus_file.exists():
        cli.exit_with_error(
            f"no consensus log at {dd.consensus_file}: this chain has "
            f"{len(genesis.authorities)} authorities and every node keeps one",
            code=cli.EXIT_DATA_DIR,
            fix="check --data-dir; a node that lost it takes certified blocks again on start",
        )
    log_store = ConsensusLog(dd.consensus_file, readonly=True)
    try:
        hashes = [store.block_hash(h) or b"" for h in range(1, store.head()[0] + 1)]
        return verify_certified_chain(log_store, genesis, hashes)
    finally:
        log_store.close()


@app.command("resync")
def resync(
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    yes: cli.YesOpt = False,
    json_out: cli.JsonOpt = False,
) -> None:
    """Force a full resync from peers, keeping identity, certificates and peer scores.

    Online (the node runs): the node drops its chain and fetches it again right away.
    Offline: the store moves to `<data-dir>/resync-<time>/` and the next start resyncs.
    Refused on the sequencer, whose chain is the network's source.

    Example: ian node resync --data-dir /data --yes
    """
    from ian.maintenance.resync import set_store_aside
    from ian.storage.lock import NodeLock
    from ian_ops.target import admin_post, resolve_target

    target = resolve_target(data_dir, node_url)
    if not yes and not typer.confirm(
        "Drop this node's chain and fetch it again from its peers?", err=True
    ):
        raise typer.Exit(cli.EXIT_FAILURE)
    if target.online:
        doc = admin_post(target, "/api/v1/admin/resync", {})
        doc["mode"] = "online"
    else:
        from ian.errors import NodeRefusedError
        from ian.identity import load_identity
        from ian.storage.store import Store

        node_id = load_identity(target.datadir.identity_file).node_id
        if target.datadir.store_file.exists():
            store = Store(target.datadir.store_file, readonly=True)
            try:
                head = store.block_header(store.head()[0])
            finally:
                store.close()
            # Blocks this node signed itself: it is the sequencer and its chain is the source.
            if head is not None and head[0].sequencer == node_id:
                raise NodeRefusedError(
                    "this node signed its own blocks: it is the sequencer, and its chain is the "
                    "network's source that no peer can provide",
                    http_status=409,
                    fix="resync a follower; restore the sequencer with `ian restore`",
                )
        with NodeLock(target.datadir.lock_file):
            aside = set_store_aside(target.datadir)
        doc = {"mode": "offline", "store_moved_to": str(aside)}
    target.announce()
    if json_out:
        cli.print_json(doc)
    elif doc["mode"] == "online":
        cli.stdout().print(
            f"resyncing: dropped {doc['blocks_removed']} blocks; fetching from "
            f"{doc['peers']} peers",
            markup=False,
        )
    else:
        cli.stdout().print(
            f"old store kept in {doc['store_moved_to']}; the node resyncs from its peers on its "
            "next start",
            markup=False,
            soft_wrap=True,
        )


@app.command("log-level")
def log_level(
    level: Annotated[str, typer.Argument(help="DEBUG, INFO, WARNING, ERROR or CRITICAL.")],
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
) -> None:
    """Change the running node's log level now, without a restart (until its next start;
    IAN_LOG_LEVEL or log_level in config.toml make it permanent).

    Example: ian node log-level DEBUG
    """
    from ian.errors import InputError
    from ian_ops.target import admin_post, resolve_target

    wanted = level.upper()
    if wanted not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise InputError(f"unknown log level {level!r}", field="level")
    target = resolve_target(data_dir, node_url)
    if not target.online:
        from ian.errors import NodeUnreachableError

        raise NodeUnreachableError(
            f"no node holds {target.datadir.lock_file}: the log level is set at start",
            fix="set IAN_LOG_LEVEL (or log_level in config.toml) and start the node",
        )
    doc = admin_post(target, "/api/v1/admin/log-level", {"level": wanted})
    target.announce()
    cli.stdout().print(f"log level is now {doc['level']}", markup=False)


@app.command("limits")
def limits(
    client_rate: Annotated[
        float | None, typer.Option("--client-rate", help="Requests per second per client (> 0).")
    ] = None,
    client_burst: Annotated[
        float | None, typer.Option("--client-burst", min=1.0, help="Burst per client address.")
    ] = None,
    contributor_rate: Annotated[
        float | None,
        typer.Option("--contributor-rate", help="Contributions per second per contributor (> 0)."),
    ] = None,
    contributor_burst: Annotated[
        float | None, typer.Option("--contributor-burst", min=1.0, help="Burst per contributor.")
    ] = None,
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the running node's HTTP limits, or change them until its next restart (client_rate,
    client_burst, contributor_rate, contributor_burst in config.toml make a change permanent).

    Example: ian node limits --client-rate 5 --client-burst 10
    """
    from ian.errors import InputError, NodeUnreachableError
    from ian_ops.target import admin_post, resolve_target

    for name, value in (("--client-rate", client_rate), ("--contributor-rate", contributor_rate)):
        if value is not None and not value > 0:
            raise InputError(f"{name} must be > 0, not {value}", field=name)
    body = {
        k: v
        for k, v in {
            "client_rate": client_rate,
            "client_burst": client_burst,
            "contributor_rate": contributor_rate,
            "contributor_burst": contributor_burst,
        }.items()
        if v is not None
    }
    target = resolve_target(data_dir, node_url)
    if not target.online:
        raise NodeUnreachableError(
            f"no node holds {target.datadir.lock_file}: HTTP limits are set at start",
            fix="set them in config.toml (or IAN_CLIENT_RATE, ...) and start the node",
        )
    if body:
        doc = admin_post(target, "/api/v1/admin/http/limits", body)
    else:
        with target.client(admin=False) as client:
            doc = {"limits": client.get_json("/api/v1/http/limits")}
    target.announce()
    if json_out:
        cli.print_json(doc)
        return
    shown = ", ".join(f"{k}={v:g}" for k, v in doc["limits"].items())
    cli.stdout().print(f"{'applied; now ' if body else ''}{shown}", markup=False)
