"""Where a state-changing command acts: **online** through the running node's admin API, or
**offline** directly on the data dir under ``node.lock``.

A node that runs holds ``node.lock``; then a command goes online (URL from ``--node-url``,
``IAN_NODE_URL`` or the configured API port on loopback; admin token from ``IAN_API_TOKEN`` or the
data dir's ``api_token`` file). Without a data dir here, ``--node-url`` alone means online.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ian_ops import cli

if TYPE_CHECKING:
    from ian.config import Settings
    from ian.storage.datadir import DataDir
    from ian_ops.client import NodeClient


@dataclass
class Target:
    """Where a command acts: ``online`` (``url``) or ``offline`` (``datadir``)."""

    settings: Settings
    datadir: DataDir
    url: str
    online: bool

    def announce(self, offline_on: Path | None = None) -> None:
        """Say on stderr which way the command went."""
        where = offline_on if offline_on is not None else self.datadir.root
        text = f"online via {self.url}" if self.online else f"offline on {where}"
        cli.stderr().print(text, markup=False, soft_wrap=True)

    def client(self, *, admin: bool) -> NodeClient:
        from ian.errors import DataDirError
        from ian.storage.datadir import read_api_token
        from ian_ops.client import NodeClient

        token = None
        if self.settings.api_token is not None:
            token = self.settings.api_token.get_secret_value()
        elif self.datadir.root.is_dir():
            token = read_api_token(self.datadir)
        if admin and token is None:
            raise DataDirError(
                f"no admin token for the node at {self.url}",
                fix=f"set IAN_API_TOKEN, or check {self.datadir.api_token_file}",
            )
        return NodeClient(self.url, token=token)


def resolve_target(data_dir: Path | None, node_url: str | None) -> Target:
    """Decide online/offline (see the module docstring); raises DataDirError without a dir."""
    from ian.errors import DataDirError
    from ian.storage.datadir import DataDir
    from ian.storage.lock import is_locked

    settings = cli.load_settings(data_dir)
    datadir = DataDir(settings.data_dir)
    url = cli.node_url(node_url, settings)
    if not datadir.root.is_dir():
        if node_url:
            return Target(settings, datadir, url, online=True)
        raise DataDirError(
            f"data dir {datadir.root} does not exist",
            fix="pass --data-dir (or IAN_DATA_DIR) of the node, or --node-url of a running node",
        )
    return Target(settings, datadir, url, online=is_locked(datadir.lock_file))


def admin_post(place: Target, path: str, body: dict[str, Any]) -> Any:
    """POST an admin call to the node. When the node was chosen because node.lock is held but
    nothing answers, the holder is not a serving node (or not at that URL): refuse as locked."""
    from ian.errors import NodeLockedError, NodeUnreachableError
    from ian.storage.lock import holder_pid

    try:
        with place.client(admin=True) as client:
            return client.post_json(path, body)
    except NodeUnreachableError as exc:
        if not place.datadir.root.is_dir():
            raise
        pid = holder_pid(place.datadir.lock_file)
        raise NodeLockedError(
            f"{place.datadir.lock_file} is held (pid {pid if pid else 'unknown'}) but no node "
            f"answers at {place.url}, so the change cannot be made online or offline",
            fix="pass --node-url of that node, or wait for the other command to finish",
        ) from exc
