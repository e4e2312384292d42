"""The server runs the build the tests run: pure Python in `make test`, compiled in
`make test-compiled`.

The compiled build is only tested if the server processes load it too; they are started with
`python -m kestrelq` from the tests' working directory, and the server says at start which
build it runs. Here that line is held to what this process imported.
"""

from __future__ import annotations

from pathlib import Path

from helpers import ServerProcess, request, wait_until

import kestrelq
from kestrelq import hotpath


def test_the_server_runs_the_same_build_as_the_tests(server: ServerProcess) -> None:
    assert request(server.port, b"set q 0 0 2\r\nhi\r\nget q\r\n") == (
        b"STORED\r\nVALUE q 0 2\r\nhi\r\nEND\r\n"
    )
    wait_until(lambda: "hot path: " in server.log(), 60, what="the server's hot-path line")
    assert hotpath.describe() in server.log()


def test_every_listed_module_exists() -> None:
    # A module renamed or moved without this list following would silently stay pure (and a
    # compile would fail on it, but only when someone builds it).
    root = Path(kestrelq.__file__).resolve().parent.parent
    missing = [p for p in hotpath.source_paths() if not (root / p).is_file()]
    assert not missing
    assert set(hotpath.compiled_modules()) <= set(hotpath.MODULES)
