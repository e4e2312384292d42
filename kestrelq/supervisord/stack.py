"""The one description of the stack (`conf/stack.toml`): its model, loading and overrides.

Theory of operation: `load_stack()` reads the TOML description into a frozen `Stack`;
`Overrides` (command-line options and environment variables) replace single fields without
editing the file, so an image can render the same description with its own worker count, paths
and log mode at container start. `programs.py` turns a `Stack` into supervisord programs,
`render.py` into file texts, and `files.py` writes them or diffs them against disk.

Every default is written once, as a field default of `Stack` or `QueueSpec`; the TOML keys map
onto those fields (`SECTIONS`), and a key's type is its default's. Queue names follow the
queue server's own rule (`kestrelq.queue.names`), fanout children (`parent+child`) included.

Paths: a relative path in the description is relative to the output directory (`conf/`) and is
rendered as `%(here)s/...`, which supervisord expands to the directory of the file that holds
it (`conf/` for supervisord.conf, `conf/supervisord.d/` for included files). So the committed
files work wherever the checkout lives, and a copy under /etc works with absolute paths.

Two modes:
- `host`: supervisord daemonizes, every program logs to its own rotated file in `log_dir`.
- `container`: supervisord stays in the foreground (PID 1), it and every program log to
  /dev/stdout (maxbytes=0: a stream cannot be rotated), and the FATAL listener stops
  supervisord so that the container exits and its restart policy takes over.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from kestrelq.errors import ConfigError, InvalidQueueName
from kestrelq.queue import names
from kestrelq.queue.config import QUEUE_KEYS as SERVER_QUEUE_KEYS
from kestrelq.servers import parse_servers

Mode = Literal["host", "container"]
Only = Literal["all", "queue", "workers"]
Setting = tuple[str, str | int | bool]

# The queue server's own per-queue settings, from the server itself so the two cannot drift.
QUEUE_KEYS = tuple(sorted(SERVER_QUEUE_KEYS))


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One queue: its server settings and how many consumers supervisord runs for it."""

    name: str
    workers: int = 0
    stopwaitsecs: int = 30
    wait_ms: int = 1000
    command: str = ""
    settings: tuple[Setting, ...] = ()


