"""The swarm of three Docker-in-Docker nodes that the tests in this directory share (nodes.py).

Made once for the session, if a test here runs (three to eight minutes: three images built,
loaded into three engines, the stack deployed), and removed by name at the end, failed or not:
a run leaves nothing behind, and the teardown checks it. No Docker engine is a failure, not a
skip: `make test` starts one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from nodes import Swarm

TIMINGS: list[tuple[str, float]] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long each phase took, whatever the capture setting."""
    if not TIMINGS:
        return
    terminalreporter.section("swarm of three nodes: seconds since its fixture started")
    width = max(len(what) for what, _ in TIMINGS)
    for what, seconds in TIMINGS:
        terminalreporter.write_line(f"{what:<{width}}  {seconds:7.1f} s")


@pytest.fixture(scope="session")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"the swarm tests need Docker: {info.stderr.strip()[-300:]}. "
                    "Run `make docker-engine base-image` (as root), or `make test`.")  # fmt: skip
    s = Swarm.new(tmp_path_factory.mktemp("swarm") / "secrets")
    try:
        s.create()
        yield s
    finally:
        TIMINGS.extend(s.timings)
        s.destroy()
    assert s.leftovers() == [], f"the swarm test left {s.leftovers()} behind"
