"""The worker runtime: consume a queue with reliable reads and run a handler per message."""

from __future__ import annotations

from kestrelq.worker.runtime import ColdShutdown, Worker, WorkerCounts

__all__ = ["ColdShutdown", "Worker", "WorkerCounts"]
