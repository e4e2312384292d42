"""What one fdatasync costs after a small append, by how the file's end is prepared.

    python -m bench.fdatasync_cost [--dir DIR] [--calls 2000] [--runs 5] [--bytes 100]

Each mode writes `--bytes` at the journal's end and fdatasyncs, `--calls` times, and prints
the median over `--runs` of the mean microseconds per (write + fdatasync):

- `append`: O_APPEND, the file grows with each write, so fdatasync also flushes the new size
  (the inode): kestrelq's journal before room was reserved ahead.
- `keep-size`: as `append`, with blocks reserved ahead by fallocate(FALLOC_FL_KEEP_SIZE), as
  the journal does today; the size still changes with each write.
- `zeroed`: the file's blocks written with zeros ahead of the write position (1 MiB at a time,
  fdatasynced once), and each record written in place with pwrite: neither the size nor the
  block map changes, so fdatasync flushes the data page alone.

DIR must be on the file system the data directory is on (a tmpfs costs nothing to sync).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from kestrelq.journal.files import fallocate_keep_size

_CHUNK_BYTES = 1 << 20


def _append(fd: int, record: bytes, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        os.write(fd, record)
        os.fdatasync(fd)
    return time.perf_counter() - start


def _keep_size(fd: int, record: bytes, calls: int) -> float:
    if fallocate_keep_size is None:
        raise SystemExit("no fallocate here")
    allocated = 0
    size = 0
    start = time.perf_counter()
    for _ in range(calls):
        if size + len(record) > allocated:
            fallocate_keep_size(fd, allocated, _CHUNK_BYTES)
            allocated += _CHUNK_BYTES
        size += os.write(fd, record)
        os.fdatasync(fd)
    return time.perf_counter() - start


def _zeroed(fd: int, record: bytes, calls: int) -> float:
    zeros = bytes(_CHUNK_BYTES)
    filled = 0
    offset = 0
    start = time.perf_counter()
    for _ in range(calls):
        if offset + len(record) > filled:
            os.pwrite(fd, zeros, filled)
            filled += _CHUNK_BYTES
            os.fdatasync(fd)
        offset += os.pwrite(fd, record, offset)
        os.fdatasync(fd)
    return time.perf_counter() - start


MODES: dict[str, tuple[int, Callable[[int, bytes, int], float]]] = {
    "append": (os.O_APPEND, _append),
    "keep-size": (os.O_APPEND, _keep_size),
    "zeroed": (0, _zeroed),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".", help="where the test files go (default .)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bytes", type=int, default=100)
    args = parser.parse_args()
    record = b"r" * args.bytes
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="fdatasync-cost-") as where:
        # The modes take turns in each run, so a change in the machine's load hits all alike.
        for run in range(args.runs):
            for mode, (flags, func) in MODES.items():
                path = os.path.join(where, f"{mode}-{run}")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
                try:
                    elapsed = func(fd, record, args.calls)
                finally:
                    os.close(fd)
                    os.unlink(path)
                results[mode].append(elapsed / args.calls * 1e6)
    load = os.getloadavg()[0]
    print(f"{args.calls} x ({args.bytes}-byte write + fdatasync), median of {args.runs} runs, "
          f"in {os.path.abspath(args.dir)}, load {load:.1f}")  # fmt: skip
    for mode, per_call in results.items():
        runs = " ".join(f"{x:.0f}" for x in per_call)
        print(f"  {mode:10s} {statistics.median(per_call):7.1f} us/call   (runs: {runs})")


if __name__ == "__main__":
    main()
