"""The server's security settings in one place: access rules and the TLS listener's contexts.

Built once at start (a bad auth file or certificate stops the start with an error naming the
file) and reloaded on `reload` and SIGHUP. A reload replaces what reads well and keeps the
rest: a mistyped auth file does not lock every client out, nor does it drop connections.
"""

from __future__ import annotations

import logging
import ssl

from kestrelq.errors import ConfigError
from kestrelq.server.auth import Access, load_users, parse_admin_users
from kestrelq.server.config import ServerConfig
from kestrelq.server.tls import TlsContexts, TlsFiles

logger = logging.getLogger(__name__)


def _access(config: ServerConfig) -> Access:
    users = load_users(config.auth_file) if config.auth_file else None
    admins = parse_admin_users(config.admin_users)
    if admins and users is None:
        raise ConfigError("admin_users is set but auth_file is not: nobody would log in")
    unknown = admins - set(users or ())
    if unknown:
        logger.warning("admin_users not in %s: %s", config.auth_file, ", ".join(sorted(unknown)))
    return Access(users, admins, config.enable_shutdown)


class Security:
    def __init__(self, config: ServerConfig) -> None:
        if not config.plain and not config.tls_port:
            raise ConfigError("the plain listener is off (plain = false) and tls_port is not set")
        self.config = config
        self.access = _access(config)
        self.tls: TlsContexts | None = None
        if config.tls_port:
            self.tls = TlsContexts(
                TlsFiles(config.tls_cert, config.tls_key, config.tls_ca, config.tls_verify)
            )
        elif config.tls_cert or config.tls_key or config.tls_ca:
            logger.warning("tls_cert, tls_key or tls_ca set without tls_port: no TLS listener")
        if self.access.users is not None:
            logger.info("authentication on: %d users from %s, admins: %s",
                        len(self.access.users), config.auth_file,
                        ", ".join(sorted(self.access.admin_users)) or "none")  # fmt: skip

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.front if self.tls is not None else None

    def reload(self) -> None:
        """Re-read the auth file and the certificates; ConfigError if any is bad (kept old)."""
        errors: list[str] = []
        if self.config.auth_file:
            try:
                self.access = _access(self.config)
                logger.info("reloaded %d users from %s", len(self.access.users or ()),
                            self.config.auth_file)  # fmt: skip
            except ConfigError as exc:
                errors.append(str(exc))
        if self.tls is not None:
            try:
                self.tls.reload()
            except ConfigError as exc:
                errors.append(str(exc))
        if errors:
            for error in errors:
                logger.error("reload kept the previous setting: %s", error)
            raise ConfigError("; ".join(errors))
