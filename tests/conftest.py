"""Shared pytest configuration. Its presence puts tests/ on sys.path, so `import helpers` works.

Markers are set here, by path, so that a test file never has to remember them (docs/testing.md):

- `server`: starts real processes (`kestrelq serve`, `kestrelq work`/`conf`, supervisord);
- `external`: needs programs that CI installs from Debian (`.ci/run`) and a developer's machine
  may lack: memcached, beanstalkd, redis-server, libmemcached-tools;
- `bench`: the benchmark harness against its peers (memcached, beanstalkd, redis-server);
- `chaos` and `docker` are set by the chaos modules themselves, and here for swarm/.

A test with none of these is an in-process test (`make test-unit`), and that is checked: if it
starts a subprocess anyway, it fails and says where to mark it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerProcess, serving

TESTS = Path(__file__).resolve().parent

# Paths relative to tests/, a directory (ending in /) or a file; a file wins over its
# directory. A test whose file or directory is listed gets these markers.
MARKERS_BY_PATH: dict[str, tuple[str, ...]] = {
    "server/": ("server",),
    "server/test_write_loss.py": (),  # an in-process Server with a failing writev
    "server/test_protocol.py": (),  # QueueProtocol on a MockTransport, no sockets
    "compat/": ("server",),
    "compat/test_libmemcached.py": ("server", "external"),
    "cli/": ("server",),
    "security/": ("server",),
    "security/test_access_rules.py": (),
    "security/test_credentials_env.py": (),
    "security/test_memcached_parity.py": ("server", "external"),
    "worker/": ("server",),
    "worker/test_app_tasks.py": (),
    "app/test_web_queue.py": ("server",),
    "journal/test_read_behind_server.py": ("server",),
    "supervisord/test_supervisord_live.py": ("server",),
    "supervisord/test_install_owners.py": ("server",),  # runs the interpreter it checks
    "chaos/test_host_chaos.py": ("server",),
    "chaos/test_server_crash.py": ("server",),
    "bench/test_bench_smoke.py": ("server", "bench", "external"),
    "soak/": ("server", "soak"),
    "multi/": ("server",),
    "multi/test_servers.py": (),
    "swarm/": ("chaos", "docker"),
    "dashboard/": ("server",),
    "dashboard/test_dashboard_units.py": (),
}

# Single tests in otherwise in-process files: (file, test name prefix) -> markers.
MARKERS_BY_TEST: dict[tuple[str, str], tuple[str, ...]] = {
    ("supervisord/test_conf_stack.py", "test_cli_"): ("server",),  # runs `kestrelq conf`
    ("bench/test_bench_units.py", "test_profiled_kestrelq"): ("server",),
    ("bench/test_bench_units.py", "test_a_row_labelled_compiled"): ("server",),
    ("bench/test_bench_units.py", "test_beanstalk_client_against_real"): ("server", "external"),
}

PROCESS_MARKERS = ("server", "chaos", "docker", "bench", "external")


def _markers_for(item: pytest.Item) -> tuple[str, ...]:
    rel = item.path.resolve().relative_to(TESTS).as_posix()
    for (file, prefix), names in MARKERS_BY_TEST.items():
        if rel == file and item.name.startswith(prefix):
            return names
    if rel in MARKERS_BY_PATH:
        return MARKERS_BY_PATH[rel]
    best = ""
    for path in MARKERS_BY_PATH:
        if path.endswith("/") and rel.startswith(path) and len(path) > len(best):
            best = path
    return MARKERS_BY_PATH.get(best, ())


def pytest_configure(config: pytest.Config) -> None:
    # `make test-compiled` runs from build/compiled so that `kestrelq` is the compiled build:
    # if a path mix-up gave the tests the pure one instead, they would pass and prove nothing.
    if os.environ.get("KESTRELQ_EXPECT_COMPILED") == "1":
        from kestrelq import hotpath

        pure = sorted(set(hotpath.MODULES) - set(hotpath.compiled_modules()))
        if pure:
            raise pytest.UsageError(f"KESTRELQ_EXPECT_COMPILED=1 but these are pure: {pure}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in _markers_for(item):
            item.add_marker(name)
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker("server")


@pytest.fixture(autouse=True)
def _in_process_tests_start_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make test-unit` promises no processes: hold every unmarked test to it."""
    if any(request.node.get_closest_marker(m) for m in PROCESS_MARKERS):
        return
    where = request.node.nodeid

    def refuse(self: subprocess.Popen[Any], args: object, *_: object, **__: object) -> None:
        raise AssertionError(
            f"{where} starts a process ({args!r:.80}) but has no `server` marker: "
            "add its file to MARKERS_BY_PATH in tests/conftest.py"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (tests/browser.py), a fresh profile, quit at teardown."""
    # Imported here: selenium is needed by the browser tests only.
    from browser import chromium

    with chromium(tmp_path / "profile") as driver:
        yield driver


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real kestrelq server process on a free port, stopped (and checked) at teardown."""
    with serving(tmp_path / "data") as proc:
        yield proc


@pytest.fixture
def shutdown_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`server`, started with --enable-shutdown: it obeys the `shutdown` command."""
    proc = ServerProcess(tmp_path / "data", "--enable-shutdown").start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, proc.log()
