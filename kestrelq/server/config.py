"""Server configuration: defaults < config file < environment < command line.

The config file is TOML:

    [server]
    host = "127.0.0.1"
    port = 22133
    data_dir = "./var/queue"
    fsync = "always"            # "always" | "never" | milliseconds
    sync_reads = false          # always: reads' replies wait for their fsync too (per queue too)
    max_open_reads = 1
    max_connections = 1024
    max_queues = 10000          # refuse creating more queues (0 = no limit)
    max_line_bytes = 2048
    max_item_bytes = 67108864
    max_pending_bytes = 268435456   # data blocks still arriving, all connections together
    read_timeout_s = 60.0       # a command must arrive whole this long after its first byte
    idle_timeout_s = 0.0        # close connections idle between commands; 0 = never
    tcp_keepalive_s = 60.0      # probe a silent peer after this long; 0 = the kernel's default
    disk_reserve_bytes = 8388608
    batch_writes = true         # one journal write per queue per batch of commands
    plain = true                # the plain listener on `port` (false: TLS only)
    auth_file = ""              # user:password lines; set: clients must log in (docs/security.md)
    admin_users = "ops,deploy"  # may flush, delete, reload (a TOML list works too)
    enable_shutdown = false     # obey the `shutdown` command
    tls_port = 0                # 0: no TLS listener
    tls_cert = ""               # the server's certificate (PEM), tls_key its key
    tls_ca = ""                 # CA that client certificates must chain to
    tls_verify = "none"         # none | optional | required (mutual TLS)
    metrics_port = 0            # Prometheus /metrics on this port; 0: off (docs/metrics.md)
    metrics_host = "127.0.0.1"  # the metrics port's address
    metrics_token_file = ""     # set: scrapers must send "Authorization: Bearer <its text>"

    [queue_defaults]            # every queue
    max_items = 0               # 0 = unlimited

    [queues.work]               # one queue (fanout children inherit their parent's)
    max_deliveries = 5
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kestrelq.errors import ConfigError
from kestrelq.queue import names
from kestrelq.queue.config import QUEUE_KEYS, FsyncPolicy, QueueConfig

ENV_PREFIX = "KESTRELQ_"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 22133
    data_dir: str = "./var/queue"
    fsync: FsyncPolicy = FsyncPolicy("always")
    # Under `always`, the replies of reads (get, /open, /close, /abort) wait for their fsync
    # too. Off: their records are written before the reply and fsynced with the next group
    # commit (README, "What STORED promises").
    sync_reads: bool = False
    max_open_reads: int = 1
    max_connections: int = 1024
    max_queues: int = 10_000  # queues a client may create (0: no limit); see docs/journal.md
    max_line_bytes: int = 2048
    max_item_bytes: int = 64 << 20
    # Limits and timeouts against careless or hostile clients (README, "Limits and timeouts").
    max_pending_bytes: int = 256 << 20
    read_timeout_s: float = 60.0
    idle_timeout_s: float = 0.0
    # A client whose machine died sends no FIN or RST: without probes its connection, and the
    # reads it holds open, would stay until open_timeout_ms (README, "Limits and timeouts").
    tcp_keepalive_s: float = 60.0
    disk_reserve_bytes: int = 8 << 20
    segment_bytes: int = 64 << 20
    batch_writes: bool = True
    salvage: bool = False
    shutdown_timeout_s: float = 10.0
    config_file: str = ""
    # Security (kestrelq.server.security): off unless set.
    plain: bool = True
    auth_file: str = ""
    admin_users: str = ""
    enable_shutdown: bool = False
    tls_port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: str = "none"
    tls_handshake_timeout_s: float = 10.0
    # Prometheus metrics (kestrelq.server.metrics): off unless a port is given.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_token_file: str = ""
    queue_defaults: QueueConfig = QueueConfig()
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)

    def queue_fsync(self, name: str) -> FsyncPolicy:
        cfg = self.queues.get(name) or self.queues.get(names.fanout_parent(name) or "")
        cfg = cfg or self.queue_defaults
        policy = cfg.fsync or self.fsync
        sync_reads = self.sync_reads if cfg.sync_reads is None else cfg.sync_reads
        return replace(policy, sync_reads=sync_reads)


# KESTRELQ_TLS_CA/CERT/KEY are our clients' settings (kestrelq.credentials): the CA they trust
# and the certificate they present. A server and its healthcheck share one environment, so the
# server's own files go by other names.
_ENV_NAMES = {key: f"{ENV_PREFIX}SERVER_{key.upper()}" for key in ("tls_cert", "tls_key", "tls_ca")}


def env_name(key: str) -> str:
    """The environment variable that sets the [server] `key`."""
    return _ENV_NAMES.get(key, ENV_PREFIX + key.upper())


_SERVER_KEYS = {f.name for f in fields(ServerConfig)} - {"queue_defaults", "queues", "config_file"}


def _convert(key: str, value: Any, kind: Any) -> Any:
    """Coerce a value from TOML, env or argv to the type of the field it sets."""
    try:
        if key == "fsync":
            return value if isinstance(value, FsyncPolicy) else FsyncPolicy.parse(value)
        if key == "admin_users" and isinstance(value, list):
            return ",".join(str(v) for v in value)
        if kind in (bool, "bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind in (int, "int"):
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(value)
            if number < 0:
                raise ValueError(value)
            return number
        if kind in (float, "float"):
            real = float(value)
            if not real >= 0:  # also refuses nan
                raise ValueError(value)
            return real
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bad value for {key}: {value!r}") from None


# A queue's settings that default to the server's (None) are unions, whose annotation says
# little at run time: a string in pure Python, and plain `type` once kestrelq.queue.config is
# compiled (mypyc), which had `sync_reads = false` stored as the string "False". Named here.
_QUEUE_KINDS: dict[str, Any] = {"sync_reads": bool, "fsync": FsyncPolicy}


def _queue_config(section: Mapping[str, Any], base: QueueConfig, where: str) -> QueueConfig:
    unknown = set(section) - QUEUE_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    types = {f.name: _QUEUE_KINDS.get(f.name, f.type) for f in fields(QueueConfig)}
    changes = {k: _convert(k, v, types[k]) for k, v in section.items()}
    for key in ("expire_to", "dead_letter"):
        if changes.get(key):
            try:
                names.validate(changes[key])
            except Exception as exc:
                raise ConfigError(f"{where}.{key}: {exc}") from None
    return replace(base, **changes)


def _from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    unknown = set(data) - {"server", "queue_defaults", "queues"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(sorted(unknown))}")
    return data


def load(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Build the config from file (if any), environment and `overrides` (CLI), in that order."""
    env = os.environ if environ is None else environ
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = cli.pop("config_file", None) or env.get(ENV_PREFIX + "CONFIG", "")
    data = _from_file(path) if path else {}

    types = {f.name: f.type for f in fields(ServerConfig)}
    settings: dict[str, Any] = {}
    server_section = data.get("server", {})
    unknown = set(server_section) - _SERVER_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in [server]: {', '.join(sorted(unknown))}")
    settings.update(server_section)
    for key in _SERVER_KEYS:
        name = env_name(key)
        if name in env:
            settings[key] = env[name]
    settings.update(cli)
    converted = {k: _convert(k, v, types[k]) for k, v in settings.items()}

    defaults = _queue_config(data.get("queue_defaults", {}), QueueConfig(), "[queue_defaults]")
    queues: dict[str, QueueConfig] = {}
    for name, section in data.get("queues", {}).items():
        try:
            names.validate(name)
        except Exception as exc:
            raise ConfigError(f"[queues.{name}]: {exc}") from None
        queues[name] = _queue_config(section, defaults, f"[queues.{name}]")
        try:
            queues[name].check_targets(name)
        except Exception as exc:
            raise ConfigError(f"[queues.{name}]: {exc}") from None
    for key in ("port", "tls_port", "metrics_port"):
        if key in converted and not 0 <= converted[key] <= 65535:
            raise ConfigError(f"{key} out of range: {converted[key]}")
    return ServerConfig(
        **converted,
        config_file=str(Path(path).resolve()) if path else "",
        queue_defaults=defaults,
        queues=queues,
    )
