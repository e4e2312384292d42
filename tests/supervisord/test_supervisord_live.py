"""Real supervisord on rendered files: the host stack runs, FATAL programs become visible."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from helpers import (
    REPO,
    Supervisord,
    child_env,
    render_test_stack,
    request,
    scrape_or_none,
    wait_until,
)

from kestrelq.supervisord.model import Program
from kestrelq.supervisord.render import render_program


def doomed_stack(tmp_path: Path, mode: str) -> tuple[Path, int]:
    """A rendered stack whose only program dies at once, every time (so it ends FATAL)."""
    conf, stack = render_test_stack(tmp_path, mode=mode)
    for rel in ("queue.ini", "work_worker.ini", "worker_metrics.ini"):
        (conf / "supervisord.d" / rel).unlink()
    doomed = Program(
        name="doomed",
        command=f"{sys.executable} -c 'raise SystemExit(3)'",
        startretries=1,
        stdout_logfile="/dev/stdout" if mode == "container" else "NONE",
        stdout_logfile_maxbytes="0",
    )
    (conf / "supervisord.d/doomed.ini").write_text(render_program(doomed, "test"))
    return conf, stack.http_port


def test_fatal_listener_logs_and_marks_a_fatal_program(tmp_path: Path) -> None:
    conf, http_port = doomed_stack(tmp_path, "host")
    sup = Supervisord(conf / "supervisord.conf", http_port, tmp_path / "supervisord.out")
    try:
        sup.wait_ready()
        marker = tmp_path / "var/host/run/FATAL"
        wait_until(marker.exists, 30, what="the FATAL marker file")
        assert marker.read_text().rstrip().endswith("doomed FATAL")
        assert sup.info("doomed")["statename"] == "FATAL"
        log = (tmp_path / "var/host/log/fatal_listener.log").read_text()
        assert "program doomed is FATAL: supervisord gave up restarting it" in log
        assert sup.state() == "RUNNING", "in host mode supervisord keeps running"
    finally:
        sup.stop()


def test_fatal_listener_stops_supervisord_in_container_mode(tmp_path: Path) -> None:
    conf, http_port = doomed_stack(tmp_path, "container")
    sup = Supervisord(conf / "supervisord.conf", http_port, tmp_path / "supervisord.out")
    try:
        sup.wait_ready()
        # The listener sends SIGTERM to supervisord, which stops everything and exits: the
        # container's restart policy takes it from there.
        assert sup.proc.wait(60) == 0
        assert "doomed FATAL" in (tmp_path / "var/host/run/FATAL").read_text()
        out = sup.log_path.read_text()
        assert "stopping supervisord" in out
        assert "program doomed is FATAL" in out
    finally:
        sup.stop()


PROCESSED = ("kestrelq_worker_processed_total", "work", "")


def queue_answers(port: int) -> bool:
    """The readiness contract: the port answers `version` (RUNNING is only "up 1 s")."""
    try:
        return request(port, b"version\r\n", timeout_s=2).startswith(b"VERSION ")
    except OSError:
        return False


def supervisorctl(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
        check=False,
    )


def handled_ids(log: Path, event: str = "done") -> list[str]:
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith(event)]


@pytest.mark.timeout(120)
def test_host_stack_runs_and_workers_handle_what_send_py_sends(tmp_path: Path) -> None:
    conf, stack = render_test_stack(tmp_path, workers=2)
    handled = tmp_path / "handled.log"
    sup = Supervisord(
        conf / "supervisord.conf",
        stack.http_port,
        tmp_path / "supervisord.out",
        KESTRELQ_HANDLED_LOG=str(handled),
    )
    try:
        sup.wait_ready()
        programs = (
            "queue:queue",
            "work_worker:work_worker_00",
            "work_worker:work_worker_01",
            "worker_metrics:worker_metrics",
        )
        for name in programs:
            wait_until(partial(sup.running, name), 30, what=f"{name} RUNNING")
        wait_until(partial(queue_answers, stack.port), 30, what="the queue to answer version")
        status = supervisorctl(conf / "supervisord.conf", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        # queue, 2 workers, their metrics, listener
        assert status.stdout.count("RUNNING") == 5, status.stdout

        # The demo's own producer, run as a user would: `cd app && python send.py ...`.
        sent = subprocess.run(
            [sys.executable, "send.py", "--task", "digest", "--count", "20", "hello", "--quiet"],
            cwd=REPO / "app",
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(KESTRELQ_PORT=str(stack.port)),
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert "sent 20 message(s) to 'work'" in sent.stdout
        wait_until(lambda: len(handled_ids(handled)) >= 20, 30, what="20 handled messages")
        assert len(set(handled_ids(handled))) == 20

        worker_logs = [tmp_path / f"var/host/log/work_worker_{n:02d}.log" for n in (0, 1)]
        lines = "".join(p.read_text() for p in worker_logs)
        assert lines.count("digest id=") == 20, "one printed line per handled message"

        # The pool's metrics: both workers' counts summed by the worker_metrics program.
        def processed() -> float | None:
            samples = scrape_or_none(stack.worker_metrics_port)
            return None if samples is None else samples.get(PROCESSED)

        wait_until(lambda: processed() == 20, 60, 0.2, what="20 processed in the pool's metrics")
    finally:
        assert sup.stop() == 0
    # supervisord stopped the workers with SIGTERM: each one logged a warm shutdown line.
    for log in worker_logs:
        assert "stopped (warm): processed=" in log.read_text()
    queue_log = (tmp_path / "var/host/log/queue.log").read_text()
    assert "listening on" in queue_log


def test_send_py_fails_clearly_when_the_queue_is_unreachable(tmp_path: Path) -> None:
    from helpers import free_port

    result = subprocess.run(
        [sys.executable, "send.py", "--port", str(free_port()), "hello"],
        cwd=REPO / "app",
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 2
    assert "cannot reach the queue at 127.0.0.1:" in result.stderr
    assert "Connection refused" in result.stderr


def test_send_py_refuses_bad_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "send.py", "--json", json.dumps({"no": "task"})],
        cwd=REPO / "app",
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 64
    assert 'needs an object with a "task" string' in result.stderr
