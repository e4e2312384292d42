"""Driving one compose project of the kestrelq stack from the container chaos tests.

`Stack` runs the `docker compose` command line for one project (up, down, stop, kill, ps, logs,
exec with the output kept). Handled messages are read from `docker compose logs worker`,
exactly where a user would look: the worker prints `echo id=<id>: <text>` for every `echo` task
it handled. `Producer` runs tests/producer.py in the app container and collects what the
server acknowledged.

Isolation: compose takes COMPOSE_PROJECT_NAME, KESTRELQ_IMAGE_TAG and every other setting from
the caller's shell before any --env-file, so a developer who exported them for their own stack
would have the tests drive, and tear down, that stack. Every compose command here runs in
`compose_env()`: the caller's environment without any COMPOSE_* or KESTRELQ_* variable, plus the
test project's own values. Each project tags its images with its own name and removes them when
it goes down, so a run leaves no image behind, tagged or dangling.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port, wait_until

from kestrelq.certs import stack_secrets
from kestrelq.client import Client
from kestrelq.credentials import Credentials, client_context
from kestrelq.errors import KestrelqError

REPO = Path(__file__).resolve().parents[2]
PRODUCER = REPO / "tests" / "producer.py"
# No \b or ^: workers share the container's stdout, and a line printed by one can arrive glued
# to another's (print() writes the text and the newline separately).
HANDLED_RE = re.compile(r"echo id=([A-Za-z0-9_-]+):")
# `supervisorctl status` lines: "work_worker:work_worker_00   RUNNING   pid 12, uptime 0:00:05"
STATUS_RE = re.compile(r"^(\S+)\s+([A-Z]+)(?:\s+pid (\d+),)?", re.MULTILINE)
PROJECT_LABEL = "com.docker.compose.project"
# Workers in the test stack: not the default (2), so the test sees KESTRELQ_WORKERS work.
WORKERS = 3
# The user every kestrelq image runs as (images/Dockerfile), who must read the secrets.
IMAGE_UID = 10001

# Recovery timings collected by the tests, printed at the end of the run by
# pytest_terminal_summary (so they show in every run, not only with -s).
TIMINGS: list[tuple[str, str, float]] = []


def compose_env(values: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its compose and kestrelq settings, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "KESTRELQ_"))}
    return env | dict(values)


def project_images(project: str) -> list[str]:
    """Ids of every image, tagged or dangling, that compose built for `project`.

    Compose labels what it builds with the project's name, so even an image that lost its tag
    (rebuilt under the same name) is still found here.
    """
    out = subprocess.run(
        ["docker", "images", "--all", "--quiet", "--filter", f"label={PROJECT_LABEL}={project}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(set(out.stdout.split()))


def assert_no_images_left(project: str) -> None:
    """Nothing a test project built outlives it: no tagged image, no dangling one."""
    left = project_images(project)
    if left:
        subprocess.run(
            ["docker", "image", "rm", "--force", *left], capture_output=True, check=False
        )
    assert left == [], f"compose project {project} left images behind: {left}"


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
    image_tag: str
    queue_port: int
    worker_status_port: int
    web_port: int
    dashboard_port: int
    password: str
    settings: dict[str, str]
    secrets_dir: Path
    # Where Prometheus answers (the `metrics` profile; 0 when the stack runs without it).
    prometheus_port: int = 0
    producers: list[Producer] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        """`docker compose` with this project's files (run it in `self.env`)."""
        return [
            "docker",
            "compose",
            "-f",
            "compose.yaml",
            "-f",
            str(self.override),
            "--env-file",
            str(self.env_file),
        ]

    @property
    def env(self) -> dict[str, str]:
        return compose_env(self.settings)

    @contextmanager
    def running(self) -> Iterator[Stack]:
        """Build the images and start the stack, healthy; down with volume and images after."""
        try:
            self.run("up", "--build", "--quiet-build", "--detach", "--wait", timeout_s=900)
            yield self
        finally:
            self.stop_producers()
            self.run("down", "--volumes", "--remove-orphans", "--rmi", "all", check=False)

    def up(self) -> None:
        """Start what is stopped or missing again, from the images built at the start.

        --no-build: compose.yaml's `pull_policy: build` would otherwise rebuild on every `up`,
        and a tree edited meanwhile would swap the code under test in the middle of a run.
        """
        self.run("up", "--no-build", "--detach", "--wait")

    def run(
        self, *args: str, timeout_s: float = 180, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose <args>` for this project; a failure shows its output."""
        cmd = [*self.command, *args]
        result = subprocess.run(
            cmd,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            input=stdin,
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

    def credentials(self, user: str = "worker") -> Credentials:
        """`user`'s login with the stack's CA and client certificate, as its containers have."""
        d = self.secrets_dir
        tls = client_context(str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key"))
        return Credentials(user, (d / f"{user}.password").read_text().strip(), tls)

    def queue_answers(self) -> bool:
        """The published queue port answers `version` over TLS after a login (a full round
        trip, not just a connect)."""
        try:
            with Client("127.0.0.1", self.queue_port, 2.0, self.credentials()) as client:
                return bool(client.version())
        except (OSError, KestrelqError):
            return False

    def start_producer(self, prefix: str, count: int, interval_ms: float) -> Producer:
        """Run the producer in the app container, in the background."""
        cmd = [
            *self.command,
            "exec",
            "-T",
            "app",
            "python",
            "-",
            "--prefix",
            prefix,
            "--count",
            str(count),
            "--interval-ms",
            str(interval_ms),
            "--task",
            "echo",
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
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


def make_stack(root: Path, tmp: Path, label: str, profiles: tuple[str, ...] = ()) -> Stack:
    """One compose project of its own: name, image tag, ports, password, in an env and an override.

    `profiles`: compose profiles to enable too (`metrics`: Prometheus, on its own free port).

    The settings go into the environment of every compose command (`compose_env`) and into
    the env file too, so `docker compose --env-file <it>` reproduces the stack by hand.
    """
    project = new_project(label)
    queue_port, queue_status, worker_status = free_port(), free_port(), free_port()
    web_port, dashboard_port = free_port(), free_port()
    password = secrets.token_urlsafe(12)
    # The stack's CA, certificates, passwords and auth file, made as `make up` makes them, and
    # given to the images' user as its bind mounts need (the tests run as root in CI).
    secrets_dir = tmp / "secrets"
    stack_secrets(secrets_dir, days=2)
    if os.geteuid() == 0:
        for path in secrets_dir.iterdir():
            os.chown(path, IMAGE_UID, IMAGE_UID)
    settings = {
        "COMPOSE_PROJECT_NAME": project,
        "KESTRELQ_QUEUE_PORT": str(queue_port),
        "KESTRELQ_QUEUE_STATUS_PORT": str(queue_status),
        "KESTRELQ_WORKER_STATUS_PORT": str(worker_status),
        "KESTRELQ_WEB_PORT": str(web_port),
        "KESTRELQ_DASHBOARD_PORT": str(dashboard_port),
        "KESTRELQ_WORKERS": str(WORKERS),
        # Its own tag: a shared one moved from project to project and left the images it
        # moved away from dangling (compose labels each image with its project).
        "KESTRELQ_IMAGE_TAG": project,
        "KESTRELQ_SECRETS": str(secrets_dir),
    }
    prometheus_port = 0
    if profiles:
        settings["COMPOSE_PROFILES"] = ",".join(profiles)
    if "metrics" in profiles:
        prometheus_port = free_port()
        settings["KESTRELQ_PROMETHEUS_PORT"] = str(prometheus_port)
    env_file = tmp / "stack.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    override = tmp / "compose.override.yaml"
    override.write_text(
        "services:\n"
        "  queue:\n"
        "    environment:\n"
        f"      KESTRELQ_SUPERVISOR_PASSWORD: {password}\n"
        "  worker:\n"
        "    environment:\n"
        f"      KESTRELQ_SUPERVISOR_PASSWORD: {password}\n"
        "  dashboard:\n"
        "    environment:\n"
        f"      KESTRELQ_SUPERVISOR_PASSWORD: {password}\n"
    )
    return Stack(
        root=root,
        env_file=env_file,
        override=override,
        project=project,
        image_tag=project,
        queue_port=queue_port,
        worker_status_port=worker_status,
        web_port=web_port,
        dashboard_port=dashboard_port,
        password=password,
        settings=settings,
        secrets_dir=secrets_dir,
        prometheus_port=prometheus_port,
    )


def new_project(label: str) -> str:
    """A compose project name for one test stack; never a user's (`kestrelq` by default)."""
    return f"kestrelq-test-{label}-{secrets.token_hex(3)}"
