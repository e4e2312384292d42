"""Worker metrics: real `kestrelq work` processes record, `kestrelq worker-metrics` sums them.

What a scrape says is read with prometheus_client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    REPO,
    ServerProcess,
    child_env,
    free_port,
    scrape,
    scrape_or_none,
    serving,
    wait_until,
)

from kestrelq.worker.metrics import Metrics, metrics_from_env

KESTRELQ = (sys.executable, "-m", "kestrelq")
# Exit once the queue is empty; give a failed message back at once; dead-lettered at 2.
BURST = ("--burst", "--wait-ms", "100", "--retry-delay-s", "0", "--max-deliveries", "2")


@pytest.fixture
def dead_letter_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose `work` queue dead-letters a message after 2 deliveries."""
    config = '[queues.work]\nmax_deliveries = 2\ndead_letter = "work_dead"\n'
    with serving(tmp_path / "data", config=config) as proc:
        yield proc


def burst_worker(port: int, directory: Path) -> subprocess.CompletedProcess[str]:
    """One worker process of the pool: handles what `work` holds, then exits."""
    return subprocess.run(
        [*KESTRELQ, "work", "work", "--handler", "tasks:handle", "--port", str(port), *BURST],
        cwd=REPO / "app",
        env=child_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_pool_exporter_sums_every_worker_process_the_exited_ones_too(
    dead_letter_server: ServerProcess, tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    client = dead_letter_server.client()
    try:
        # A poison message first, then three good ones: the first worker fails the poison
        # twice (given back both times), the server dead-letters it, the worker does the rest.
        client.set("work", json.dumps({"task": "fail", "id": "poison"}))
        for n in range(3):
            client.set("work", f"first {n}")
        first = burst_worker(dead_letter_server.port, pool)
        assert first.returncode == 0, first.stderr
        for n in range(4):
            client.set("work", f"second {n}")
        second = burst_worker(dead_letter_server.port, pool)
        assert second.returncode == 0, second.stderr
    finally:
        client.close()
    # Two processes, two sets of files: nothing is shared between workers.
    assert len({p.name.split("_")[-1] for p in pool.glob("*.db")}) == 2

    port = free_port()
    exporter = subprocess.Popen(
        [*KESTRELQ, "worker-metrics", "--port", str(port), "--dir", str(pool)],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: scrape_or_none(port) is not None, 60, what="the exporter to answer")
        samples = scrape(port)
    finally:
        exporter.terminate()
        _, err = exporter.communicate(timeout=30)
    assert exporter.returncode == 0, err
    # Both exited workers counted, each once.
    assert samples[("kestrelq_worker_processed_total", "work", "")] == 7
    assert samples[("kestrelq_worker_failed_total", "work", "")] == 2
    assert samples[("kestrelq_worker_redelivered_total", "work", "")] == 2
    assert samples[("kestrelq_worker_handler_duration_seconds_count", "work", "")] == 9
    assert samples[("kestrelq_worker_handler_duration_seconds_bucket", "work", "+Inf")] == 9
    assert samples[("kestrelq_worker_handler_duration_seconds_sum", "work", "")] > 0


def test_without_the_pool_directory_a_worker_records_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert type(metrics_from_env("work")) is Metrics


def test_the_exporter_without_a_directory_is_a_usage_error() -> None:
    result = subprocess.run(
        [*KESTRELQ, "worker-metrics", "--port", str(free_port())],
        env={k: v for k, v in child_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "give --dir or set PROMETHEUS_MULTIPROC_DIR" in result.stderr


def test_a_metrics_directory_the_worker_cannot_make_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [*KESTRELQ, "work", "work", "--handler", "tasks:handle", "--port", str(free_port())],
        cwd=REPO / "app",
        env=child_env(PROMETHEUS_MULTIPROC_DIR=str(blocker / "pool")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "kestrelq work: metrics in $PROMETHEUS_MULTIPROC_DIR:" in result.stderr
    assert "Traceback" not in result.stderr
