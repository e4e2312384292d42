"""Per-queue settings."""

from __future__ import annotations

from dataclasses import dataclass

from kestrelq.errors import InvalidQueueName
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.queue import names

__all__ = ["QUEUE_KEYS", "FsyncPolicy", "QueueConfig"]


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Limits and behaviour of one queue. 0 means unlimited for every limit."""

    max_items: int = 0
    max_bytes: int = 0
    max_item_size: int = 0
    max_age_ms: int = 0
    discard_old_when_full: bool = False
    expire_to: str = ""
    max_deliveries: int = 0
    dead_letter: str = ""
    # An open read not confirmed in 10 minutes goes back to the queue: a worker that hangs
    # must not hold its message for ever. Above the worker's default task time limit (5 min).
    open_timeout_ms: int = 600_000
    max_memory_bytes: int = 16 << 20  # ready items held in memory; the rest read behind
    fsync: FsyncPolicy | None = None  # None: the server's policy
    # Under `fsync always`, hold the replies of reads for their fsync too. None: the server's.
    sync_reads: bool | None = None

    def dead_letter_queue(self, name: str) -> str:
        return self.dead_letter or f"{name}_dead"

    def check_targets(self, name: str) -> None:
        """Raise InvalidQueueName if a queue `name` could move items to a queue that cannot be.

        The dead-letter queue is derived (`<name>_dead`): for a name near the length limit it
        is over it, and every read that dead-letters would fail. Checked when settings are
        loaded and when a queue is created, so the error names the cause up front.
        """
        if self.max_deliveries and not self.dead_letter:
            target = self.dead_letter_queue(name)
            try:
                names.validate(target)
            except InvalidQueueName:
                raise InvalidQueueName(
                    f"dead-letter queue <name>_dead of this queue would be {len(target)} "
                    f"bytes, over {names.MAX_NAME_BYTES}: use a shorter name or set dead_letter"
                ) from None


QUEUE_KEYS = frozenset(QueueConfig.__dataclass_fields__)
