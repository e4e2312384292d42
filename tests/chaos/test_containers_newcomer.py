"""A newcomer's path, as the README tells it: clone, `make up`, send a message, see it handled.

Runs in a fresh `git clone` of this repository (what is committed, nothing else), with its own
compose project name, image tag and free ports, and none of the caller's compose or kestrelq
settings, so it never meets a developer's running stack; its images go when it does.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from compose_stack import REPO, assert_no_images_left, compose_env, new_project, record_timing
from helpers import free_port, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.docker, pytest.mark.timeout(900)]


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def test_newcomer_clone_make_up_send(docker_ready: None, tmp_path: Path) -> None:
    clone = tmp_path / "kestrelq"
    cloned = subprocess.run(
        ["git", "clone", "--quiet", str(REPO), str(clone)], capture_output=True, text=True
    )
    assert cloned.returncode == 0, cloned.stderr
    project = new_project("newcomer")
    label = secrets.token_hex(3)
    env = compose_env(
        {
            "COMPOSE_PROJECT_NAME": project,
            "KESTRELQ_QUEUE_PORT": str(free_port()),
            "KESTRELQ_QUEUE_STATUS_PORT": str(free_port()),
            "KESTRELQ_WORKER_STATUS_PORT": str(free_port()),
            "KESTRELQ_IMAGE_TAG": project,
        }
    )
    try:
        start = time.monotonic()
        up = run(["make", "up"], clone, env)
        assert up.returncode == 0, f"make up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        record_timing("newcomer", "make up in a fresh clone", time.monotonic() - start)
        # `make up` tells the newcomer what to type next.
        assert "docker compose exec app python send.py" in up.stdout
        assert (clone / "var" / "stack.env").read_text().startswith("KESTRELQ_SUPERVISOR_PASSWORD=")

        message = f"hello from a newcomer {label}"
        sent = run(["docker", "compose", "exec", "app", "python", "send.py", message], clone, env)
        assert sent.returncode == 0, f"send.py failed:\n{sent.stdout}\n{sent.stderr}"
        assert "STORED" in sent.stdout
        sent_at = time.monotonic()

        # Plain text is handled as a `digest` task, whose id is the text's sha256 prefix.
        message_id = hashlib.sha256(message.encode()).hexdigest()[:16]

        def worker_log_shows_it() -> bool:
            logs = run(["docker", "compose", "logs", "worker"], clone, env, timeout_s=60)
            return f"digest id={message_id}:" in logs.stdout

        wait_until(worker_log_shows_it, 60, interval_s=0.2, what="the message in the worker log")
        record_timing(
            "newcomer", "send.py to the line in the worker log", time.monotonic() - sent_at
        )

        down = run(["make", "down"], clone, env)
        assert down.returncode == 0, down.stderr
        assert run(["docker", "compose", "ps", "--quiet"], clone, env).stdout.strip() == ""
    finally:
        # `make down` keeps the journal volume and the images on purpose; a test leaves
        # nothing behind.
        teardown = ["docker", "compose", "down", "--volumes", "--remove-orphans", "--rmi", "all"]
        run(teardown, clone, env)
    assert_no_images_left(project)
