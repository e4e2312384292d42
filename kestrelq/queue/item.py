"""The queue's name for `Item`, which lives in the journal layer below it (imports run one way:
the journal knows nothing of queues, the queue builds on the journal)."""

from kestrelq.journal.item import Item

__all__ = ["Item"]
