"""Per-queue settings."""

from __future__ import annotations

from dataclasses import dataclass

from kestrelq.journal.policy import FsyncPolicy

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
    open_timeout_ms: int = 0
    max_memory_bytes: int = 16 << 20  # ready items held in memory; the rest read behind
    fsync: FsyncPolicy | None = None  # None: the server's policy

    def dead_letter_queue(self, name: str) -> str:
        return self.dead_letter or f"{name}_dead"


QUEUE_KEYS = frozenset(QueueConfig.__dataclass_fields__)
