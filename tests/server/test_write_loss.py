"""A journal write or fsync that fails after its commands ran: exit, reply nothing."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from kestrelq.server.config import load
from kestrelq.server.server import EXIT_JOURNAL_LOST, Server


async def _abandon(server: Server) -> None:
    """Close the listener, cancel the tasks and close the files, with no graceful shutdown: it
    would checkpoint memory, which the real exit never does."""
    assert server._server is not None
    server._server.close()
    await server._server.wait_closed()
    for task in list(server._tasks):
        task.cancel()
    await asyncio.gather(*server._tasks, return_exceptions=True)
    server.store.close()


async def _scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], bytes, bytes]:
    config = load({"data_dir": str(tmp_path / "data"), "port": 0, "fsync": "never"}, {})
    server = Server(config)
    exits: list[int] = []
    server.exit = exits.append  # the real one is os._exit
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"set q 0 0 5\r\nfirst\r\n")
        first = await asyncio.wait_for(reader.readline(), 5)

        def eio(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(server.store.files, "writev", eio)
        writer.write(b"set q 0 0 6\r\nsecond\r\nget q\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)  # until the server drops us
        writer.close()
        return exits, first, rest
    finally:
        monkeypatch.undo()
        await _abandon(server)


def test_failed_batched_write_exits_without_acknowledging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.CRITICAL, logger="kestrelq.server.server"):
        exits, first, rest = asyncio.run(_scenario(tmp_path, monkeypatch))
    assert first == b"STORED\r\n"
    # Neither the set nor the get that ran after it in memory was answered: the client
    # cannot take "second" as stored, nor "first" as delivered.
    assert rest == b""
    assert exits == [EXIT_JOURNAL_LOST]
    assert "journal write failed after its commands were applied" in caplog.text
    # What the journal holds is what a restart serves: the acknowledged item, still queued.
    config = load({"data_dir": str(tmp_path / "data"), "port": 0}, {})
    restarted = Server(config)
    restarted.recover()
    assert restarted.collection.queue("q").items == 1
    restarted.store.close()


async def _failed_fsync_scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], bytes, bytes, bytes]:
    config = load({"data_dir": str(tmp_path / "data"), "port": 0, "fsync": "always"}, {})
    server = Server(config)
    exits: list[int] = []
    server.exit = exits.append  # the real one is os._exit
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"set q 0 0 5\r\nfirst\r\n")
        first = await asyncio.wait_for(reader.readline(), 5)
        files = server.store.files
        real = files.fdatasync
        failures = [OSError(errno.EIO, "Input/output error")]

        def fails_once(fd: int) -> None:
            # Linux reports a writeback error once: the next fdatasync "succeeds".
            if failures:
                raise failures.pop()
            real(fd)

        monkeypatch.setattr(files, "fdatasync", fails_once)
        writer.write(b"set q 0 0 1\r\nA\r\n")
        a_got = await asyncio.wait_for(reader.read(), 5)  # until the server drops us
        writer.close()
        # Another client, as if it came in the same moment: its fsync would succeed, and must
        # acknowledge neither its own write nor A's.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"set q 0 0 1\r\nB\r\n")
        b_got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return exits, first, a_got, b_got
    finally:
        monkeypatch.undo()
        await _abandon(server)


def test_failed_fsync_exits_without_acknowledging_and_leaves_no_clean_mark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.CRITICAL, logger="kestrelq.server.server"):
        exits, first, a_got, b_got = asyncio.run(_failed_fsync_scenario(tmp_path, monkeypatch))
    assert first == b"STORED\r\n"
    assert a_got == b"" and b_got == b""
    assert exits and set(exits) == {EXIT_JOURNAL_LOST}
    assert "fsync failed" in caplog.text
    # The store was closed after the failure (the test's stand-in for the exit): the next
    # start must not take the journal as cleanly stopped.
    assert not (tmp_path / "data" / ".clean").exists()
    config = load({"data_dir": str(tmp_path / "data"), "port": 0}, {})
    restarted = Server(config)
    restarted.recover()
    assert restarted.collection.queue("q").items >= 1  # the acknowledged one at least
    restarted.store.close()
