"""The disk-full reserve: room set aside so that a full disk can still be drained.

Theory of operation
-------------------
A queue on a full disk must refuse new items but keep serving reads, and every read is
journalled (remove, open, confirm, unremove): without room for those records the queue could
neither take nor give, and consumers could not make room. So the store keeps `size` bytes
allocated in a `.reserve` file. When a write fails with ENOSPC, a record that takes items out
(an *essential* one) releases the reserve and is tried again; from then on new items are
refused (JournalFull) until `ensure()` succeeds in setting the reserve aside again, which the
server tries on its periodic tick. A size of 0 turns the reserve off.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kestrelq.journal.files import Files

logger = logging.getLogger(__name__)


class DiskReserve:
    def __init__(self, files: Files, path: Path, size: int) -> None:
        self._files = files
        self.path = path
        self.size = size
        # True while the disk is full: new items are refused. A plain attribute, not a
        # property: every append asks. Only the methods below set it.
        self.released = False

    def ensure(self) -> bool:
        """Set aside the reserve if it is missing; True when it is in place."""
        if self.size <= 0:
            self.released = False
            return True
        try:
            self._files.preallocate(self.path, self.size)
        except OSError as exc:
            self._files.unlink(self.path)
            if not self.released:
                logger.error("cannot set aside the %d-byte disk reserve: %s", self.size, exc)
            self.released = True
            return False
        if self.released:
            logger.warning("disk space available again: accepting new items")
        self.released = False
        return True

    def release(self) -> bool:
        """Free the reserve so that reads can still be journalled; False if already gone."""
        if not self._files.exists(self.path):
            self.released = True
            return False
        self._files.unlink(self.path)
        self.released = True
        logger.error("disk full: released the disk reserve; refusing new items, serving reads")
        return True
