"""How every client of ours logs in and speaks TLS: one place that reads the environment.

    KESTRELQ_USER, KESTRELQ_PASSWORD       log in with a `set` of "user password" first
    KESTRELQ_PASSWORD_FILE                 ...the password read from a file instead
    KESTRELQ_TLS_CA                        speak TLS, trusting this CA for the server's cert
    KESTRELQ_TLS=1                         speak TLS, trusting the system's CAs
    KESTRELQ_TLS_CERT, KESTRELQ_TLS_KEY    present this client certificate (mutual TLS)

`kestrelq work`, `kestrelq stats/peek`, the healthcheck (through `kestrelq.client`), the
bench and app/send.py (through `memcache_client`, a pymemcache client that logs in on every
connect) all use `Credentials.from_env()`. A refused login is `CredentialsRefused`, which
tools turn into `EXIT_CREDENTIALS`: retrying a wrong password cannot help, so nothing retries
it (a server that is down is retried; one that says no is not).
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kestrelq.errors import ConfigError, CredentialsRefused

logger = logging.getLogger(__name__)

# EX_NOPERM (sysexits.h): the server refused our credentials, or wants some we do not have.
EXIT_CREDENTIALS = 77

_REFUSALS = ("authentication failure", "unauthenticated")


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str = ""
    password: str = field(default="", repr=False)
    tls: ssl.SSLContext | None = None

    @property
    def login(self) -> bytes:
        """The login `set`'s data, memcached's `user password`."""
        return f"{self.user} {self.password}".encode()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Read the KESTRELQ_* settings above; ConfigError naming the one that is wrong."""
        env = os.environ if environ is None else environ
        user = env.get("KESTRELQ_USER", "")
        password = env.get("KESTRELQ_PASSWORD", "")
        password_file = env.get("KESTRELQ_PASSWORD_FILE", "")
        if password and password_file:
            raise ConfigError("set KESTRELQ_PASSWORD or KESTRELQ_PASSWORD_FILE, not both")
        if password_file:
            password = _read_password(password_file)
        if bool(user) != bool(password):
            raise ConfigError("KESTRELQ_USER and a password (KESTRELQ_PASSWORD or "
                              "KESTRELQ_PASSWORD_FILE) go together")  # fmt: skip
        if any(ch.isspace() for ch in user):
            raise ConfigError("KESTRELQ_USER must not hold a space")
        return cls(user, password, _tls_from_env(env))


def _read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            # One trailing newline is the editor's, not the password's.
            password = f.read().removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise ConfigError(f"cannot read KESTRELQ_PASSWORD_FILE {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        logger.warning("password file %s is readable by every user (chmod 600 it)", path)
    if not password:
        raise ConfigError(f"KESTRELQ_PASSWORD_FILE {path} is empty")
    return password


def _tls_from_env(env: Mapping[str, str]) -> ssl.SSLContext | None:
    ca = env.get("KESTRELQ_TLS_CA", "")
    cert = env.get("KESTRELQ_TLS_CERT", "")
    key = env.get("KESTRELQ_TLS_KEY", "")
    wanted = env.get("KESTRELQ_TLS", "").strip().lower() in ("1", "true", "yes", "on")
    if not (wanted or ca or cert):
        if key:
            raise ConfigError("KESTRELQ_TLS_KEY needs KESTRELQ_TLS_CERT")
        return None
    return client_context(ca, cert, key)


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """Verify the server (against `ca`, else the system's CAs); present `cert` if given."""
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"KESTRELQ_TLS_CA {ca}: {_why(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            where = f"{cert} with key {key}" if key else cert
            raise ConfigError(f"KESTRELQ_TLS_CERT {where}: {_why(exc)}") from None
    elif key:
        raise ConfigError("KESTRELQ_TLS_KEY needs KESTRELQ_TLS_CERT")
    return ctx


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not usable ({exc.reason or exc})"
    return exc.strerror or str(exc)


def refused(reason: str, user: str) -> CredentialsRefused | None:
    """The error for a server's CLIENT_ERROR `reason`, if it is a refused login."""
    if reason not in _REFUSALS:
        return None
    if reason == "unauthenticated" or not user:
        return CredentialsRefused(
            "the server requires a login: set KESTRELQ_USER and KESTRELQ_PASSWORD "
            "(or KESTRELQ_PASSWORD_FILE)"
        )
    return CredentialsRefused(f"the server refused the password of user {user!r}")


# -- pymemcache ---------------------------------------------------------------------------------


def memcache_client(server: tuple[str, int], credentials: Credentials, **options: Any) -> Any:
    """A pymemcache Client that speaks TLS and logs in on every (re)connect, as configured."""
    if credentials.tls is not None:
        options.setdefault("tls_context", credentials.tls)
    return _login_client_class()(server, credentials=credentials, **options)


@functools.cache
def _login_client_class() -> type:
    # Imported here: the server and our own client do not need pymemcache.
    from pymemcache.client.base import Client

    class LoginClient(Client):  # type: ignore[misc]
        """pymemcache reconnects by itself after an error; each new socket logs in first."""

        def __init__(self, server: Any, *, credentials: Credentials, **kwargs: Any) -> None:
            super().__init__(server, **kwargs)
            self.credentials = credentials

        def _connect(self) -> None:
            super()._connect()
            if self.credentials.user:
                self._store_cmd(b"set", {b"auth": self.credentials.login}, 0, False)

        def _raise_errors(self, line: bytes, name: bytes) -> None:
            # Every reply line passes here: a refused or missing login, on any command, is
            # CredentialsRefused (not a MemcacheError, which callers retry).
            if line.startswith(b"CLIENT_ERROR "):
                reason = line[len(b"CLIENT_ERROR ") :].decode(errors="replace").strip()
                error = refused(reason, self.credentials.user)
                if error is not None:
                    raise error
            super()._raise_errors(line, name)

    return LoginClient
