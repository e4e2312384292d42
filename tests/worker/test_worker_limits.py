"""`kestrelq work` on the demo tasks as a real process: time limits, the stop timeout, poison
messages backing off, and log lines that name the worker and the message and cannot be forged.

Each test runs a real server, a real worker process (`kestrelq work --handler tasks:handle`
from app/, as supervisord runs it) and real signals, and reads the worker's output file.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from helpers import REPO, ServerProcess, child_env, wait_until
from pymemcache.client.base import Client

WORKER_NAME = "test_worker_07"
# How every line of the worker's output starts (kestrelq's logging format).
LINE_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)

STUCK_HANDLER = """
import signal, time

def handle(body: bytes) -> None:
    # Stands for C code that never returns to the interpreter: SIGALRM cannot reach it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(120)
"""


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    out: Path
    handled: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.output().splitlines() if text in line]

    def handled_events(self) -> list[list[str]]:
        if not self.handled.exists():
            return []
        return [line.split(" ") for line in self.handled.read_text().splitlines()]

    def stop(self, timeout_s: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def start_worker(
    workers: list[WorkerProcess],
    tmp_path: Path,
    port: int,
    *args: str,
    handler: str = "tasks:handle",
    cwd: Path = REPO / "app",
) -> WorkerProcess:
    out = tmp_path / f"worker-{len(workers)}.out"
    handled = tmp_path / "handled.log"
    cmd = [sys.executable, "-m", "kestrelq", "work", "work", "--handler", handler]
    cmd += ["--port", str(port), "--wait-ms", "200", *args]
    with out.open("wb") as f:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=child_env(
                SUPERVISOR_PROCESS_NAME=WORKER_NAME,
                KESTRELQ_HANDLED_LOG=str(handled),
                PYTHONPATH=f"{REPO}:{cwd}",
            ),
        )
    w = WorkerProcess(proc, out, handled)
    workers.append(w)
    return w


def dead_letter_server(tmp_path: Path, max_deliveries: int) -> ServerProcess:
    config = tmp_path / "kestrelq.toml"
    config.write_text(
        f'[queues.work]\nmax_deliveries = {max_deliveries}\ndead_letter = "work_dead"\n'
    )
    return ServerProcess(tmp_path / "data", "--config", str(config)).start()


def envelope(task: str, msg_id: str, **extra: object) -> bytes:
    args = extra.pop("args", {})
    return json.dumps({"task": task, "args": args, "id": msg_id, **extra}).encode()


def put(port: int, *bodies: bytes) -> None:
    c = Client(("127.0.0.1", port), timeout=10, connect_timeout=5)
    try:
        for body in bodies:
            assert c.set("work", body, noreply=False)
    finally:
        c.close()


def take(port: int, queue: str, wait_ms: int = 2000) -> bytes | None:
    c = Client(("127.0.0.1", port), timeout=10, connect_timeout=5)
    try:
        value: bytes | None = c.get(f"{queue}/t={wait_ms}")
        return value
    finally:
        c.close()


# -- time limits ----------------------------------------------------------------------------


def found(match: re.Match[str] | None) -> re.Match[str]:
    assert match is not None
    return match


@pytest.mark.parametrize(
    ("worker_args", "extra", "limit"),
    [
        pytest.param(("--time-limit-s", "1"), {}, "1s", id="worker-default"),
        pytest.param((), {"time_limit_s": 0.5}, "0.5s", id="set-by-the-envelope"),
    ],
)
def test_a_task_past_its_time_limit_fails_and_the_worker_goes_on(
    tmp_path: Path,
    workers: list[WorkerProcess],
    worker_args: tuple[str, ...],
    extra: dict[str, object],
    limit: str,
) -> None:
    server = dead_letter_server(tmp_path, max_deliveries=2)
    try:
        endless = envelope("sleep", "endless", args={"seconds": 1e9}, **extra)
        put(server.port, endless, envelope("echo", "after", args={"text": "next one"}))
        w = start_worker(
            workers,
            tmp_path,
            server.port,
            *worker_args,
            "--retry-delay-s",
            "0.05",
            "--max-deliveries",
            "2",
        )
        wait_until(
            lambda: ["done", "after"] in [e[:2] for e in w.handled_events()],
            60,
            what="the message behind the endless one handled",
        )
        # Failed twice (the server's max_deliveries), then moved to the dead-letter queue.
        assert take(server.port, "work_dead") == endless
        assert w.stop() == 0, w.output()
    finally:
        assert server.stop() == 0, server.log()
    timeouts = w.lines_with(f"exceeded its time limit of {limit}")
    assert len(timeouts) == 2, w.output()
    assert "msg=endless" in timeouts[0]
    assert "gave up after 2 deliveries, the server moves it to 'work_dead'" in timeouts[1]
    assert "stopped (warm): processed=1 failed=2 redelivered=2" in w.output()


def test_sigterm_waits_for_the_task_no_longer_than_the_stop_timeout(
    tmp_path: Path, server: ServerProcess, workers: list[WorkerProcess]
) -> None:
    endless = envelope("sleep", "endless", args={"seconds": 1e9})
    put(server.port, endless)
    w = start_worker(workers, tmp_path, server.port, "--stop-timeout-s", "1")
    wait_until(lambda: w.handled_events(), 30, what="the task to start")
    # The default time limit (5 minutes) is far away: only the stop timeout can end it.
    code = w.stop(timeout_s=60)
    out = w.output()
    assert code == 1, out
    assert "SIGTERM: warm shutdown, finishing the current message (at most 1s)" in out
    assert "stop timeout (1s) passed with the handler still running: cold shutdown" in out
    assert "msg=endless given back to 'work': cold shutdown interrupted the handler" in out
    assert "stopped (cold): processed=0 failed=0 redelivered=1" in out
    # Given back by the worker's own /abort: at the head of the queue for the next worker.
    assert take(server.port, "work") == endless


def test_a_handler_that_sigalrm_cannot_reach_is_ended_by_the_watchdog(
    tmp_path: Path, server: ServerProcess, workers: list[WorkerProcess]
) -> None:
    (tmp_path / "stuckmod.py").write_text(STUCK_HANDLER)
    put(server.port, b"stuck")
    w = start_worker(
        workers,
        tmp_path,
        server.port,
        "--time-limit-s",
        "0.5",
        handler="stuckmod:handle",
        cwd=tmp_path,
    )
    code = w.proc.wait(60)
    out = w.output()
    assert code == 70, out
    assert "cannot be interrupted; exiting (70)" in out
    # The server gave the open read back when the process's connection closed.
    assert take(server.port, "work") == b"stuck"


# -- poison messages ------------------------------------------------------------------------


def test_a_poison_message_backs_off_with_one_line_per_failure(
    tmp_path: Path, server: ServerProcess, workers: list[WorkerProcess]
) -> None:
    # No max_deliveries on this server: only the worker's retry delay slows the poison down.
    put(server.port, envelope("nosuch", "poison"))
    w = start_worker(
        workers, tmp_path, server.port, "--retry-delay-s", "0.2", "--retry-delay-max-s", "0.8"
    )
    wait_until(lambda: len(w.lines_with("failed after")) >= 5, 60, what="five failures")
    assert w.stop() == 0, w.output()
    out = w.output()
    assert "Traceback" not in out
    failures = w.lines_with("failed after")
    for n, line in enumerate(failures, 1):
        assert LINE_RE.match(line), line
        assert f"{WORKER_NAME} msg=poison failed after" in line
        assert f"(failure {n} of this message here): TaskError: unknown task 'nosuch'" in line
    # Every output line is a log line: the failures brought no traceback lines along.
    assert all(LINE_RE.match(line) for line in out.splitlines()), out
    # The delays double (with jitter between half and all of the nominal delay, capped), and
    # each was waited out before the next delivery. Lower bounds only: a slow machine
    # makes the gaps longer, never shorter.
    stamps = [
        datetime.strptime(found(LINE_RE.match(x))[1], "%Y-%m-%d %H:%M:%S,%f") for x in failures
    ]
    delays = [float(found(re.search(r"giving it back in ([\d.]+)s", x))[1]) for x in failures]
    for n, delay in enumerate(delays, 1):
        nominal = min(0.8, 0.2 * 2 ** (n - 1))
        assert nominal * 0.5 - 0.005 <= delay <= nominal + 0.005  # printed with 2 decimals
    for n in range(len(failures) - 1):
        assert (stamps[n + 1] - stamps[n]).total_seconds() >= delays[n] - 0.011


# -- log lines ------------------------------------------------------------------------------


def test_log_lines_name_the_worker_and_message_and_nothing_in_a_message_forges_a_line(
    tmp_path: Path, server: ServerProcess, workers: list[WorkerProcess]
) -> None:
    forged_text = b"hello\n2026-01-01 00:00:00,000 INFO forged line"
    forged_id = envelope("echo", "a\nstart forged 1\r\x1b[2K", args={"text": "b\ndone forged 1"})
    long_text = b"x" * 500
    put(server.port, b"hello", forged_text, forged_id, long_text)
    w = start_worker(workers, tmp_path, server.port, "--burst")
    assert w.proc.wait(60) == 0, w.output()
    out = w.output()
    lines = out.splitlines()
    assert all(LINE_RE.match(line) for line in lines), out
    # "forged" appears only inside the two lines of the messages that carry it.
    forged = [x for x in lines if "forged" in x]
    assert len(forged) == 2, out
    assert all(" done in " in x and not x.startswith("2026-01-01") for x in forged), out
    done = [x for x in lines if " done in " in x]
    assert len(done) == 4, out
    assert all(f"{WORKER_NAME} msg=" in x for x in done)
    # Plain text shows itself, escaped; its id is the digest prefix the task prints too.
    hello = next(x for x in done if 'text="hello"' in x)
    assert "msg=2cf24dba5fb0a30e text=" in hello
    assert "digest id=2cf24dba5fb0a30e: sha256=" in hello
    assert 'text="hello\\n2026-01-01 00:00:00,000 INFO forged line"' in out
    assert "msg=a\\nstart forged 1\\r\\x1b[2K done in" in out
    assert f'text="{"x" * 200}...(+300 chars)"' in out
    # The handled log the chaos tests count: one event, one id, one pid per line.
    events = w.handled_events()
    assert len(events) == 8
    assert all(len(e) == 3 and e[0] in ("start", "done") for e in events), events
    assert ["start", "a\\x0astart\\x20forged\\x201\\x0d\\x1b[2K"] in [e[:2] for e in events]
