"""Fixtures for the container chaos tests: the real stack of compose.yaml, isolated.

Each stack is its own compose project (`kestrelq-test-<label>-<random>`), publishes on free
127.0.0.1 ports, tags its images with its project name and sets its own status-page password,
whatever the caller's shell exports, so the tests run beside a developer's `make up` stack
without touching it. Images are built once per stack from the working tree (the layer cache
makes that cost seconds) and removed with it: a run leaves no image behind.

No Docker engine is a failure, not a skip: `make test` and CI start one first.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from compose_stack import REPO, TIMINGS, Stack, assert_no_images_left, make_stack, record_timing


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every recovery timing measured in this run, whatever the capture setting."""
    if not TIMINGS:
        return
    terminalreporter.section("container chaos: recovery timings")
    width = max(len(f"{scenario}: {what}") for scenario, what, _ in TIMINGS)
    for scenario, what, seconds in TIMINGS:
        terminalreporter.write_line(f"{f'{scenario}: {what}':<{width}}  {seconds:7.2f} s")


def _docker_problem() -> str | None:
    """Why the container tests cannot run here, or None when they can."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no docker client or engine: {exc}"
    if info.returncode != 0:
        return f"the Docker engine does not answer: {info.stderr.strip()[-300:]}"
    version = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2."):
        return f"`docker compose` is not Compose v2: {version.stdout.strip()} {version.stderr}"
    base = subprocess.run(
        ["docker", "image", "inspect", "debian:bookworm-slim"], capture_output=True, timeout=30
    )
    if base.returncode != 0:
        return "the base image debian:bookworm-slim is missing"
    return None


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = _docker_problem()
    if problem:
        pytest.fail(
            f"container tests need Docker: {problem}. Run `make docker-engine base-image` "
            "(as root), or `make test`, which does it first.",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def stack(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack of this checkout, up and healthy; taken down with its volume afterwards."""
    s = make_stack(REPO, tmp_path_factory.mktemp("stack"), "chaos")
    start = time.monotonic()
    with s.running():
        record_timing("stack", "build + up --wait (healthy)", time.monotonic() - start)
        s.wait_all_running()
        yield s
    assert_no_images_left(s.project)


@pytest.fixture(autouse=True)
def _no_leftover_producers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A producer a failed test left running is ended before the next test starts."""
    yield
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        stack.stop_producers()
