"""Container chaos: kill the queue server, the workers, the queue container and the whole stack
while messages flow from the app container; nothing the server acknowledged (STORED) is lost.

The invariant is Jepsen's total queue: every id the producer saw STORED shows up in the
workers' output at least once (duplicates are allowed: delivery is at-least-once, and a worker
killed after its task but before its `/close` hands the message to the next one). After each
kill supervisord must report every program RUNNING again; each recovery time is printed and
summarised at the end of the run.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode

import pytest
from compose_stack import WORKERS, Stack, record_timing
from helpers import wait_until

from kestrelq.client import Client

pytestmark = [pytest.mark.chaos, pytest.mark.docker, pytest.mark.timeout(900)]

# Messages per scenario and the gap between them: ~4 s of steady flow around each kill.
FLOW_COUNT = 400
FLOW_INTERVAL_MS = 10
HANDLED_TIMEOUT_S = 120


def new_prefix(scenario: str) -> str:
    return f"{scenario}-{secrets.token_hex(3)}"


def status_page(port: int, password: str | None) -> int:
    """HTTP status of supervisord's status page on the published port."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/")
    if password is not None:
        token = b64encode(f"kestrelq:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def check_delivered(stack: Stack, scenario: str, stored: list[str], since: float) -> None:
    """Every STORED id handled at least once, and supervisord all RUNNING; record the times."""
    assert stored, f"[{scenario}] the producer got no message STORED at all"
    handled = stack.wait_handled(stored, HANDLED_TIMEOUT_S)
    record_timing(scenario, f"all {len(stored)} STORED messages handled", time.monotonic() - since)
    duplicates = sum(handled[i] - 1 for i in stored if handled[i] > 1)
    print(f"[{scenario}] redelivered (handled twice or more): {duplicates}")
    stack.wait_all_running()


def test_stack_shape(stack: Stack) -> None:
    """What the chaos tests rely on: health, non-root, loopback ports, password, pool size."""
    assert stack.inspect("queue", "{{.State.Health.Status}}") == "healthy"
    assert stack.exec("queue", "id", "-u").strip() != "0", "the queue server must not run as root"
    assert stack.exec("worker", "id", "-u").strip() != "0"
    ports = stack.run("port", "queue", "22133").stdout.split()
    assert ports == [f"127.0.0.1:{stack.queue_port}"], ports
    assert stack.queue_answers()
    workers = stack.pids("worker", "work_worker:")
    assert len(workers) == WORKERS, f"KESTRELQ_WORKERS={WORKERS} gave {workers}"
    assert status_page(stack.worker_status_port, None) == 401
    assert status_page(stack.worker_status_port, "wrong") == 401
    assert status_page(stack.worker_status_port, stack.password) == 200


def test_the_queue_image_runs_the_compiled_hot_path(stack: Stack) -> None:
    """The queue server loads the modules mypyc built in the image's `compiled` stage, and they
    serve: a set and a get round trip through them."""
    log = stack.run("logs", "--no-log-prefix", "queue").stdout
    assert "hot path: compiled (mypyc, " in log, log[-2000:]
    with Client("127.0.0.1", stack.queue_port, 10, stack.credentials()) as client:
        assert client.set("hot_path", b"compiled in the image")
        item = client.get("hot_path")
    assert item is not None and item.data == b"compiled in the image"


def test_healthchecks_see_a_dead_program(stack: Stack) -> None:
    """The images' healthchecks fail while a program is down, and pass again after."""
    ok = stack.run("exec", "-T", "queue", "kestrelq-healthcheck", check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("VERSION "), ok
    stack.exec("queue", "supervisorctl", "stop", "queue")
    try:
        down = stack.run("exec", "-T", "queue", "kestrelq-healthcheck", check=False)
        assert down.returncode == 1 and "unhealthy" in down.stderr, down
    finally:
        stack.exec("queue", "supervisorctl", "start", "queue")
    assert stack.run("exec", "-T", "queue", "kestrelq-healthcheck", check=False).returncode == 0

    stack.exec("worker", "supervisorctl", "stop", "work_worker:work_worker_00")
    try:
        # The worker image's healthcheck command: non-zero while a program is STOPPED.
        assert stack.run("exec", "-T", "worker", "supervisorctl", "status", check=False).returncode
    finally:
        stack.exec("worker", "supervisorctl", "start", "work_worker:work_worker_00")
    stack.wait_all_running()


def test_kill_queue_server_inside_container(stack: Stack) -> None:
    """kill -9 the server process; supervisord restarts it; the journal had every STORED item."""
    scenario = "kill -9 queue server"
    producer = stack.start_producer(new_prefix("qsrv"), FLOW_COUNT, FLOW_INTERVAL_MS)
    wait_until(lambda: len(producer.ids("STORED")) >= 100, 60, what="100 messages STORED")
    old_pid = stack.pids("queue", "queue")["queue"]

    killed = time.monotonic()
    stack.exec("queue", "sh", "-c", f"kill -9 {old_pid}")
    wait_until(stack.queue_answers, 60, interval_s=0.05, what="the queue answering again")
    record_timing(scenario, "queue answers again", time.monotonic() - killed)
    new_pid = wait_until(
        lambda: stack.pids("queue", "queue").get("queue"), 60, what="queue RUNNING"
    )
    record_timing(scenario, "supervisord reports queue RUNNING", time.monotonic() - killed)
    assert new_pid != old_pid, "the queue server was not restarted"

    producer.wait(120)
    check_delivered(stack, scenario, producer.ids("STORED"), killed)


def test_kill_workers_inside_container(stack: Stack) -> None:
    """kill -9 every worker mid-flow; supervisord restarts them; open reads come back."""
    scenario = "kill -9 all workers"
    producer = stack.start_producer(new_prefix("wrk"), FLOW_COUNT, FLOW_INTERVAL_MS)
    wait_until(lambda: len(producer.ids("STORED")) >= 100, 60, what="100 messages STORED")
    old = stack.pids("worker", "work_worker:")
    assert len(old) == WORKERS

    killed = time.monotonic()
    stack.exec("worker", "sh", "-c", "kill -9 " + " ".join(map(str, old.values())))

    def restarted() -> bool:
        now = stack.pids("worker", "work_worker:")
        return len(now) == WORKERS and not set(now.values()) & set(old.values())

    wait_until(restarted, 60, interval_s=0.1, what="every worker restarted with a new pid")
    record_timing(scenario, "supervisord reports all workers RUNNING", time.monotonic() - killed)

    producer.wait(120)
    check_delivered(stack, scenario, producer.ids("STORED"), killed)


def test_queue_container_dies(stack: Stack) -> None:
    """The queue container dies twice; its journal volume carries every STORED message.

    1. Its init is SIGKILLed from the host (what an OOM kill or a crash looks like): Docker's
       restart policy brings the same container back while messages flow.
    2. `docker kill`, then the container is removed: Docker treats a kill as a deliberate stop
       and does not restart it, so `docker compose up` recreates it. Only the named volume is
       left of the old container, and the backlog stored while the workers were stopped must
       come back from it.
    """
    scenario = "queue container crash"
    producer = stack.start_producer(new_prefix("ctr"), FLOW_COUNT, FLOW_INTERVAL_MS)
    wait_until(lambda: len(producer.ids("STORED")) >= 100, 60, what="100 messages STORED")
    restarts = int(stack.inspect("queue", "{{.RestartCount}}"))
    init_pid = int(stack.inspect("queue", "{{.State.Pid}}"))

    killed = time.monotonic()
    subprocess.run(["kill", "-9", str(init_pid)], check=True)
    wait_until(
        lambda: int(stack.inspect("queue", "{{.RestartCount}}")) > restarts,
        60,
        interval_s=0.1,
        what="Docker restarting the queue container",
    )
    wait_until(stack.queue_answers, 60, interval_s=0.05, what="the queue answering again")
    record_timing(scenario, "restarted container answers", time.monotonic() - killed)
    wait_until(
        lambda: stack.inspect("queue", "{{.State.Health.Status}}") == "healthy",
        60,
        interval_s=0.2,
        what="the queue container healthy",
    )
    record_timing(scenario, "restarted container healthy", time.monotonic() - killed)
    producer.wait(120)
    check_delivered(stack, scenario, producer.ids("STORED"), killed)

    scenario = "docker kill + rm queue container"
    stack.run("stop", "worker")
    backlog = stack.start_producer(new_prefix("vol"), 200, 0)
    assert backlog.wait(120) == 0
    stored = backlog.ids("STORED")
    assert len(stored) == 200, f"only {len(stored)} of 200 STORED: {backlog.lines[-3:]}"
    old_container = stack.container_id("queue")

    killed = time.monotonic()
    subprocess.run(["docker", "kill", old_container], check=True, capture_output=True)
    assert stack.inspect("queue", "{{.State.Status}}") == "exited"
    stack.run("rm", "--force", "queue")
    stack.up()
    record_timing(scenario, "compose recreated it, healthy", time.monotonic() - killed)
    assert stack.container_id("queue") != old_container, "the container was not recreated"
    check_delivered(stack, scenario, stored, killed)


def test_restart_whole_stack(stack: Stack) -> None:
    """Stop every container (graceful) with a backlog and messages flowing, then start again."""
    scenario = "whole stack restart"
    stack.run("stop", "worker")
    backlog = stack.start_producer(new_prefix("all-backlog"), 150, 0)
    assert backlog.wait(120) == 0
    stored = backlog.ids("STORED")
    assert len(stored) == 150

    # Messages flow until the app container itself stops, which ends the producer.
    flowing = stack.start_producer(new_prefix("all-flow"), FLOW_COUNT, FLOW_INTERVAL_MS)
    wait_until(lambda: len(flowing.ids("STORED")) >= 50, 60, what="50 messages STORED")
    stopping = time.monotonic()
    stack.run("stop")
    record_timing(scenario, "graceful stop of every container", time.monotonic() - stopping)
    flowing.wait(60)
    for service in ("queue", "worker", "app", "dashboard"):
        assert stack.inspect(service, "{{.State.Status}}") == "exited", service
    # A clean stop: supervisord and the server exit 0, not a SIGKILL at the grace period's end.
    assert stack.inspect("queue", "{{.State.ExitCode}}") == "0"

    starting = time.monotonic()
    stack.up()
    record_timing(scenario, "up --wait until healthy", time.monotonic() - starting)
    check_delivered(stack, scenario, stored + flowing.ids("STORED"), starting)
