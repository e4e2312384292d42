"""Who may talk to the server and what they may do: memcached's text-protocol authentication.

Rules, as memcached (`-Y`, `-A`) has them, so that stock clients work unchanged:

1. With an auth file, a connection's first command must be a `set` (any key) whose data is
   `user password`. A match is answered STORED; anything else, `CLIENT_ERROR authentication
   failure`, then the connection is closed. Any other command first gets `CLIENT_ERROR
   unauthenticated`, then the connection is closed.
2. With an auth file, the commands that destroy or reconfigure (`ADMIN_COMMANDS`) need a user
   listed in admin_users; others get `CLIENT_ERROR permission denied` and keep the connection.
3. `shutdown` is refused unless the server was started with --enable-shutdown, whoever asks
   (and, with an auth file, it is an admin command too).

`Access.check` is the whole decision, with no I/O; `load_users` reads the file. Passwords
never appear in a log line or an error: errors name the file and the line number only.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from kestrelq.errors import (
    AccessDenied,
    AuthenticationFailed,
    ConfigError,
    ShutdownDisabled,
    Unauthenticated,
)
from kestrelq.protocol import commands as c

logger = logging.getLogger(__name__)

ADMIN_COMMANDS = (
    c.FlushAll,
    c.Flush,
    c.Delete,
    c.Reload,
    c.FlushAllExpired,
    c.Shutdown,
    c.GetStatus,
    c.SetStatus,
)

# Compared against when the user is unknown, so that a wrong name costs the same time as a
# wrong password and the reply's timing does not tell which users exist.
_NO_PASSWORD = b"\x00" * 32


def parse_users(text: str, path: str) -> dict[str, bytes]:
    """`user:password` lines (blank lines skipped) to {user: password}; ConfigError if bad."""
    users: dict[str, bytes] = {}
    seen_at: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        user, sep, password = line.partition(":")
        where = f"auth file {path}, line {number}"
        if not sep:
            raise ConfigError(f"{where}: expected user:password")
        if not user or any(ch.isspace() for ch in user):
            raise ConfigError(f"{where}: the user name is empty or holds a space")
        if not password:
            raise ConfigError(f"{where}: the password is empty")
        if user in users:
            raise ConfigError(f"{where}: user {user!r} already defined on line {seen_at[user]}")
        users[user] = password.encode()
        seen_at[user] = number
    if not users:
        raise ConfigError(f"auth file {path} holds no user:password line")
    return users


def load_users(path: str) -> dict[str, bytes]:
    """Read and parse an auth file; warn when every local user can read it."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read auth file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"auth file {path} is not UTF-8 text") from None
    if mode & stat.S_IROTH:
        logger.warning("auth file %s is readable by every user on this machine (chmod 600 it)",
                       path)  # fmt: skip
    return parse_users(text, path)


def parse_admin_users(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True, slots=True)
class Access:
    """The access rules of a running server; replaced whole when the auth file is reloaded."""

    users: Mapping[str, bytes] | None = None  # None: authentication is off
    admin_users: frozenset[str] = frozenset()
    enable_shutdown: bool = False
    _dummy: bytes = field(default=_NO_PASSWORD, repr=False)

    def check(self, user: str | None, cmd: c.Command) -> str | None:
        """Let `cmd` through (None) or take it as the login (the user's name); raise if refused.

        `user` is who the connection logged in as; None before (or with authentication off).
        """
        if self.users is not None:
            if user is None:
                if isinstance(cmd, c.Set):
                    return self.login(cmd.data)
                raise Unauthenticated()
            if isinstance(cmd, ADMIN_COMMANDS) and user not in self.admin_users:
                raise AccessDenied()
        if isinstance(cmd, c.Shutdown) and not self.enable_shutdown:
            raise ShutdownDisabled()
        return None

    def login(self, data: bytes) -> str:
        """`user password` (a login set's data) to the user; AuthenticationFailed if wrong."""
        assert self.users is not None
        name, _, password = data.partition(b" ")
        user = name.decode(errors="replace")
        expected = self.users.get(user)
        # compare_digest on both paths: the time does not depend on where the bytes differ
        # nor on whether the user exists.
        ok = hmac.compare_digest(expected if expected is not None else self._dummy, password)
        if not ok or expected is None:
            raise AuthenticationFailed()
        return user
