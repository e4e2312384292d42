"""One error tree for the whole package.

Every failure a client can cause or see is a `KestrelqError`. The server maps each class to a
wire reply in exactly one place (`kestrelq.server.connection.error_reply`); nothing else decides
what bytes an error becomes. `close` says whether the connection must be dropped after the
reply, because the framing can no longer be trusted or because Kestrel does so.
"""

from __future__ import annotations


class KestrelqError(Exception):
    """Base of every kestrelq error."""


# -- protocol -------------------------------------------------------------------------------


class ProtocolError(KestrelqError):
    """The bytes on a connection broke the protocol.

    `reason` is the short text sent after the error word; `close` whether to hang up;
    `noreply` whether the command asked for no reply (then the error is logged, not sent: a
    reply the client does not read would be taken as the answer to its next command).
    """

    word = "CLIENT_ERROR"

    def __init__(self, reason: str, *, close: bool = True, noreply: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close = close
        self.noreply = noreply


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed: a client's command (CLIENT_ERROR), or, in the
    client half, a server's reply."""


class ReplyError(KestrelqError):
    """The server answered a command with ERROR, CLIENT_ERROR or SERVER_ERROR (our client)."""

    def __init__(self, word: str, reason: str) -> None:
        super().__init__(f"{word} {reason}" if reason else word)
        self.word = word
        self.reason = reason


class ItemTooLarge(RemoteProtocolError):
    """A `set` announced more bytes than the server accepts at all.

    Refused at once, as memcached does, and the connection is closed before its data is read:
    skipping a declared 999999999999 bytes would hold the connection for ever.
    """

    word = "SERVER_ERROR"

    def __init__(self, size: int, limit: int, *, noreply: bool = False) -> None:
        super().__init__(
            f"object too large for cache ({size} > {limit} bytes)", close=True, noreply=noreply
        )


# -- access ---------------------------------------------------------------------------------


class AccessDenied(KestrelqError):
    """A command refused by the access rules (authentication, admin role, shutdown).

    `reason` is the text after CLIENT_ERROR (memcached's words, which stock clients know);
    `close` whether the connection ends with it.
    """

    reason = "permission denied"
    close = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)


class Unauthenticated(AccessDenied):
    """A command other than the login `set` on a connection that has not logged in."""

    reason = "unauthenticated"
    close = True


class AuthenticationFailed(AccessDenied):
    """The login `set` named an unknown user or a wrong password."""

    reason = "authentication failure"
    close = True


class ShutdownDisabled(AccessDenied):
    """`shutdown` on a server started without --enable-shutdown (memcached's -A)."""

    reason = "shutdown not enabled"


# -- server status --------------------------------------------------------------------------


class ServerUnavailable(KestrelqError):
    """The server's status (STATUS) refuses the command: it is being drained or stopped.

    Answered with SERVER_ERROR and a close, as Kestrel does, so that a client takes the
    server out of its rotation and tries another one; nothing was changed.
    """

    reason = "server unavailable"

    def __init__(self) -> None:
        super().__init__(self.reason)


class ServerReadOnly(ServerUnavailable):
    """A write (set, delete, the flush family) on a READONLY or QUIESCENT server."""

    reason = "server is read-only"


class ServerQuiescent(ServerUnavailable):
    """A read that takes an item (get, monitor) on a QUIESCENT server."""

    reason = "server is quiescent"


# -- queues ---------------------------------------------------------------------------------


class QueueError(KestrelqError):
    """A queue refused an operation."""


class InvalidQueueName(QueueError):
    """A queue name that could escape the data directory or break the wire format."""


class TooManyQueues(QueueError):
    """Creating the queue would pass the server's max_queues (a server limit: SERVER_ERROR)."""


class QueueFull(QueueError):
    """The queue is at max_items or max_bytes and does not discard old items."""


class ItemRejected(QueueError):
    """The item is larger than the queue's max_item_size."""


class TooManyOpenReads(QueueError):
    """The connection already holds the most open reads allowed on this queue."""


class ReadWhileOpen(QueueError):
    """A plain get on a queue where this connection holds an open read."""


class ShuttingDown(QueueError):
    """The server is shutting down and takes no more items."""


# -- journal --------------------------------------------------------------------------------


class JournalError(KestrelqError):
    """The journal could not be read or written."""


class JournalFull(JournalError):
    """The disk is full: the record was not written (nothing was changed)."""


class JournalWriteFailed(JournalError):
    """Writing the journal failed for another reason (EIO, EROFS, ...)."""


class JournalCorrupt(JournalError):
    """A damaged journal file: a record that is whole but wrong, a damaged file header, or
    records that should be there and are not.

    `drops` says exactly what `--salvage` will give up to start anyway ("the 37 bytes from
    offset 120 to 157"). The format's decoder raises it with no `path` (it sees bytes, not
    files); the reader that knows the file raises it again with `in_file`.
    """

    def __init__(self, path: str, offset: int, detail: str, drops: str = "") -> None:
        drops = drops or f"the damaged bytes from offset {offset} on"
        super().__init__(
            f"{path or 'journal'}: damaged journal record at offset {offset}: {detail}; "
            f"start with --salvage to drop {drops}"
        )
        self.path = path
        self.offset = offset
        self.detail = detail
        self.drops = drops

    def in_file(self, path: str, drops: str = "") -> JournalCorrupt:
        return JournalCorrupt(path, self.offset, self.detail, drops or self.drops)


class ConfigError(KestrelqError):
    """A configuration file, variable or option is invalid."""


class CredentialsRefused(KestrelqError):
    """Our client's user and password were refused by the server: retrying cannot help."""
