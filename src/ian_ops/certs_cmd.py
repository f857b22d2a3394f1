"""`ian certs show` and `ian certs rotate`: the P2P TLS certificate, rotated with hot reload."""

from __future__ import annotations

from typing import Annotated

import typer

from ian_ops import cli

app = typer.Typer(help="Show and rotate the node's P2P TLS certificate.", no_args_is_help=True)


@app.command("show")
def show(data_dir: cli.DataDirOpt = None, json_out: cli.JsonOpt = False) -> None:
    """Subject, node id, SAN, fingerprint, validity and days left of the live certificate.

    Example: ian certs show --json
    """
    from ian.certs import cert_doc, load_certificate
    from ian.identity import load_identity
    from ian.storage.datadir import DataDir

    settings = cli.load_settings(data_dir)
    datadir = DataDir(settings.data_dir)
    identity = load_identity(datadir.identity_file)
    info = load_certificate(datadir.certs_dir, identity, check_validity=False)
    doc = {**cert_doc(info), "path": str(datadir.cert_file)}
    if json_out:
        cli.print_json(doc)
        return
    out = cli.stdout()
    for key in ("subject", "node_id", "san", "fingerprint_sha256", "not_before", "not_after"):
        out.print(f"{key + ':':<20}{doc[key]}", markup=False)
    days = doc["days_left"]
    note = (
        " (EXPIRED: run `ian certs rotate`)"
        if days < 0
        else f" (renewal due: fewer than {settings.cert_renew_days})"
        if days <= settings.cert_renew_days
        else ""
    )
    out.print(f"{'days left:':<20}{days:.1f}{note}", markup=False)


@app.command("rotate")
def rotate(
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    valid_days: Annotated[
        int | None,
        typer.Option("--valid-days", min=1, help="Validity of the new certificate (days)."),
    ] = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Issue a new TLS key pair and certificate for this node identity and swap it in.

    The old pair is kept in `certs-old/<UTC time>/`. When the node is running it is told to
    reload (online); otherwise it uses the new pair on its next start (offline).

    Example: ian certs rotate --valid-days 365
    """
    import contextlib

    from ian.certs import cert_doc
    from ian.errors import IanError
    from ian.identity import load_identity
    from ian.maintenance.cert_rotation import rotate_certificate
    from ian.storage.lock import holder_pid, maintenance_lock
    from ian_ops.target import locate

    target = locate(data_dir, node_url)
    settings, datadir = target.settings, target.datadir
    identity = load_identity(datadir.identity_file)
    days = valid_days if valid_days is not None else settings.cert_valid_days
    with maintenance_lock(datadir.root, exclusive=True), contextlib.ExitStack() as stack:
        # A node that started just now reads certs/ once we tell it to reload.
        online = target.lock_unless_running(stack)
        info = rotate_certificate(datadir, identity, days)
    old = sorted(p for p in datadir.certs_old_dir.iterdir() if p.is_dir())
    doc = {**cert_doc(info), "old_pair": str(old[-1]) if old else None}
    status = "offline: the node will use it on next start"
    if online:
        try:
            with target.client(admin=False) as client:
                reloaded = client.post_json("/api/v1/admin/certs/reload", {})
            if reloaded.get("fingerprint_sha256") != info.fingerprint_sha256:
                raise IanError("the node reloaded a different certificate than the one written")
            status = "online: node reloaded"
        except IanError as exc:
            if not target.node_running():
                status = "offline: the node stopped; it will use it on next start"
            else:
                pid = holder_pid(datadir.lock_file)
                doc.update(status="rotated, reload failed", reload_error=exc.message)
                if json_out:
                    cli.print_json(doc)
                cli.exit_with_error(
                    f"new certificate written, but the running node did not reload it: "
                    f"{exc.message}",
                    code=cli.exit_code_for(exc),
                    fix=f"send SIGHUP to the node (kill -HUP {pid or '<pid>'}) or restart it; "
                    "check --node-url",
                )
    doc["status"] = status
    if json_out:
        cli.print_json(doc)
        return
    out = cli.stdout()
    out.print(
        f"rotated: certificate {info.fingerprint_sha256[:16]}… valid until "
        f"{info.not_after.isoformat()}",
        markup=False,
    )
    if doc["old_pair"]:
        out.print(f"old pair kept in {doc['old_pair']}", markup=False, soft_wrap=True)
    out.print(status, markup=False)
