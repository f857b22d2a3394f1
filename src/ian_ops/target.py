"""Where a command acts, and with which credentials: the one place that decides.

* **URL** of the node's HTTP API: ``--node-url``, else ``IAN_NODE_URL`` (both arrive as the
  ``explicit`` option), else the configured API port (``IAN_API_PORT`` / ``config.toml``) on
  loopback. See :func:`node_url` and, for read commands that must work with a broken config,
  :func:`read_node_url` (which reads the port without pydantic when it can:
  :mod:`ian_ops.light_config`).
* **Admin token**: ``IAN_API_TOKEN`` (or ``api_token`` in ``config.toml``), else the data dir's
  ``api_token`` file when the data dir exists here; see :func:`find_token`.
* **Online or offline** (state-changing commands): a node that runs holds ``node.lock``; then
  the command goes online through the admin API, otherwise offline on the data dir under the
  lock. Without a data dir here, ``--node-url`` alone means online. See :func:`resolve_target`
  (and :func:`local_target` for commands that always need the data dir here).

Every :class:`~ian_ops.client.NodeClient` a command uses is built here (:meth:`Target.client`,
:func:`read_client`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ian_ops import cli

if TYPE_CHECKING:
    from ian.config import Settings
    from ian.storage.datadir import DataDir
    from ian_ops.client import NodeClient

#: seconds a request may take, unless a command needs longer (or shorter)
DEFAULT_TIMEOUT_S = 5.0


def node_url(explicit: str | None, settings: Settings | None = None) -> str:
    """The API URL to talk to: ``explicit`` (--node-url/IAN_NODE_URL, trailing ``/`` dropped),
    else the configured API port on loopback, else :data:`ian_ops.cli.DEFAULT_NODE_URL`. Raises
    :class:`~ian.errors.InputError` when ``explicit`` is not an http(s) URL."""
    if explicit:
        if not explicit.startswith(("http://", "https://")):
            from ian.errors import InputError

            raise InputError(
                f"--node-url must be an http:// or https:// URL, not {explicit!r}",
                field="--node-url",
                fix="e.g. --node-url http://127.0.0.1:8000",
            )
        return explicit.rstrip("/")
    if settings is not None and settings.api_port:
        return f"http://127.0.0.1:{settings.api_port}"
    return cli.DEFAULT_NODE_URL


def read_node_url(explicit: str | None, data_dir: Path | None = None) -> str:
    """:func:`node_url` for read commands: the configured API port when the config can be
    read, else the default; a broken config does not stop a read. Found without pydantic when
    :func:`ian_ops.light_config.read_api_url` understands the configuration (the same answer),
    else by :func:`configured_url`."""
    if explicit:
        return node_url(explicit)
    from ian_ops.light_config import read_api_url

    return read_api_url(data_dir) or configured_url(data_dir)


def configured_url(data_dir: Path | None = None) -> str:
    """The configured API port on loopback, from the whole configuration
    (:func:`ian_ops.cli.load_settings`); the default URL when it is invalid."""
    from ian.errors import IanError

    try:
        return node_url(None, cli.load_settings(data_dir))
    except IanError:
        return node_url(None)


def find_token(settings: Settings, datadir: DataDir) -> str | None:
    """The admin token: ``settings.api_token`` (``IAN_API_TOKEN`` or config.toml) wins, else
    the data dir's ``api_token`` file when the data dir exists; None when neither has one.
    Raises :class:`~ian.errors.DataDirError` when the file exists but cannot be read."""
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    from ian.storage.datadir import read_api_token

    return read_api_token(datadir) if datadir.root.is_dir() else None


def read_client(url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> NodeClient:
    """A client without credentials for the public read API at ``url``."""
    from ian_ops.client import NodeClient

    return NodeClient(url, timeout=timeout)


@dataclass
class Target:
    """Where a command acts: ``online`` (the node at ``url``) or offline (``datadir``)."""

    settings: Settings
    datadir: DataDir
    url: str
    online: bool

    def announce(self, offline_on: Path | None = None) -> None:
        """Say on stderr which way the command went."""
        where = offline_on if offline_on is not None else self.datadir.root
        text = f"online via {self.url}" if self.online else f"offline on {where}"
        cli.stderr().print(text, markup=False, soft_wrap=True)

    def node_running(self) -> bool:
        """Whether a node holds ``node.lock`` right now (looked at again: :attr:`online` is
        what was decided when the target was resolved)."""
        from ian.storage.lock import is_locked

        return self.datadir.root.is_dir() and is_locked(self.datadir.lock_file)

    def lock_unless_running(self, stack: contextlib.ExitStack) -> bool:
        """Decide again, right before acting: take ``node.lock`` (held until ``stack`` closes)
        and go offline, or go online when a node holds it, including one that took it just
        now. Sets and returns :attr:`online`."""
        from ian.errors import NodeLockedError
        from ian.storage.lock import NodeLock

        self.online = self.node_running()
        if not self.online:
            try:
                stack.enter_context(NodeLock(self.datadir.lock_file))
            except NodeLockedError:
                self.online = True
        return self.online

    def token(self) -> str | None:
        """The admin token (see :func:`find_token`), None when there is none."""
        return find_token(self.settings, self.datadir)

    def client(self, *, admin: bool, timeout: float = DEFAULT_TIMEOUT_S) -> NodeClient:
        """A client for the node at :attr:`url` carrying the admin token when there is one.
        ``admin``: the calls need it, so a missing token raises
        :class:`~ian.errors.DataDirError` here instead of a refusal from the node."""
        from ian.errors import DataDirError
        from ian_ops.client import NodeClient

        token = self.token()
        if admin and token is None:
            raise DataDirError(
                f"no admin token for the node at {self.url}",
                fix=f"set IAN_API_TOKEN, or check {self.datadir.api_token_file}",
            )
        return NodeClient(self.url, token=token, timeout=timeout)


def locate(data_dir: Path | None, explicit_url: str | None) -> Target:
    """The settings, data dir and URL, with ``online`` true when a node holds ``node.lock``
    here; no other checks (the caller decides what a missing data dir means)."""
    from ian.storage.datadir import DataDir

    settings = cli.load_settings(data_dir)
    target = Target(settings, DataDir(settings.data_dir), node_url(explicit_url, settings), False)
    target.online = target.node_running()
    return target


def resolve_target(data_dir: Path | None, explicit_url: str | None) -> Target:
    """Online when a node holds the data dir's ``node.lock`` or when there is no data dir here
    but ``explicit_url`` names a node; offline otherwise. Raises
    :class:`~ian.errors.DataDirError` without a data dir and without ``explicit_url``."""
    from ian.errors import DataDirError

    target = locate(data_dir, explicit_url)
    if not target.datadir.root.is_dir():
        if explicit_url:
            target.online = True
            return target
        raise DataDirError(
            f"data dir {target.datadir.root} does not exist",
            fix="pass --data-dir (or IAN_DATA_DIR) of the node, or --node-url of a running node",
        )
    return target


def local_target(data_dir: Path | None, explicit_url: str | None) -> Target:
    """:func:`locate` for commands that work on the data dir here whether or not a node runs
    (``ian prune``): raises :class:`~ian.errors.DataDirError` when it does not exist."""
    from ian.errors import DataDirError

    target = locate(data_dir, explicit_url)
    if not target.datadir.root.is_dir():
        raise DataDirError(
            f"data dir {target.datadir.root} does not exist",
            fix="check --data-dir / IAN_DATA_DIR",
        )
    return target


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
