"""What the harness reads about a server process from /proc: CPU time, memory, disk use."""

from __future__ import annotations

import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ns(pid: int) -> int:
    """CPU time the process has used so far, all threads, user and system, in nanoseconds.

    schedstat counts nanoseconds per thread; /proc/<pid>/stat counts 10 ms ticks, too coarse
    for a run of a few thousand messages. Threads are summed because memcached and redis
    do their work on threads other than the main one.
    """
    total = 0
    found = False
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                # A thread that ended between listdir and open: its time is lost either way.
                continue
    except FileNotFoundError:
        pass
    if found and total > 0:
        return total
    return _stat_cpu_ns(pid)


def _stat_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    # The command name may hold spaces and parentheses; fields are counted after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * 1_000_000_000 // _CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the most resident memory the process has had since it started."""
    return _status_kb(pid, "VmHWM")


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def dir_size(path: Path) -> int:
    """Bytes in all regular files below path (what the journal costs on disk)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                # The server may rotate or compact a file while we walk.
                continue
    return total