@dataclass(frozen=True, slots=True)
class Stack:
    """Everything `kestrelq conf` needs; field names follow the TOML keys (see SECTIONS)."""

    source: str = "conf/stack.toml"
    python: str = "python3"
    user: str = ""
    app_dir: str = "../app"
    run_dir: str = "../var/host/run"
    log_dir: str = "../var/host/log"
    data_dir: str = "../var/host/queue"
    listen_host: str = "127.0.0.1"
    connect_host: str = "127.0.0.1"
    # Several queue servers for the workers ("q1:22133,q2:22133"); when set, the workers get
    # `--servers` with it instead of --host connect_host --port port.
    connect_servers: str = ""
    port: int = 22133
    fsync: str | int = "always"
    max_open_reads: int = 1
    queue_stopwaitsecs: int = 30
    http_host: str = "127.0.0.1"
    http_port: int = 9001
    http_username: str = "kestrelq"
    http_password_env: str = "KESTRELQ_SUPERVISOR_PASSWORD"
    queue_defaults: tuple[Setting, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    mode: Mode = "host"
    only: Only = "all"
    # How to render the files again, said in their headers and in the drift message: empty
    # for a checkout (`make conf`); `kestrelq install` and `kestrelq conf` outside a checkout
    # set the command that works where the files are.
    rerender: str = ""
    log_maxbytes: str = "50MB"
    log_backups: int = 10
    # [security]: the queue's login and TLS options and the workers' client settings; off
    # (empty) unless set. Paths are relative to the description, as the [paths] ones.
    auth_file: str = ""
    admin_users: str = ""
    tls_port: int = 0
    plain: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: str = "none"
    client_user: str = ""
    client_password_file: str = ""
    client_tls_ca: str = ""
    client_tls_cert: str = ""
    client_tls_key: str = ""
    # [worker_metrics]: the pool's /metrics (`kestrelq worker-metrics`), beside the workers.
    worker_metrics_port: int = 9134
    worker_metrics_host: str = "127.0.0.1"


PATH_KEYS = ("app_dir", "run_dir", "log_dir", "data_dir")
SECURITY_KEYS = (
    "auth_file",
    "admin_users",
    "tls_port",
    "plain",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_verify",
    "client_user",
    "client_password_file",
    "client_tls_ca",
    "client_tls_cert",
    "client_tls_key",
)
# The [security] keys that name files (rendered as %(here)s paths).
SECURITY_PATHS = (
    "auth_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "client_password_file",
    "client_tls_ca",
    "client_tls_cert",
    "client_tls_key",
)

# Where each key of the description's plain sections goes: {section: {key: Stack field}}.
SECTIONS: Mapping[str, Mapping[str, str]] = {
    "paths": {key: key for key in PATH_KEYS},
    "supervisord": {
        key: key
        for key in (
            "python",
            "user",
            "http_host",
            "http_port",
            "http_username",
            "http_password_env",
            "log_maxbytes",
            "log_backups",
        )
    },
    "server": {
        "listen_host": "listen_host",
        "connect_host": "connect_host",
        "connect_servers": "connect_servers",
        "port": "port",
        "fsync": "fsync",
        "max_open_reads": "max_open_reads",
        # The queue program's stopwaitsecs; queues have their own (their workers').
        "stopwaitsecs": "queue_stopwaitsecs",
    },
    "security": {key: key for key in SECURITY_KEYS},
    "worker_metrics": {"port": "worker_metrics_port", "host": "worker_metrics_host"},
}

_STACK_DEFAULTS: Mapping[str, Any] = {f.name: f.default for f in fields(Stack)}
_QUEUE_DEFAULTS: Mapping[str, Any] = {f.name: f.default for f in fields(QueueSpec)}
# Keys of a [queues.NAME] table that describe its consumers; every other key goes to the queue
# server's config for that queue unchanged.
WORKER_KEYS = tuple(k for k in _QUEUE_DEFAULTS if k not in ("name", "settings"))


@dataclass(frozen=True, slots=True)
class Overrides:
    """Single fields replaced at render time (None = keep the description's value)."""

    workers: int | None = None
    mode: Mode | None = None
    only: Only | None = None
    paths: Mapping[str, str] = field(default_factory=dict)
    listen_host: str | None = None
    connect_host: str | None = None
    connect_servers: str | None = None
    port: int | None = None
    http_host: str | None = None
    http_port: int | None = None
    python: str | None = None
    user: str | None = None
    worker_metrics_port: int | None = None
    worker_metrics_host: str | None = None


class StackError(ValueError):
    """The stack description is invalid; the message names the key."""


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StackError(f"[{key}] must be a table")
    return value


def _known(table: Mapping[str, Any], where: str, keys: Any) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise StackError(f"[{where}]: unknown keys {', '.join(unknown)}")


def _typed(table: Mapping[str, Any], where: str, key: str, default: Any) -> Any:
    """table[key] (or the default), of the default's type."""
    value = table.get(key, default)
    kind = type(default)
    # bool is an int subclass: refuse `workers = true` rather than run one worker.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StackError(f"{where}.{key} must be {kind.__name__}, not {value!r}")
    return value


def _queue_spec(name: str, table: Mapping[str, Any]) -> QueueSpec:
    where = f"queues.{name}"
    try:
        names.validate(name)
    except InvalidQueueName as exc:
        raise StackError(
            f"[{where}]: {exc}: queue names are letters, digits, '_' and '-', with one '+' "
            "between a fanout parent and child (parent+child)"
        ) from None
    _known(table, where, (*WORKER_KEYS, *QUEUE_KEYS))
    consumers = {k: _typed(table, where, k, _QUEUE_DEFAULTS[k]) for k in WORKER_KEYS}
    if consumers["workers"] < 0:
        raise StackError(f"{where}.workers may not be negative")
    settings = tuple(sorted((k, v) for k, v in table.items() if k in QUEUE_KEYS))
    return QueueSpec(name=name, settings=settings, **consumers)


def parse_stack(data: Mapping[str, Any], source: str) -> Stack:
    """Build a `Stack` from parsed TOML, refusing unknown sections, keys and wrong types."""
    unknown = sorted(set(data) - {*SECTIONS, "queue_defaults", "queues"})
    if unknown:
        raise StackError(f"unknown sections {', '.join(unknown)} in {source}")
    values: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        table = _table(data, section)
        _known(table, section, keys)
        for key, name in keys.items():
            if name == "fsync":
                continue
            values[name] = _typed(table, section, key, _STACK_DEFAULTS[name])
    if values["tls_verify"] not in ("none", "optional", "required"):
        raise StackError(f"security.tls_verify must be none, optional or required, not "
                         f"{values['tls_verify']!r}")  # fmt: skip
    if values["connect_servers"]:
        server_list(values["connect_servers"])
    if not values["plain"] and not values["tls_port"]:
        raise StackError("security.plain = false needs a security.tls_port")
    fsync = _table(data, "server").get("fsync", _STACK_DEFAULTS["fsync"])
    if not isinstance(fsync, str | int) or isinstance(fsync, bool):
        raise StackError(f"server.fsync must be always, never or milliseconds, not {fsync!r}")
    defaults = _table(data, "queue_defaults")
    _known(defaults, "queue_defaults", QUEUE_KEYS)
    queues = tuple(_queue_spec(name, table) for name, table in _table(data, "queues").items())
    return Stack(
        source=source,
        fsync=fsync,
        queue_defaults=tuple(sorted(defaults.items())),
        queues=queues,
        **values,
    )


def load_stack(path: Path, source: str | None = None) -> Stack:
    """Read and check a stack description file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise StackError(f"cannot read the stack description {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise StackError(f"{path}: {exc}") from exc
    return parse_stack(data, source or path.name)


def apply_overrides(stack: Stack, o: Overrides) -> Stack:
    """A copy of `stack` with every set override applied."""
    changes: dict[str, Any] = {}
    for f in fields(Overrides):
        value = getattr(o, f.name)
        if f.name not in ("workers", "paths") and value is not None:
            changes[f.name] = value
    for key, value in o.paths.items():
        if key not in PATH_KEYS:
            raise StackError(f"unknown path {key!r}")
        changes[key] = value
    if o.worker_metrics_port is not None and not 0 <= o.worker_metrics_port <= 65535:
        raise StackError(f"worker metrics port {o.worker_metrics_port} is not 0 to 65535")
    if o.workers is not None:
        if o.workers < 0:
            raise StackError("the number of workers may not be negative")
        # Every queue that has consumers gets the new count; a queue without consumers (a
        # dead-letter queue, say) keeps none, since nobody should drain it automatically.
        changes["queues"] = tuple(
            replace(q, workers=o.workers) if q.workers > 0 else q for q in stack.queues
        )
    if changes.get("connect_servers"):
        server_list(changes["connect_servers"])
    return replace(stack, **changes)


def server_list(text: str) -> str:
    """The workers' server list, checked by the clients' own rule; StackError if bad."""
    try:
        return ",".join(str(entry) for entry in parse_servers(text))
    except ConfigError as exc:
        raise StackError(f"server.connect_servers: {exc}") from None


def here_path(path: str, depth: int) -> str:
    """A description path as supervisord should see it from a file `depth` levels below conf/.

    Absolute paths stay as they are; relative ones hang off `%(here)s`.
    """
    if os.path.isabs(path):
        return os.path.normpath(path)
    # normpath on the relative part only: it would fold "%(here)s/.." away as a directory.
    rel = os.path.normpath(os.path.join(*([".."] * depth), path))
    return "%(here)s" if rel == "." else f"%(here)s/{rel}"
