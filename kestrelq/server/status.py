"""The server's status (Kestrel 2.4's STATUS command): what each one refuses, and its file.

Rules:

1. UP takes every command. READONLY refuses the writes (`set`, `delete` and the flush family)
   and serves reads, so that producers go to other servers while workers empty this one.
   QUIESCENT refuses the reads that take an item too (`get` that fetches, `monitor`).
2. Never refused, whatever the status: confirming or giving back an open read (`/close`,
   `/abort`, `confirm`), `stats`, `status` itself. A worker must be able to finish the message
   it holds. A `get q/close/open` on a QUIESCENT server confirms, then is refused: the message
   the worker handled is not handed out again.
3. A refusal is a `ServerUnavailable` error (SERVER_ERROR, then the connection closes, as
   Kestrel does): clients take the server out of their rotation and go to another one.
4. The status outlives a restart: it is kept in `<data dir>/.status` (one word), written to a
   temporary file, fsynced and renamed into place, so a crash leaves the old status or the
   new one. A server that finds no file is UP; one it cannot read stops the start (starting
   UP would quietly undo a drain).

`check` is the whole decision, with no I/O; `load` and `save` are the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from kestrelq.errors import ConfigError, ServerQuiescent, ServerReadOnly
from kestrelq.protocol import commands as c
from kestrelq.protocol.commands import ServerStatus

__all__ = ["FILE_NAME", "WRITES", "check", "load", "save"]

FILE_NAME = ".status"

WRITES = (c.Set, c.Delete, c.Flush, c.FlushAll, c.FlushExpired, c.FlushAllExpired)


def check(status: ServerStatus, cmd: c.Command) -> None:
    """Let `cmd` through or raise the refusal of `status` (ServerReadOnly, ServerQuiescent)."""
    if status is ServerStatus.UP:
        return
    if isinstance(cmd, WRITES):
        raise ServerReadOnly()
    if status is ServerStatus.QUIESCENT and (
        isinstance(cmd, c.Monitor) or (isinstance(cmd, c.Get) and cmd.options.fetches)
    ):
        raise ServerQuiescent()


def load(data_dir: Path) -> ServerStatus:
    """The status saved in `data_dir`; UP when none is. ConfigError if the file is bad."""
    path = Path(data_dir) / FILE_NAME
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return ServerStatus.UP
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the server status in {path}: {exc}") from None
    try:
        return ServerStatus(text.strip().upper())
    except ValueError:
        raise ConfigError(
            f"{path} holds {text.strip()[:32]!r}, not a status: write UP, READONLY or "
            "QUIESCENT into it (or delete it for UP)"
        ) from None


def save(data_dir: Path, status: ServerStatus) -> None:
    """Keep `status` in `data_dir`, durably (OSError if it could not be written)."""
    directory = Path(data_dir)
    path = directory / FILE_NAME
    temporary = directory / (FILE_NAME + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, status.value.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
