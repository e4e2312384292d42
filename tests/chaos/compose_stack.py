"""Driving one compose project of the kestrelq stack from the container chaos tests.

`Stack` wraps testcontainers' `DockerCompose` (up, down) and the `docker compose` command line
for what that class does not wrap (stop, kill, ps, logs, exec with the output kept). Handled
messages are read from `docker compose logs worker`, exactly where a user would look: the
worker prints `echo id=<id>: <text>` for every `echo` task it handled. `Producer` runs
container_producer.py in the app container and collects what the server acknowledged.
"""

from __future__ import annotations

import os

# The Ryuk reaper image cannot be pulled where no registry is reachable; the fixtures take
# their compose projects down themselves. Set before testcontainers reads its configuration.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import re
import secrets
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port, wait_until
from testcontainers.compose import DockerCompose

REPO = Path(__file__).resolve().parents[2]
PRODUCER = Path(__file__).with_name("container_producer.py")
# No \b or ^: workers share the container's stdout, and a line printed by one can arrive glued
# to another's (print() writes the text and the newline separately).
HANDLED_RE = re.compile(r"echo id=([A-Za-z0-9_-]+):")
# `supervisorctl status` lines: "work_worker:work_worker_00   RUNNING   pid 12, uptime 0:00:05"
STATUS_RE = re.compile(r"^(\S+)\s+([A-Z]+)(?:\s+pid (\d+),)?", re.MULTILINE)
# Workers in the test stack: not the default (2), so the test sees KESTRELQ_WORKERS work.
WORKERS = 3

# Recovery timings collected by the tests, printed at the end of the run by
# pytest_terminal_summary (so they show in every run, not only with -s).
TIMINGS: list[tuple[str, str, float]] = []


def record_timing(scenario: str, what: str, seconds: float) -> None:
    """Keep one measured duration for the end-of-run table, and print it too."""
    TIMINGS.append((scenario, what, seconds))
    print(f"[{scenario}] {what}: {seconds:.2f}s")


class Producer:
    """The container producer running in the app container; collects its lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.strip())

    def ids(self, outcome: str) -> list[str]:
        """Message ids with that outcome so far: STORED, REFUSED or FAILED."""
        with self._lock:
            return [line.split()[1] for line in self.lines if line.startswith(outcome + " ")]

    def stop(self) -> None:
        """End it early (a failed test must not leave it running)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)

    def wait(self, timeout_s: float) -> int:
        """Wait for the producer to end (it may be cut short by a stopped app container)."""
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


