"""Fixtures shared by the several-servers tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Three real servers on free ports, each stopped and checked (exit 0, no traceback)."""
    servers = [ServerProcess(tmp_path / f"data{i}") for i in range(3)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            assert server.stop() == 0, server.log()
        assert "Traceback" not in server.log(), server.log()
