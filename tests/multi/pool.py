"""A pool of real `kestrelq work` processes over a list of servers, running the demo tasks,
and what they record as handled ($KESTRELQ_HANDLED_LOG): shared by the several-servers tests
that put a producer and workers against three servers."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import REPO, child_env


def start_workers(
    tmp_path: Path, servers: str, count: int, wait_ms: int, log: Path
) -> list[subprocess.Popen[bytes]]:
    """`count` workers on queue `work` reading every server of `servers`, each with its output
    in tmp_path/worker-N.out."""
    workers = []
    for n in range(count):
        out = (tmp_path / f"worker-{n}.out").open("wb")
        cmd = [sys.executable, "-m", "kestrelq", "work", "work", "--handler", "tasks:handle"]
        workers.append(
            subprocess.Popen(
                [*cmd, "--servers", servers, "--wait-ms", str(wait_ms), "--backoff-max-s", "1"],
                cwd=REPO / "app",
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(KESTRELQ_HANDLED_LOG=str(log), PYTHONPATH=f"{REPO}:{REPO / 'app'}"),
            )
        )
        out.close()
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all, then wait for each (a warm stop: the message in hand is finished)."""
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(60)


def handled(log: Path) -> Counter[str]:
    """Each message id the workers recorded as done, with how many times."""
    if not log.exists():
        return Counter()
    lines = log.read_text().splitlines()
    return Counter(line.split()[1] for line in lines if line.startswith("done "))