@dataclass
class Stack:
    """One running compose project of the kestrelq stack."""

    root: Path
    env_file: Path
    override: Path
    project: str
    queue_port: int
    worker_status_port: int
    password: str
    compose: DockerCompose = field(init=False)
    producers: list[Producer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.compose = DockerCompose(
            context=str(self.root),
            compose_file_name=["compose.yaml", str(self.override)],
            env_file=str(self.env_file),
            build=True,
            wait=True,
            quiet_build=True,
        )

    def run(
        self, *args: str, timeout_s: float = 180, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose <args>` for this project; a failure shows its output."""
        cmd = [*self.compose.docker_compose_command(), *args]
        result = subprocess.run(
            cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout_s, input=stdin
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def exec(self, service: str, *command: str, check: bool = True) -> str:
        return self.run("exec", "-T", service, *command, check=check).stdout

    def container_id(self, service: str) -> str:
        cid = self.run("ps", "--all", "--quiet", service).stdout.strip()
        assert cid, f"no container for service {service}"
        return cid

    def inspect(self, service: str, template: str) -> str:
        cid = self.container_id(service)
        out = subprocess.run(
            ["docker", "inspect", "--format", template, cid],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()

    def supervisor(self, service: str) -> dict[str, tuple[str, int | None]]:
        """`supervisorctl status` in a service: {process: (state, pid)}; {} if unreachable."""
        # Exit code 3 means "some process is not RUNNING": the output is still the answer.
        result = self.run("exec", "-T", service, "supervisorctl", "status", check=False)
        return {
            name: (state, int(pid) if pid else None)
            for name, state, pid in STATUS_RE.findall(result.stdout)
        }

    def all_running(self, service: str) -> bool:
        status = self.supervisor(service)
        return bool(status) and all(state == "RUNNING" for state, _ in status.values())

    def pids(self, service: str, prefix: str) -> dict[str, int]:
        return {
            name: pid
            for name, (state, pid) in self.supervisor(service).items()
            if name.startswith(prefix) and state == "RUNNING" and pid is not None
        }

    def handled(self) -> Counter[str]:
        """How often each message id was handled, from the worker container's stdout."""
        logs = self.run("logs", "--no-log-prefix", "worker").stdout
        return Counter(HANDLED_RE.findall(logs))

    def queue_answers(self) -> bool:
        """The published queue port answers `version` (a full round trip, not just a connect)."""
        try:
            with socket.create_connection(("127.0.0.1", self.queue_port), timeout=1.0) as sock:
                sock.sendall(b"version\r\n")
                return sock.recv(64).startswith(b"VERSION ")
        except OSError:
            return False

    def start_producer(self, prefix: str, count: int, interval_ms: float) -> Producer:
        """Run the producer in the app container, in the background."""
        cmd = [
            *self.compose.docker_compose_command(),
            "exec",
            "-T",
            "app",
            "python",
            "-",
            prefix,
            str(count),
            str(interval_ms),
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(PRODUCER.read_text())
        proc.stdin.close()
        producer = Producer(proc)
        self.producers.append(producer)
        return producer

    def stop_producers(self) -> None:
        while self.producers:
            self.producers.pop().stop()

    def wait_handled(self, ids: list[str], timeout_s: float) -> Counter[str]:
        """Wait until every id was handled at least once; the error names the missing ones."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        while True:
            handled = self.handled()
            missing = wanted - handled.keys()
            if not missing:
                return handled
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} STORED messages never handled "
                    f"(e.g. {sorted(missing)[:5]}); supervisord: {self.supervisor('worker')}"
                )
            time.sleep(0.25)

    def wait_all_running(self, timeout_s: float = 60) -> None:
        for service in ("queue", "worker"):
            wait_until(
                _bind(self.all_running, service),
                timeout_s,
                interval_s=0.1,
                what=f"every supervisord program in {service} RUNNING",
            )


def _bind(fn: Callable[[str], bool], arg: str) -> Callable[[], bool]:
    return lambda: fn(arg)


def make_stack(root: Path, tmp: Path, label: str) -> Stack:
    """Files that isolate one compose project: an env file and an override."""
    project = f"kestrelq-test-{label}-{secrets.token_hex(3)}"
    queue_port, queue_status, worker_status = free_port(), free_port(), free_port()
    password = secrets.token_urlsafe(12)
    env_file = tmp / "stack.env"
    env_file.write_text(
        f"COMPOSE_PROJECT_NAME={project}\n"
        f"KESTRELQ_QUEUE_PORT={queue_port}\n"
        f"KESTRELQ_QUEUE_STATUS_PORT={queue_status}\n"
        f"KESTRELQ_WORKER_STATUS_PORT={worker_status}\n"
        f"KESTRELQ_WORKERS={WORKERS}\n"
        "KESTRELQ_IMAGE_TAG=test\n"
    )
    override = tmp / "compose.override.yaml"
    override.write_text(
        "services:\n"
        "  queue:\n"
        "    environment:\n"
        f"      KESTRELQ_SUPERVISOR_PASSWORD: {password}\n"
        "  worker:\n"
        "    environment:\n"
        f"      KESTRELQ_SUPERVISOR_PASSWORD: {password}\n"
    )
    return Stack(
        root=root,
        env_file=env_file,
        override=override,
        project=project,
        queue_port=queue_port,
        worker_status_port=worker_status,
        password=password,
    )
