"""Shared pytest configuration. Its presence puts tests/ on sys.path, so `import helpers` works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real kestrelq server process on a free port, stopped (and checked) at teardown."""
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, proc.log()
