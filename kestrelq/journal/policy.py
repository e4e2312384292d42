"""When journal writes reach the disk: the fsync policy, shared by the journal and the queues."""

from __future__ import annotations

from dataclasses import dataclass

from kestrelq.errors import ConfigError
from kestrelq.journal.format import Confirm, Open, Record, Remove, Unremove

# The records of reads (get, /open, /close, /abort, and a timed-out open read). Losing one in a
# power cut only hands a message out again, which at-least-once delivery allows anyway; only an
# ADD is a promise that a message is on disk.
_READS = (Remove, Open, Confirm, Unremove)


@dataclass(frozen=True, slots=True)
class FsyncPolicy:
    """When journal writes reach the disk.

    `always`: a reply that added to the queue (or flushed it) is sent only after fsync (group
    commit shares one fsync among every writer waiting at that moment); a read's records are
    written before its reply and fsynced with the next group commit, unless `sync_reads` holds
    its reply for that fsync too. `period_ms`: a background fsync at most that often; a crash
    can lose that much. `never`: the OS decides.
    """

    mode: str  # "always" | "periodic" | "never"
    period_ms: int = 0
    sync_reads: bool = False

    def waits_for(self, record: Record) -> bool:
        """Whether the reply to the command that logged `record` waits for its fsync."""
        return self.mode == "always" and (self.sync_reads or not isinstance(record, _READS))

    @classmethod
    def parse(cls, value: str | int) -> FsyncPolicy:
        text = str(value).strip().lower()
        if text in ("always", "never"):
            return cls(text)
        try:
            period_ms = int(text.removesuffix("ms"))
        except ValueError:
            raise ConfigError(
                f"fsync must be always, never or milliseconds, not {value!r}"
            ) from None
        if period_ms < 0:
            raise ConfigError(f"fsync period must be >= 0 ms, not {period_ms}")
        return cls("always") if period_ms == 0 else cls("periodic", period_ms)

    def __str__(self) -> str:
        return str(self.period_ms) if self.mode == "periodic" else self.mode
